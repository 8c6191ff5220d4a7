"""A generation bundle as one MLflow pyfunc model: prompts in, PNG images out.

    model = mlflow.pyfunc.load_model("models:/easel-dalle@production")
    out = model.predict(pd.DataFrame({"prompt": ["a red circle above a blue square"], "n": [2], "seed": [0]}))
    out.columns -> prompt, index, image (base64 PNG), clip_score     (one row per image, best first)

Input columns: `prompt` (str, required); `n` (images to keep per prompt, default 1), `seed`
(default: random) and `candidates` (images sampled per prompt before CLIP reranking, default the
bundle's) are optional. Rows that share (n, candidates, seed) are generated as one batch: the
same request with the same seed gives the same images.

The model's only artifact is the bundle directory (every part and bundle.json, see
model_code.generate); its code is the installed `easel` package (`model_code`), named in the
model's pip requirements, so loading needs no Easel checkout.
"""
from __future__ import annotations

import base64
import io
import logging
import math
import numbers
import os
import re
from importlib import metadata as importlib_metadata
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema

BUNDLE_ARTIFACT = "bundle"  # the key of the bundle directory in the model's artifacts
MAX_N = 64                  # images kept per prompt, per request row
MAX_CANDIDATES = 512        # DALL-E 1 reranks N = 512 samples per prompt; no request samples more

# The packages the loaded model imports, pinned at the versions that built it. The easel
# distribution itself brings the rest of its (pinned) dependencies.
PINNED = ("mlflow", "torch", "transformers", "diffusers", "tokenizers", "safetensors", "numpy",
          "pandas", "pillow")


