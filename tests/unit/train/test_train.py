"""The training machinery (model_code.train): configuration, schedules, EMA, the part registry,
and whole `train_part` runs of the real parts on a real (tiny) Shapes dataset."""
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from model_code.config import deep_merge, load_preset
from model_code.train.factory import cpu_has_bf16
from model_code.train.module import EMA, lr_lambda, make_optimizer, resolve_train_config
from model_code.train.parts import PARTS, Context, get_part

# Small enough for a few dozen CPU steps in a test; every other part uses the tiny preset.
SMALL_DVAE = {"dvae": {"n_hid": 16, "codebook_size": 32, "n_blk_per_group": 1, "n_init": 16,
                 "beta_warmup_steps": 20, "tau_anneal_steps": 40}}
SMALL_TRANSFORMER = {"transformer": {"n_layer": 1, "n_head": 2, "d_model": 32}}
FAST = {"train": {"batch_size": 8, "log_every": 5, "sample_n": 4, "progress": "log"}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.unit.data.test_loader import shapes_data
    return shapes_data(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def tokenizer_dir(data, tmp_path_factory):
    from model_code.train.run import train_part
    out = str(tmp_path_factory.mktemp("tok"))
    s = train_part("tokenizer", "tiny", data=data, out=out, mlflow=False)
    assert s["metrics"]["vocab_size"] > 262 and s["metrics"]["texts"] > 86
    return out


# --------------------------------------------------------------------------- configuration
def test_train_config_precedence():
    cfg = {"train": {"lr": 0.5, "batch_size": 4, "steps": {"dvae": 7},
                     "dvae": {"warmup_steps": 3, "weight_decay": 0.25}}}
    t = resolve_train_config(cfg, "dvae")
    assert t["adam_betas"] == (0.9, 0.999) and t["lr_schedule"] == "dvae"   # the part's paper defaults
    assert t["lr"] == 0.5 and t["batch_size"] == 4                         # train: scalars
    assert t["max_steps"] == 7 and t["warmup_steps"] == 3                  # train.steps / train.<part>
    assert t["weight_decay"] == 0.25 and resolve_train_config(cfg, "clip")["weight_decay"] != 0.25
    assert t["caption_policy"] is None and resolve_train_config(cfg, "clip")["caption_policy"] == "blend"
    assert resolve_train_config(cfg, "captioner")["caption_policy"] == "curated"
    orig = {"train": {"caption_policy": "original"}}  # the DALL-E 3 ablation: generators only
    assert resolve_train_config(orig, "transformer")["caption_policy"] == "original"
    assert resolve_train_config(orig, "captioner")["caption_policy"] == "curated"
    assert resolve_train_config({"train": {"dvae": {"lr": "3e-3"}}}, "dvae")["lr"] == 3e-3
    assert resolve_train_config({"train": {"lr": 0.5, "dvae": {"lr": 0.1}}}, "dvae")["lr"] == 0.1
    with pytest.raises(ValueError, match="train.dvae"):  # the model's section holds no training key
        resolve_train_config({"dvae": {"lr": 0.1}}, "dvae")


@pytest.mark.parametrize("over, match", [
    ({"train": {"dvae": {"lr": -1}}}, "train.dvae.lr must be a finite number in \\(0, 1\\]"),
    # non-finite or out-of-range numbers trained NaN weights that the run then saved as completed
    ({"train": {"dvae": {"lr": float("inf")}}}, "train.dvae.lr must be a finite number"),
    ({"train": {"dvae": {"lr": 1e6}}}, "train.dvae.lr must be a finite number in \\(0, 1\\], got 1000000.0"),
    ({"train": {"dvae": {"weight_decay": float("nan")}}}, "train.dvae.weight_decay must be a finite number"),
    ({"train": {"dvae": {"weight_decay": 1e5}}}, "train.dvae.weight_decay .*lr \\* weight_decay < 1"),
    ({"train": {"dvae": {"lr_end": -5}}}, "train.dvae.lr_end must be a finite number in \\[0, 0.005\\] or null"),
    ({"train": {"dvae": {"lr_end": 0.1}}}, "train.dvae.lr_end must be"),
    ({"train": {"dvae": {"adam_betas": [0.9, float("nan")]}}}, "train.dvae.adam_betas"),
    ({"train": {"dvae": {"adam_eps": float("inf")}}}, "train.dvae.adam_eps must be a finite number"),
    ({"train": {"dvae": {"grad_clip": float("inf")}}}, "train.dvae.grad_clip must be a finite number"),
    ({"train": {"dvae": {"ema_decay": float("nan")}}}, "train.dvae.ema_decay must be a finite number"),
    ({"train": {"dvae": {"min_lr_ratio": 2}}}, "train.dvae.min_lr_ratio must be"),
    ({"train": {"synthetic_fraction": -0.5}}, "train.dvae.synthetic_fraction must be"),
    ({"train": {"dvae": {"lrr": 1}}}, "unknown keys \\['lrr'\\] in train.dvae"),
    ({"train": {"dvae": {"adam_betas": [0.9]}}}, "adam_betas"),
    ({"train": {"steps": {"dvae": 0}}}, "max_steps must be an integer >= 1"),
    ({"train": {"strategy": "horovod"}}, "strategy"),
    ({"train": {"dvae": {"ema_decay": 1.5}}}, "ema_decay"),
    ({"train": {"batchsize": 8}}, "unknown key train.batchsize"),
    ({"train": {"steps": {"vae": 8}}}, "unknown parts \\['vae'\\]"),
])
def test_bad_training_config_names_the_field(over, match):
    with pytest.raises(ValueError, match=match):
        resolve_train_config(load_preset("tiny", over), "dvae")
    with pytest.raises(ValueError, match="unknown part 'vae'"):
        get_part("vae")


@pytest.mark.parametrize("item", ["train.dvae.lr=.inf", "train.dvae.lr=1e400", "train.dvae.lr=1e6",
                                  "train.dvae.weight_decay=.nan", "train.dvae.lr_end=-5", "train.warmup_steps=.inf"])
def test_settings_as_the_cli_writes_them_are_refused_when_not_finite_or_out_of_range(item):
    """`--set` values are YAML: `.inf`, `.nan` and `1e400` (inf) are numbers there; each trained NaN
    weights that `easel train` then reported as a completed run."""
    from model_code.config import parse_overrides
    key = item.split("=")[0].replace("train.", "train.dvae.", 1) if "dvae" not in item else item.split("=")[0]
    with pytest.raises(ValueError, match=key.replace(".", "\\.")):
        resolve_train_config(load_preset("tiny", parse_overrides([item])), "dvae")


def test_lr_schedules():
    model = torch.nn.Linear(2, 2)
    t = {"lr": 1.0, "lr_schedule": "cosine", "warmup_steps": 10, "max_steps": 100, "lr_end": None,
         "min_lr_ratio": 0.1}
    f = lr_lambda(t, model)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)          # linear warm-up
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)       # cosine to the floor
    assert f(55) == pytest.approx(0.55)
    # a paper's 5000-step warm-up on a 100-step run is capped at a tenth of the run
    assert lr_lambda({**t, "warmup_steps": 5000}, model)(9) == pytest.approx(1.0)
    assert lr_lambda({**t, "lr_schedule": "constant", "warmup_steps": 0}, model)(77) == 1.0
    # the dVAE's (DALL-E 1): cosine lr -> lr_end over lr_anneal_steps, flat after, optional warm-up;
    # the paper's endpoints are the dvae part's training defaults
    paper = resolve_train_config({}, "dvae")
    g = lr_lambda({**paper, "max_steps": 100}, model)
    assert g(0) == pytest.approx(1.0) and g(1_200_000) * paper["lr"] == pytest.approx(1.25e-6)
    assert g(600_000) == pytest.approx((1 + 1.25e-6 / 1e-4) / 2) and g(5_000_000) == g(1_200_000)
    short = lr_lambda({**paper, "lr_anneal_steps": 50, "lr_warmup_steps": 10}, model)
    assert short(0) == pytest.approx(0.1 * 1.0, rel=0.01) and short(50) == pytest.approx(1.25e-2)


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_a_models_config_holds_no_training_settings(preset, tokenizer_dir):
    """config.json is the model (one convention for all seven): training settings written in a
    part's preset section (lr, warm-up, EMA, ...) are read by the trainer, never saved with the model."""
    from model_code.text.tokenizer import TextTokenizer
    from model_code.train.parts import training_keys
    cfg = load_preset(preset)
    deps = {"tokenizer": TextTokenizer.load(tokenizer_dir)}
    with torch.device("meta"):
        for name in ("dvae", "clip", "transformer", "captioner", "prior", "decoder", "upsampler"):
            spec = get_part(name)
            if "clip" in spec.deps and "clip" not in deps:
                deps["clip"] = get_part("clip").build(cfg, deps)
            if "dvae" in spec.deps and "dvae" not in deps:
                deps["dvae"] = get_part("dvae").build(cfg, deps)
            model = spec.build(cfg, {d: deps[d] for d in spec.deps})
            leaked = set(model.config) & training_keys()
            assert not leaked, f"{name}: training settings in its config: {sorted(leaked)}"
            if "lr" in (cfg.get(name) or {}):   # ...while training still reads them from the section
                assert resolve_train_config(cfg, name, spec)["lr"] == float(cfg[name]["lr"])


