"""Shared steps of the model unit tests: overfit one batch, compare losses, round-trip save/load."""
import torch


def mean_loss(model, *args, reps: int = 4, seed: int = 123) -> float:
    """The mean of `reps` calls of `model.forward_loss(*args)["loss"]`, the global RNG seeded first:
    a diffusion model draws the same timesteps, noise and condition drops before and after training,
    so the two numbers differ by what the model learnt, not by the draw."""
    torch.manual_seed(seed)
    return sum(model.forward_loss(*args)["loss"].item() for _ in range(reps)) / reps


def fit(model, *args, steps: int, lr: float | None = None, opt: torch.optim.Optimizer | None = None,
        with_step: bool = False, losses: list | None = None, **kw) -> dict:
    """Train on one batch: `steps` AdamW steps on `model.forward_loss(*args, **kw)["loss"]`.

    opt: a ready optimizer (e.g. with parameter groups); otherwise AdamW over all parameters at `lr`.
    with_step: pass the step number (0, 1, ...) as forward_loss's last positional argument (the
    dVAE's tau and beta schedules follow it).
    losses: a list to append each step's loss (a float, before that step's update) to; losses[0] is
    the loss at the start.
    Returns the last step's forward_loss output (computed before its update)."""
    if opt is None:
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
    out = None
    for step in range(steps):
        out = model.forward_loss(*args, *((step,) if with_step else ()), **kw)
        if losses is not None:
            losses.append(out["loss"].item())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return out


def overfit(model, *args, steps: int, lr: float) -> tuple[float, float]:
    """(mean loss before, mean loss after) `steps` AdamW steps on one batch, both measured with
    mean_loss (seeded: the same timesteps, noise and drops before and after training)."""
    before = mean_loss(model, *args)
    fit(model, *args, steps=steps, lr=lr)
    return before, mean_loss(model, *args)


def reload_exact(model, path):
    """Save `model` with save_pretrained to `path`, load it back with from_pretrained of its own
    class, assert the config and every state_dict tensor (same keys) are identical, and return the
    loaded model for the caller's own checks (equal outputs, ...)."""
    model.save_pretrained(str(path))
    back = type(model).from_pretrained(str(path))
    assert back.config == model.config
    sa, sb = model.state_dict(), back.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    return back


def assert_same_samples(a, b, *args, seed: int = 1, **kw) -> None:
    """`a.sample(*args, **kw)` and `b.sample(...)` give identical tensors from the same seeded
    generator (a reloaded diffusion model samples exactly as the saved one did)."""
    assert torch.equal(a.sample(*args, generator=torch.Generator().manual_seed(seed), **kw),
                       b.sample(*args, generator=torch.Generator().manual_seed(seed), **kw))