# ---------------------------------------------------------------- schema
def signature() -> ModelSignature:
    inputs = Schema([ColSpec("string", "prompt"),
                     ColSpec("long", "n", required=False),
                     ColSpec("long", "seed", required=False),
                     ColSpec("long", "candidates", required=False)])
    outputs = Schema([ColSpec("string", "prompt"), ColSpec("long", "index"),
                      ColSpec("string", "image"), ColSpec("double", "clip_score")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> pd.DataFrame:
    return pd.DataFrame({"prompt": ["a large red circle in the center on a white background"],
                         "n": [1], "seed": [0], "candidates": [1]})


def pip_requirements() -> list[str]:
    """`easel==<installed version>` (or EASEL_PIP_REQUIREMENT: a wheel path/URL or index spec for
    images that install Easel differently) plus the installed versions of PINNED."""
    reqs = [os.environ.get("EASEL_PIP_REQUIREMENT") or _installed("easel") or "easel"]
    for pkg in PINNED:
        spec = _installed(pkg)
        if spec:
            reqs.append(spec)
    return reqs


def _installed(pkg: str) -> str | None:
    try:
        v = importlib_metadata.version(pkg)
    except importlib_metadata.PackageNotFoundError:
        return None
    return f"{pkg}=={v.split('+')[0]}"  # torch reports 2.13.0+cpu: pin the public version


# ---------------------------------------------------------------- request parsing
def parse_requests(model_input: Any) -> list[dict]:
    """A DataFrame (or a list of dicts / dict of lists / list of prompts) -> one dict per row
    with prompt, n, seed (None = random), candidates (None = the bundle's default).
    Bad values raise ValueError naming the column and the row."""
    if isinstance(model_input, pd.DataFrame):
        df = model_input
    elif isinstance(model_input, dict):
        df = pd.DataFrame(model_input if all(isinstance(v, (list, tuple)) for v in model_input.values())
                          else [model_input])
    elif isinstance(model_input, (list, tuple)):
        rows = [{"prompt": r} if isinstance(r, str) else r for r in model_input]
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError("input rows must be prompts (str) or dicts with a 'prompt' field")
        df = pd.DataFrame(rows)
    else:
        raise ValueError(f"input must be a DataFrame with a 'prompt' column, got {type(model_input).__name__}")
    if "prompt" not in df.columns:
        raise ValueError(f"input needs a 'prompt' column (got columns {list(df.columns)})")
    unknown = set(df.columns) - {"prompt", "n", "seed", "candidates"}
    if unknown:
        raise ValueError(f"unknown input column(s) {sorted(unknown)}: expected prompt, n, seed, candidates")
    out = []
    for i, row in enumerate(df.to_dict("records")):
        prompt = row["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt: row {i} must be a non-empty string, got {prompt!r}")
        n = _int_field(row, "n", i, default=1, lo=1, hi=MAX_N)
        cand = _int_field(row, "candidates", i, default=None, lo=1, hi=MAX_CANDIDATES)
        if cand is not None and cand < n:
            raise ValueError(f"candidates: row {i} samples {cand} images but keeps n={n}; "
                             f"candidates must be >= n")
        out.append({"prompt": prompt, "n": n, "candidates": cand,
                    "seed": _int_field(row, "seed", i, default=None, lo=0, hi=2**63 - 1)})
    return out


def _int_field(row: dict, key: str, i: int, default, lo: int, hi: int):
    v = row.get(key)
    if v is None or (isinstance(v, numbers.Real) and math.isnan(v)):  # absent in this row
        return default
    # a column with gaps arrives as floats (1.0): whole floats are fine, 1.5 or True are not
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not float(v).is_integer():
        raise ValueError(f"{key}: row {i} must be an integer, got {v!r}")
    v = int(v)
    if not lo <= v <= hi:
        raise ValueError(f"{key}: row {i} must be between {lo} and {hi}, got {v}")
    return v


def png_b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------- the model
class BundleModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of model_code.generate.Generator."""

    def load_context(self, context) -> None:
        from model_code.generate import Generator  # the installed package: no checkout needed
        self.generator = Generator.load(context.artifacts[BUNDLE_ARTIFACT])

    # the pd.DataFrame hint tells MLflow to rely on the signature (it infers nothing from it)
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from types import SimpleNamespace
        from model_code.serve.batching import first_batch
        requests = parse_requests(model_input)
        # the server's batching policy: rows that share settings and carry no seed run together,
        # a seeded row alone (its images do not depend on the other rows); results keep their place
        items = [SimpleNamespace(row=i, prompts=[r["prompt"]], seed=r["seed"], key=(r["n"], r["candidates"]))
                 for i, r in enumerate(requests)]
        results: list = [None] * len(requests)
        while items:
            picked = first_batch(items, max_batch=len(items))
            rows = [items[i].row for i in picked]
            r0 = requests[rows[0]]
            gen = self.generator.generate([requests[i]["prompt"] for i in rows], n=r0["n"],
                                          candidates=r0["candidates"], seed=r0["seed"])
            for i, g in zip(rows, gen):
                results[i] = g
            items = [it for k, it in enumerate(items) if k not in set(picked)]
        records = [{"prompt": g.prompt, "index": k, "image": png_b64(im), "clip_score": float(s)}
                   for g in results for k, (im, s) in enumerate(zip(g.images, g.scores))]
        return pd.DataFrame(records, columns=["prompt", "index", "image", "clip_score"])


# ---------------------------------------------------------------- logging
class _PyfuncFlavor:
    """`mlflow.pyfunc` as the flavor of Model.log, accepting `validate_serving_input`.

    mlflow.pyfunc.log_model always "validates" the input example by loading the model and
    generating from it: for a diffusion bundle that is minutes of sampling at registration
    time. Model.log can skip it (the transformers flavor does), but passes the switch on to the
    flavor's save_model, which pyfunc's refuses; this adapter drops it. Tests load and predict
    the registered model instead."""

    __name__ = "mlflow.pyfunc"

    @staticmethod
    def save_model(path, mlflow_model, validate_serving_input: bool = True, **kwargs):
        return mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, **kwargs)


def log_bundle_model(bundle_dir: str, run_id: str, registered_model_name: str | None = None,
                     tags: dict[str, str] | None = None, metadata: dict | None = None):
    """Log the local bundle directory as a pyfunc model of run `run_id` (and register it as a
    new version of `registered_model_name`). Returns mlflow's ModelInfo."""
    if not os.path.isfile(os.path.join(bundle_dir, "bundle.json")):
        raise ValueError(f"bundle_dir: {bundle_dir} is not a local Easel bundle (no bundle.json)")
    name = re.sub(r"[^A-Za-z0-9_-]", "-", registered_model_name or "bundle")
    # MLflow warns that a pickled python_model may run code when loaded; ours pickles by
    # reference to the installed class (a few hundred bytes), so the warning says nothing here
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.ERROR)
    try:
        return _log(bundle_dir, name, run_id, registered_model_name, tags, metadata)
    finally:
        pyfunc_log.setLevel(level)


def _log(bundle_dir, name, run_id, registered_model_name, tags, metadata):
    # the logged model belongs to the run's experiment (left alone, MLflow files it under the
    # process's current experiment, usually Default)
    experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
    logged = mlflow.initialize_logged_model(name=name, source_run_id=run_id, tags=tags,
                                            experiment_id=experiment_id)
    return Model.log(artifact_path=None, name=name, flavor=_PyfuncFlavor, model_id=logged.model_id,
                     flavor_name="pyfunc.CustomPythonModel",
                     registered_model_name=registered_model_name, run_id=run_id, tags=tags,
                     metadata=metadata, python_model=BundleModel(),
                     artifacts={BUNDLE_ARTIFACT: bundle_dir}, signature=signature(),
                     input_example=input_example(), pip_requirements=pip_requirements(),
                     validate_serving_input=False)