def test_optimizer_is_fused_on_a_gpu_only_without_gradient_clipping():
    """Lightning cannot clip gradients that a fused AdamW unscales inside its step (the small
    transformer, grad_clip 4.0, failed at its first step on an H200): clipping parts get the
    foreach kernels there; decay applies to matrices only."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    t = resolve_train_config(load_preset("tiny"), "transformer")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    fused = lambda opt: opt.defaults["fused"]  # noqa: E731
    # fused=True is only checked against the parameters' device when the step runs
    assert fused(make_optimizer(model, {**t, "grad_clip": None}, cuda))
    assert not fused(make_optimizer(model, {**t, "grad_clip": 4.0}, cuda))
    assert not fused(make_optimizer(model, {**t, "grad_clip": None}, cpu))
    groups = make_optimizer(model, {**t, "weight_decay": 0.1}, cpu).param_groups
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.1]


def test_bf16_mixed_runs_on_a_cpu_only_with_native_bf16(monkeypatch):
    from model_code.train import factory
    monkeypatch.setattr(factory, "has_gpu", lambda: False)
    assert factory.resolve_precision("auto") == factory.resolve_precision(32) == "32-true"
    monkeypatch.setattr(factory, "cpu_has_bf16", lambda: True)
    assert factory.resolve_precision("bf16-mixed") == factory.resolve_precision("bf16") == "bf16-mixed"
    # fp16 and bf16-true are not measured on a CPU: they fall back to 32
    assert factory.resolve_precision("16-mixed") == factory.resolve_precision("bf16-true") == "32-true"
    monkeypatch.setattr(factory, "cpu_has_bf16", lambda: False)
    assert factory.resolve_precision("bf16-mixed") == "32-true"
    with pytest.raises(ValueError, match="train.precision must be"):
        factory.resolve_precision("fp8")
    # tiny writes its precision as a string (32-true), so a `--set train.precision=bf16-mixed` passes
    # the override type check (with `32`, a number, it was refused)
    assert resolve_train_config(load_preset("tiny", {"train": {"precision": "bf16-mixed"}}), "clip")["precision"] == "bf16-mixed"
    assert resolve_train_config(load_preset("laptop"), "transformer")["precision"] == "bf16-mixed"


def test_ema_tracks_swaps_and_round_trips():
    """diffusers' EMAModel under Easel's EMA: the first update copies the weights, later ones
    average with the warm-up decay min(decay, (1 + n) / (10 + n)); swapping in and back is exact."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    ema = EMA(model, decay=0.5)
    start = model.weight.detach().clone()
    ema.update(model)   # n = 0: the average starts at the weights
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)   # n = 1: decay min(0.5, 2/11)
    d = 2 / 11
    shadow = ema.ema.shadow_params[0]
    assert torch.allclose(shadow, d * start + (1 - d) * (start + 1))
    raw = model.weight.detach().clone()
    with ema.swapped(model):
        assert torch.allclose(model.weight, shadow)
    assert torch.equal(model.weight, raw)
    other = EMA(model, decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.ema.optimization_step == 2 and torch.equal(other.ema.shadow_params[0], shadow)
    with pytest.raises(ValueError, match="EMA state holds 2 weights, the model 4"):
        EMA(torch.nn.Sequential(torch.nn.Linear(3, 1), torch.nn.Linear(1, 1)), 0.5).load_state_dict(ema.state_dict())


def test_gradient_checkpointing_changes_memory_not_results():
    """The dVAE (residual blocks, no transformers switch) and the DALL-E transformer (GPT-2's own
    switch): same loss and gradients, same parameter names, EMA still follows the weights."""
    from model_code.models.dvae import DVAE
    from model_code.models.transformer import DalleTransformer
    from model_code.train.module import activation_checkpointing, repeated_blocks
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    cases = [(lambda: DVAE.from_config({**SMALL_DVAE["dvae"], "image_size": 32}), (x, 0)),
             (lambda: DalleTransformer.from_config({"text_vocab_size": 50, "text_len": 8, "image_grid": 2,
                                                    "codebook_size": 16, "n_layer": 2, "n_head": 2,
                                                    "d_model": 16}),
              (torch.randint(0, 50, (2, 8)), torch.ones(2, 8, dtype=torch.bool), torch.randint(0, 16, (2, 2, 2))))]
    for make, args in cases:
        torch.manual_seed(0)
        plain, ckpt = make(), make()
        ckpt.load_state_dict(plain.state_dict())
        ema = EMA(ckpt, 0.5)
        names = list(ckpt.state_dict())
        assert repeated_blocks(plain)
        activation_checkpointing(ckpt)
        assert list(ckpt.state_dict()) == names
        losses = []
        for m in (plain, ckpt):
            torch.manual_seed(1)
            loss = m.forward_loss(*args)["loss"]
            loss.backward()
            losses.append(loss)
        assert torch.allclose(losses[0], losses[1])
        for (n, p), q in zip(plain.named_parameters(), ckpt.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-6), n
        ema.update(ckpt)


def test_every_part_is_registered_with_its_dependencies():
    assert set(PARTS) == {"tokenizer", "dvae", "transformer", "clip", "captioner", "prior",
                          "decoder", "upsampler"}
    assert get_part("transformer").deps == ("tokenizer", "dvae")
    assert get_part("prior").deps == get_part("decoder").deps == ("tokenizer", "clip")
    assert get_part("captioner").deps == ("tokenizer",) and not get_part("tokenizer").is_network
    assert get_part("prior").train_defaults["ema_decay"] == 0.9999  # unCLIP, appendix C


def test_every_network_part_trains_a_step_on_real_data(data, tokenizer_dir):
    """Each part's build + prepare + forward_loss on a real batch, deps built from the preset."""
    from model_code.data.loader import make_dataset, make_loader
    from model_code.models.clip import CLIP
    from model_code.text.tokenizer import TextTokenizer
    cfg = load_preset("tiny", {**SMALL_DVAE, **SMALL_TRANSFORMER})
    tok = TextTokenizer.load(tokenizer_dir)
    deps = {"tokenizer": tok}
    deps["dvae"] = get_part("dvae").build(cfg, deps).eval()
    deps["clip"] = get_part("clip").build(cfg, deps).eval()
    assert isinstance(deps["clip"], CLIP)
    for name in ("dvae", "transformer", "clip", "captioner", "prior", "decoder", "upsampler"):
        spec = get_part(name)
        torch.manual_seed(0)
        model = spec.build(cfg, {d: deps[d] for d in spec.deps})
        ds = make_dataset(data, caption_policy=spec.caption_policy, seed=0, with_scene=spec.with_scene)
        batch = next(iter(make_loader(ds, 4, 1)))
        ctx = Context(deps=deps, model_config=model.config, train=resolve_train_config(cfg, name))
        out = model.forward_loss(**spec.prepare(batch, ctx))
        assert torch.isfinite(out["loss"]), name
        out["loss"].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters()), name


