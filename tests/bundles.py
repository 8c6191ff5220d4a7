"""Tiny untrained bundles for tests of evaluation, registry and serving: every part built from
the `tiny` preset through the training registry (the same build path as training), seeded
with torch.manual_seed(0). Untrained models make noise, not shapes; the tests that need
*good* images train them (tests/e2e)."""
from __future__ import annotations

import contextlib
import os
import random

import torch

from model_code.config import load_preset
from model_code.data import shapes
from model_code.generate import RECIPE_PARTS, save_bundle
from model_code.text.tokenizer import TextTokenizer
from model_code.train.parts import get_part


def captions(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = shapes.sample_scene(rng, 32)
        out += [shapes.long_caption(s), shapes.short_caption(s), shapes.curated_caption(s, rng)]
    return out


def build_parts(root: str, recipe: str, preset: str = "tiny", overrides: dict | None = None,
                captioner: bool = False) -> dict[str, str]:
    """The recipe's parts (and, with `captioner`, the optional CoCa that `rerank: captioner` uses)."""
    torch.manual_seed(0)
    cfg = load_preset(preset, overrides)
    parts: dict[str, str] = {}
    tok = TextTokenizer.train(captions(), cfg["tokenizer"]["vocab_size"], cfg["tokenizer"]["max_text_tokens"])
    parts["tokenizer"] = os.path.join(root, "tokenizer")
    tok.save(parts["tokenizer"])
    deps = {"tokenizer": tok}
    names = (list(RECIPE_PARTS[recipe][1:]) + (["upsampler"] if recipe == "unclip" else [])
             + (["captioner"] if captioner else []))
    for name in names:
        spec = get_part(name)
        model = spec.build(cfg, {d: deps[d] for d in spec.deps + spec.optional_deps if d in deps})
        parts[name] = os.path.join(root, name)
        model.save_pretrained(parts[name])
        deps[name] = model.eval()
    return parts


def tiny_bundle(root: str, recipe: str, overrides: dict | None = None, captioner: bool = False, **sampling) -> str:
    parts = build_parts(os.path.join(root, "parts-" + recipe), recipe, overrides=overrides, captioner=captioner)
    out = os.path.join(root, "bundle-" + recipe)
    from model_code.config import load_preset
    return save_bundle(out, recipe, parts, preset="tiny", sampling=sampling,
                       lineage={"dataset_version": "test", "git": "test"},
                       config=load_preset("tiny", overrides or None))


@contextlib.contextmanager
def evaluation_env(root):
    """MLflow and EASEL_HOME inside `root`, and a small ingested Shapes dataset with a held-out
    split (40 images, 32 px): what evaluation tests need. Yields the dataset directory; the
    environment is restored afterwards."""
    old = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "EASEL_HOME")}
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    os.environ["EASEL_HOME"] = str(root / "home")
    from model_code.data.ingest import ingest
    from model_code.data.synth import synthesize
    try:
        synthesize(str(root / "raw"), n=40, size=32, seed=0, curated_fraction=0.25)
        ingest(str(root / "raw"), str(root / "ds"), size=32, shard_size=20, heldout_fraction=0.3)
        yield str(root / "ds")
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
