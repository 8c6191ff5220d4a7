"""Recaptioning throughput: batched generation with a KV cache against one image at a time without.

    python tests/benchmarks/bench_recaption.py [--preset tiny] [--n 64] [--batch 32] [--device cpu]

The same CoCa (the preset's `captioner:` + `clip:` sections, random weights, vocabulary 512) captions
the same Shapes images four ways: batched / one at a time, each with and without the KV cache
(transformers' generate; cross-attention keys/values over the image tokens are cached too).
Greedy decoding, so every way must write the same ids (checked, up to near-tie argmax flips
that batched float reductions can cause: the cache and batching are optimisations only). Captions/s and tokens/s are printed with the ratio against the baseline
(unbatched, no cache). Not collected by pytest (bench_*.py); results go to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time

import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from model_code.config import load_preset  # noqa: E402
from model_code.data import shapes  # noqa: E402
from model_code.models.coca import CoCa  # noqa: E402
from model_code.recaption.captioner import images_to_tensor  # noqa: E402


def build(preset: str, vocab: int, device: str) -> CoCa:
    cfg = load_preset(preset)
    sec = dict(cfg.get("captioner") or {})
    clip = dict(cfg.get("clip") or {})
    clip.setdefault("image_size", cfg["data"]["size"])
    torch.manual_seed(0)
    return CoCa.from_config({**sec, "clip": clip, "vocab_size": vocab}).to(device).eval()


def run(model: CoCa, images: torch.Tensor, batch: int, use_cache: bool, max_new: int) -> tuple[float, list]:
    """Greedy long captions for all images -> (seconds, list of id rows without padding)."""
    rows = []
    if images.is_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(0, images.shape[0], batch):
        out = model.generate_ids(images[i:i + batch], kind="long", temperature=0,
                                 max_new_tokens=max_new, use_cache=use_cache)
        rows += [r[r != model.config["pad_id"]].tolist() for r in out.cpu()]
    if images.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - t0, rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--n", type=int, default=64, help="images to caption")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: the model's room")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build(args.preset, 512, args.device)
    max_new = args.max_new_tokens or model.config["max_text_tokens"] - 2
    size = model.clip.config["image_size"]
    rng = random.Random(0)
    images = images_to_tensor([shapes.render(shapes.sample_scene(rng, size)) for _ in range(args.n)], size)
    images = images.to(args.device)
    run(model, images[:2], 2, True, 4)  # warm-up (allocations, lazy imports)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {args.device}")
    print(f"model: preset {args.preset} captioner, {model.num_params() / 1e6:.2f}M params, "
          f"{(size // model.clip.config['patch_size']) ** 2 + 1} image tokens, {args.n} images, "
          f"up to {max_new} new tokens, greedy")
    print("| way | batch | KV cache | s | captions/s | tokens/s | vs baseline | same ids as baseline |")
    print("|---|---|---|---|---|---|---|---|")
    ways = [("baseline", 1, False), ("cache only", 1, True), ("batch only", args.batch, False),
            ("batched + cache", args.batch, True)]
    base_secs, base_rows = None, None
    for name, batch, cache in ways:  # the baseline runs first; each row is printed when measured
        secs, rows = run(model, images, batch, cache, max_new)
        if base_rows is None:
            base_secs, base_rows = secs, rows
        # batched float reductions may flip a near-tie argmax in a random model; a broken cache or
        # padding would change nearly every caption
        same = sum(a == b for a, b in zip(rows, base_rows)) / len(rows)
        if same < 0.9:
            print(f"ERROR: '{name}' wrote different ids from the baseline for {1 - same:.0%} of the images",
                  file=sys.stderr)
            return 1
        n_tok = sum(len(r) - 2 for r in rows)  # generated tokens: without <bos>, kind
        print(f"| {name} | {batch} | {'yes' if cache else 'no'} | {secs:.2f} | {args.n / secs:.1f} | "
              f"{n_tok / secs:.0f} | {base_secs / secs:.1f}x | {same:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