def test_frozen_dependencies_run_in_full_precision_under_autocast(data, tokenizer_dir):
    """The dVAE's codes and CLIP's embeddings a part learns from are the fp32 ones sampling uses,
    also when the trainer autocasts to bf16 (there 48% of a trained dVAE's codes flipped)."""
    from model_code.data.loader import make_dataset, make_loader
    from model_code.text.tokenizer import TextTokenizer
    cfg = load_preset("tiny", {**SMALL_DVAE, **SMALL_TRANSFORMER})
    torch.manual_seed(0)
    deps = {"tokenizer": TextTokenizer.load(tokenizer_dir)}
    deps["dvae"] = get_part("dvae").build(cfg, deps).eval()
    deps["clip"] = get_part("clip").build(cfg, deps).eval()
    batch = next(iter(make_loader(make_dataset(data, caption_policy="original", seed=0), 8, 1)))
    for name, key in (("transformer", "image_codes"), ("prior", "image_emb"), ("decoder", "image_emb")):
        spec = get_part(name)
        model = spec.build(cfg, {d: deps[d] for d in spec.deps})
        ctx = Context(deps=deps, model_config=model.config, train=resolve_train_config(cfg, name))
        ref = spec.prepare(batch, ctx)[key]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = spec.prepare(batch, ctx)[key]
        assert got.dtype == ref.dtype and torch.equal(got, ref), name


# --------------------------------------------------------------------------- whole runs
def test_the_tokenizer_says_when_captions_are_cut(data, tmp_path, capsys):
    """The tiny preset's text length holds every Shapes caption (4-object long captions run to ~86
    tokens); a shorter one cuts their tails in every text part, and training the tokenizer says so."""
    from model_code.train.run import train_part
    s = train_part("tokenizer", "tiny", data=data, out=str(tmp_path / "t96"), mlflow=False)
    assert s["metrics"]["truncated_fraction"] == 0.0 and "are longer than" not in capsys.readouterr().err
    s = train_part("tokenizer", "tiny", data=data, out=str(tmp_path / "t16"), mlflow=False,
                   overrides={"tokenizer": {"max_text_tokens": 16}})
    assert s["metrics"]["truncated_fraction"] > 0.2
    assert "longer than tokenizer.max_text_tokens=16" in capsys.readouterr().err


def test_train_dvae_end_to_end(data, tmp_path, monkeypatch):
    """train_part on the real dVAE: the loss falls, the model is saved and loads back, MLflow
    has the params, metrics and a sample grid, and a finished run is not retrained."""
    from mlflow.tracking import MlflowClient

    from model_code.models.dvae import DVAE as DVAEModel
    from model_code.train.run import train_part
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    out = str(tmp_path / "dvae")
    over = {**SMALL_DVAE, "train": {**FAST["train"], "steps": {"dvae": 30}, "dvae": {"lr": 3e-3},
                              "ckpt_every": 20}}
    s = train_part("dvae", "tiny", data=data, out=out, overrides=over)
    assert s["steps"] == 30 and not s["preempted"] and s["samples_seen"] == 30 * 8
    first, last = s["first_metrics"]["train/recon"], s["metrics"]["train/recon"]
    assert last < first - 0.2, (first, last)
    assert s["metrics"]["train/psnr"] > s["first_metrics"]["train/psnr"]
    assert s["metrics"]["perf/samples_per_s"] > 0
    for f in ("config.json", "model.safetensors", "train_state.json"):
        assert os.path.exists(os.path.join(out, f)), f
    model = DVAEModel.from_pretrained(out)
    assert model.config["n_hid"] == 16 and model.config["image_size"] == 32
    ckpts = json.load(open(os.path.join(out, "checkpoints", "latest.json")))
    assert ckpts["step"] == 30 and ckpts["reason"] == "final"
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == [
        "latest.json", "step-00000020.ckpt", "step-00000030.ckpt"]

    client = MlflowClient()
    run = client.get_run(s["mlflow_run_id"])
    assert run.data.params["dvae.n_hid"] == "16" and run.data.params["train.lr"] == "0.003"
    assert run.data.params["dataset_content_hash"] == json.load(open(os.path.join(data, "dataset.json")))["content_hash"]
    assert run.data.tags["part"] == "dvae" and run.info.status == "FINISHED"
    (inp,) = run.inputs.dataset_inputs  # the dataset as the run's input (MLflow's dataset view)
    assert inp.dataset.digest == run.data.params["dataset_content_hash"][:36]
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(steps) >= 5 and {b - a for a, b in zip(steps, steps[1:])} == {5}  # every log_every
    assert client.get_metric_history(run.info.run_id, "perf/samples_per_s")
    arts = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert arts == ["samples/step_000030.png"]

    again = train_part("dvae", "tiny", data=data, out=out, overrides=over)
    assert again["reused"] and again["steps"] == 30
    # a larger max_steps extends the finished run from its final checkpoint, in the same MLflow run
    longer = {**over, "train": {**over["train"], "steps": {"dvae": 32}}}
    more = train_part("dvae", "tiny", data=data, out=out, overrides=longer)
    assert more["resumed_from_step"] == 30 and more["steps"] == 32 and not more["reused"]
    assert more["mlflow_run_id"] == s["mlflow_run_id"] and more["samples_seen"] == 32 * 8
    with pytest.raises(ValueError, match="another configuration"):
        train_part("dvae", "tiny", data=data, out=out,
                   overrides={**over, "train": {**over["train"], "dvae": {"lr": 1e-3}}})


@pytest.mark.skipif(torch.cuda.is_available() or not cpu_has_bf16(),
                    reason="CPU autocast to bf16 runs only on a CPU with native bf16")
def test_bf16_mixed_trains_on_the_cpu_and_saves_fp32_weights(data, tokenizer_dir, tmp_path):
    from model_code.models.clip import CLIP
    from model_code.train.run import train_part
    out = str(tmp_path / "clip")
    over = {"train": {**FAST["train"], "steps": {"clip": 12}, "ckpt_every": 12, "precision": "bf16-mixed"}}
    s = train_part("clip", "tiny", data=data, out=out, deps={"tokenizer": tokenizer_dir},
                   overrides=over, mlflow=False)
    assert s["steps"] == 12 and math.isfinite(s["metrics"]["train/loss"])
    assert s["metrics"]["train/loss"] < s["first_metrics"]["train/loss"]
    assert {p.dtype for p in CLIP.from_pretrained(out).parameters()} == {torch.float32}


def test_clip_with_ema_saves_ema_weights_and_reports_mfu(data, tokenizer_dir, tmp_path):
    from model_code.models.clip import CLIP
    from model_code.train.run import train_part
    out = str(tmp_path / "clip")
    over = {"train": {**FAST["train"], "steps": {"clip": 12}, "ckpt_every": 12,
                      "clip": {"ema_decay": 0.9, "peak_flops": 1e12}}}
    with pytest.raises(ValueError, match="needs trained tokenizer"):
        train_part("clip", "tiny", data=data, out=out, overrides=over, mlflow=False)
    s = train_part("clip", "tiny", data=data, out=out, deps={"tokenizer": tokenizer_dir},
                   overrides=over, mlflow=False)
    assert s["steps"] == 12 and math.isfinite(s["metrics"]["train/loss"])
    # CPU MFU against the configured peak: FLOPs were counted, so the number is real
    assert 0 < s["metrics"]["perf/mfu"] < 1 and s["metrics"]["perf/tflops"] > 0
    assert s["metrics"]["perf/tokens_per_s"] > 0
    clip = CLIP.from_pretrained(out)
    assert clip.config["vocab_size"] == json.load(open(os.path.join(tokenizer_dir, "easel_tokenizer.json")))["vocab_size"]
    # the saved weights are the EMA's, not the last raw weights
    ckpt = torch.load(os.path.join(out, "checkpoints", "step-00000012.ckpt"), weights_only=False)
    saved = load_file(os.path.join(out, "model.safetensors"))
    name = "model.text_projection.weight"
    index = [n for n, p in clip.named_parameters() if p.requires_grad].index(name)   # the EMA's order
    assert torch.allclose(saved[name], ckpt["easel"]["ema"]["shadow_params"][index])
    assert not torch.allclose(saved[name], ckpt["state_dict"]["model." + name])



def test_an_out_is_never_reused_on_other_data_or_dependencies(data, tmp_path):
    """The paths stay the same when a pipeline re-ingests or retrains in place: a finished run is
    reused only on the same dataset contents and the same trained dependencies, else the error says
    what changed (before, a CLIP trained on other data was returned as `reused`)."""
    import shutil

    from model_code.data.ingest import ingest
    from model_code.data.synth import synthesize
    from model_code.train.run import train_part
    ds, tok, clip = (str(tmp_path / d) for d in ("data", "tok", "clip"))
    shutil.copytree(data, ds)
    over = {"train": {**FAST["train"], "steps": {"clip": 2}, "ckpt_every": 2}}
    train_part("tokenizer", "tiny", data=ds, out=tok, mlflow=False)
    first = train_part("clip", "tiny", data=ds, out=clip, deps={"tokenizer": tok}, overrides=over, mlflow=False)
    assert train_part("clip", "tiny", data=ds, out=clip, deps={"tokenizer": tok}, overrides=over,
                      mlflow=False)["reused"]
    # the tokenizer retrained in place with another vocabulary: a new dependency at the same path
    train_part("tokenizer", "tiny", data=ds, out=tok, mlflow=False, resume=False,
               overrides={"tokenizer": {"vocab_size": 500}})
    with pytest.raises(ValueError, match="changed: the trained tokenizer"):
        train_part("clip", "tiny", data=ds, out=clip, deps={"tokenizer": tok}, overrides=over, mlflow=False)
    # other images at the same path
    shutil.rmtree(ds)
    synthesize(str(tmp_path / "src"), n=48, size=32, seed=7, curated_fraction=0.25, workers=1)
    ingest(str(tmp_path / "src"), ds, size=32, shard_size=40, heldout_fraction=0.1, progress=False, workers=1)
    # the tokenizer, like every part, is not silently retrained over: the error names the data ...
    with pytest.raises(ValueError, match="changed: the dataset's contents"):
        train_part("tokenizer", "tiny", data=ds, out=tok, mlflow=False)
    # ... and retrains only when asked to start over
    assert not train_part("tokenizer", "tiny", data=ds, out=tok, mlflow=False, resume=False)["reused"]
    with pytest.raises(ValueError, match="changed: the dataset's contents .*, the trained tokenizer"):
        train_part("clip", "tiny", data=ds, out=clip, deps={"tokenizer": tok}, overrides=over, mlflow=False)
    assert os.path.exists(os.path.join(clip, "model.safetensors"))          # nothing was lost
    again = train_part("clip", "tiny", data=ds, out=clip, deps={"tokenizer": tok}, overrides=over,
                       mlflow=False, resume=False)
    assert not again["reused"] and again["steps"] == 2 and first["steps"] == 2


# --------------------------------------------------------------------------- failures and damage
def _dvae_over(steps: int, **train) -> dict:
    return {**SMALL_DVAE, "train": {**FAST["train"], "steps": {"dvae": steps}, **train}}


@pytest.mark.parametrize("ckpt_every, nan_from, match", [
    # weights turn NaN after step 6: the checkpoint due there is refused, the one at step 4 kept
    (2, 5, "dvae: the weights are NaN or infinite at step 6: .*not marked complete.*last good checkpoint "
           "\\(step 4"),
    # no checkpoint due: the loss is caught at the next log step (log_every 5)
    (0, 2, "dvae: the training loss is NaN or infinite at step 5: .*no checkpoint had been written yet"),
])
def test_a_diverging_run_stops_and_is_not_marked_complete(data, tmp_path, monkeypatch, ckpt_every,
                                                          nan_from, match):
    """A NaN loss used to end in exit 0, a completed train_state.json and NaN weights that a
    transformer then trained on."""
    from model_code.models.dvae import DVAE as DVAEModel
    from model_code.train.run import train_part
    real = DVAEModel.forward_loss

    def diverging(self, images, step):
        out = real(self, images, step)
        return {**out, "loss": out["loss"] * float("nan")} if step >= nan_from else out
    monkeypatch.setattr(DVAEModel, "forward_loss", diverging)
    torch.manual_seed(0)
    out = str(tmp_path / "dvae")
    with pytest.raises(RuntimeError, match=match) as e:   # callbacks.NonFiniteTraining
        train_part("dvae", "tiny", data=data, out=out, mlflow=False,
                   overrides=_dvae_over(12, ckpt_every=ckpt_every))
    assert type(e.value).__name__ == "NonFiniteTraining"
    assert not os.path.exists(os.path.join(out, "train_state.json"))
    assert not os.path.exists(os.path.join(out, "model.safetensors"))
    if ckpt_every:
        latest = json.load(open(os.path.join(out, "checkpoints", "latest.json")))
        assert latest["step"] == 4
        ckpt = torch.load(os.path.join(out, "checkpoints", "step-00000004.ckpt"), weights_only=False)
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def _mlflow_steps(run_id: str) -> dict[int, float]:
    from mlflow.tracking import MlflowClient
    history = MlflowClient().get_metric_history(run_id, "train/loss")
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)), f"steps logged twice: {sorted(steps)}"
    return {m.step: m.value for m in history}


def test_a_killed_run_loses_no_history_and_logs_each_step_once(data, tmp_path, monkeypatch):
    """SIGKILL (here: an error no handler sees) after the checkpoint at step 8: history.csv kept only
    what its 20-row buffer had flushed (nothing), MLflow got steps 9, 11 (one behind history.csv's)
    and, after the resume, steps 9 and 11 again. Also: a resume with other settings names them, and
    fewer steps than the checkpoint's is the finished run's error."""
    import csv

    from model_code.train import callbacks as cb
    from model_code.train.run import train_part
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    out = str(tmp_path / "dvae")
    over = _dvae_over(20, log_every=2, ckpt_every=8)

    class Killed(Exception):
        pass

    def kill_at_13(self, trainer, *args):
        if trainer.global_step == 13:
            raise Killed()
    monkeypatch.setattr(cb.SampleGrid, "on_train_batch_end", kill_at_13)
    monkeypatch.setattr(cb.History, "on_exception", lambda *a: None)   # SIGKILL runs no handler
    torch.manual_seed(0)
    with pytest.raises(Killed):
        train_part("dvae", "tiny", data=data, out=out, overrides=over)
    monkeypatch.undo()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    rows = list(csv.DictReader(open(os.path.join(out, "history.csv"))))
    assert [r["step"] for r in rows] == ["2", "4", "6", "8"]   # flushed with the checkpoint

    with pytest.raises(ValueError, match="the checkpoint in .*changed: dvae.n_hid 16 -> 8, train.lr 0.005 -> 0.001\\)"):
        train_part("dvae", "tiny", data=data, out=out,
                   overrides=deep_merge(over, {"dvae": {"n_hid": 8}, "train": {"dvae": {"lr": 1e-3}}}))
    with pytest.raises(ValueError, match="holds a dvae trained for 8 steps, more than max_steps=6"):
        train_part("dvae", "tiny", data=data, out=out, overrides=_dvae_over(6, log_every=2, ckpt_every=8))

    s = train_part("dvae", "tiny", data=data, out=out, overrides=over)
    assert s["resumed_from_step"] == 8 and s["steps"] == 20
    rows = list(csv.DictReader(open(os.path.join(out, "history.csv"))))
    assert [int(r["step"]) for r in rows] == list(range(2, 21, 2))
    logged = _mlflow_steps(s["mlflow_run_id"])
    assert sorted(logged) == list(range(2, 21, 2))   # history.csv's step numbers, each once
    for r in rows:   # the same values under the same step (the resume is deterministic)
        assert float(r["train/loss"]) == pytest.approx(logged[int(r["step"])], rel=1e-4)


def test_a_dependency_must_be_a_finished_run(data, tokenizer_dir, tmp_path, monkeypatch):
    """A copy of a finished dVAE restarted with other settings and preempted kept the old
    config.json/model.safetensors and no train state; a transformer trained on it (exit 0)."""
    import shutil
    import signal

    from model_code.models.dvae import DVAE as DVAEModel
    from model_code.train import callbacks as cb
    from model_code.train.run import Preempted, train_part
    torch.manual_seed(0)
    done, r1 = str(tmp_path / "s1"), str(tmp_path / "r1")
    train_part("dvae", "tiny", data=data, out=done, mlflow=False, overrides=_dvae_over(2, ckpt_every=2))
    shutil.copytree(done, r1)

    def sigterm_at_1(self, trainer, *args):
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(cb.SampleGrid, "on_train_batch_end", sigterm_at_1)
    with pytest.raises(Preempted):
        train_part("dvae", "tiny", data=data, out=r1, mlflow=False, resume=False,
                   overrides=deep_merge(_dvae_over(4, ckpt_every=2), {"dvae": {"n_hid": 8}}))
    monkeypatch.undo()
    # the restart removed the earlier run's model first: nothing there passes for the new one
    assert not {"config.json", "model.safetensors", "train_state.json"} & set(os.listdir(r1))
    deps = {"tokenizer": tokenizer_dir, "dvae": r1}
    over = {**SMALL_TRANSFORMER, "train": {**FAST["train"], "steps": {"transformer": 1}}}
    with pytest.raises(ValueError, match=f"the dvae at {r1} is not a finished training run"):
        train_part("transformer", "tiny", data=data, out=str(tmp_path / "tr"), deps=deps, overrides=over,
                   mlflow=False)
    # a part saved elsewhere (no train state, no checkpoints) is still a dependency
    elsewhere = str(tmp_path / "elsewhere")
    DVAEModel.from_pretrained(done).save_pretrained(elsewhere)
    s = train_part("transformer", "tiny", data=data, out=str(tmp_path / "tr"), overrides=over, mlflow=False,
                   deps={**deps, "dvae": elsewhere})
    assert s["steps"] == 1
    # an out that holds another part's run says which part it holds
    with pytest.raises(ValueError, match=f"the finished run in {done} holds a trained dvae, not a transformer"):
        train_part("transformer", "tiny", data=data, out=done, overrides=over, mlflow=False,
                   deps={**deps, "dvae": elsewhere})


def test_out_is_never_the_data_or_a_dependency(data, tmp_path):
    """`--out victim --dep dvae=victim` said "its transformer is not this run's ... --restart", and the
    restart overwrote the dVAE. Refused before anything is read or written."""
    from model_code.train.run import train_part
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "marker").write_text("x")
    deps = {"tokenizer": str(tmp_path / "tok"), "dvae": str(victim)}
    cases = [(str(victim), deps, f"out {victim} is the trained dvae \\(a dependency\\) at {victim}"),
             (str(victim / "sub"), deps, "is inside the trained dvae"),
             (str(tmp_path), deps, "contains the trained dvae"),
             (data, {}, "is the dataset"),
             (os.path.join(data, "models"), {}, "is inside the dataset")]
    for out, d, match in cases:
        for part in ("transformer", "tokenizer"):
            if part == "tokenizer" and d:
                continue
            with pytest.raises(ValueError, match=match):
                train_part(part, "tiny", data=data, out=out, deps=d or None, mlflow=False, resume=False)
    assert sorted(os.listdir(victim)) == ["marker"] and not os.path.exists(os.path.join(data, "models"))


def test_damaged_state_files_are_named_and_older_checkpoints_used(data, tmp_path, capsys):
    """An empty latest.json, a cut train_state.json or checkpoint gave json's or torch's own words;
    now the error names the file and what to do, and an older whole checkpoint is resumed from."""
    from model_code.train.callbacks import latest_checkpoint
    from model_code.train.run import train_part
    torch.manual_seed(0)
    out = str(tmp_path / "dvae")
    ck = os.path.join(out, "checkpoints")
    over = _dvae_over(4, ckpt_every=2)
    train_part("dvae", "tiny", data=data, out=out, mlflow=False, overrides=over)
    state = os.path.join(out, "train_state.json")
    text = open(state).read()
    open(state, "w").write(text[:len(text) // 2])
    with pytest.raises(ValueError, match=f"{state} is damaged .*: delete it to resume .* --restart"):
        train_part("dvae", "tiny", data=data, out=out, mlflow=False, overrides=over)
    os.remove(state)

    open(os.path.join(ck, "latest.json"), "w").close()   # empty: the newest checkpoint's own record
    assert latest_checkpoint(ck)["step"] == 4 and "latest.json is damaged" in capsys.readouterr().err
    newest = os.path.join(ck, "step-00000004.ckpt")
    blob = open(newest, "rb").read()
    open(newest, "wb").write(blob[:len(blob) // 2])
    found = latest_checkpoint(ck)
    assert found["step"] == 2 and found["uri"].endswith("step-00000002.ckpt")
    assert "resuming from the older checkpoint" in capsys.readouterr().err
    s = train_part("dvae", "tiny", data=data, out=out, mlflow=False, overrides=over)
    assert s["resumed_from_step"] == 2 and s["steps"] == 4
    assert latest_checkpoint(ck)["step"] == 4   # rewritten whole

    for name in ("step-00000002.ckpt", "step-00000004.ckpt"):
        path = os.path.join(ck, name)
        open(path, "wb").write(open(path, "rb").read()[:100])
    with pytest.raises(ValueError, match="step-00000004.ckpt \\(named by latest.json\\) is cut short.*"
                                         "no older whole checkpoint .*--restart"):
        latest_checkpoint(ck)

    # a state file is replaced whole or not at all
    from model_code.train.files import write_text_atomic
    path = str(tmp_path / "f.json")
    write_text_atomic(path, "old")
    import model_code.train.files as files
    real = files.os.replace
    files.os.replace = lambda *a: (_ for _ in ()).throw(OSError("disk full"))
    try:
        with pytest.raises(OSError):
            write_text_atomic(path, "new")
    finally:
        files.os.replace = real
    assert open(path).read() == "old" and os.listdir(tmp_path / ".") and \
        not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_ctrl_c_is_an_interrupt_not_a_failure(data, tmp_path, monkeypatch):
    """Lightning answers Ctrl-C with its own graceful shutdown and sys.exit(1): the CLI then said
    nothing and exited 1. It is a KeyboardInterrupt again (the CLI's 'interrupted', exit 130), and
    the run is not marked complete."""
    import signal

    from model_code.train import callbacks as cb
    from model_code.train.run import train_part
    torch.manual_seed(0)

    def sigint_at_1(self, trainer, *args):
        if trainer.global_step == 1:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(cb.SampleGrid, "on_train_batch_end", sigint_at_1)
    # Ctrl-C as a shell delivers it to a fresh process (servers started by earlier tests in this
    # process may have left their own SIGINT handler; Lightning leaves SIGINT ignored after one)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    out = str(tmp_path / "d")
    try:
        with pytest.raises(KeyboardInterrupt, match="dvae interrupted at step"):
            train_part("dvae", "tiny", data=data, out=out, mlflow=False, overrides=_dvae_over(3, ckpt_every=2))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not os.path.exists(os.path.join(out, "train_state.json"))
