"""`train_part`: the one entry point that trains any part (CLI, KFP components, Python).

From Python:

    from model_code.train import train_part
    tok = train_part("tokenizer", "tiny", data="runs/x/data", out="runs/x/tokenizer")
    dvae = train_part("dvae", "tiny", data="runs/x/data", out="runs/x/dvae")
    tr = train_part("transformer", "tiny", data="runs/x/data", out="runs/x/transformer",
                    deps={"tokenizer": "runs/x/tokenizer", "dvae": "runs/x/dvae"},
                    overrides={"train": {"steps": {"transformer": 200}}})
    tr["out"], tr["metrics"]["train/loss"], tr["mlflow_run_id"]

From a shell: `easel train dvae --preset tiny --data runs/x/data --out runs/x/dvae` (the same
function). Exit status 143 (128 + SIGTERM) means the run was preempted after writing a
checkpoint: run the same command again to resume.

What a run leaves under `out` (a directory or s3:// prefix; never the dataset's or a dependency's,
nor inside or around one):
    config.json, model.safetensors    the trained model (EMA weights where the part keeps an EMA)
    train_state.json                  the summary below, the config hash and the settings; written
                                      last, only when the run completed with finite weights
    history.csv                       the curve (model_code.train.callbacks.History)
    checkpoints/                      resumable checkpoints (model_code.train.callbacks)
    samples/                          sample grids, when MLflow is off

Resuming: with resume=True (the default) a run whose `out` holds a checkpoint written with the same
configuration continues from it, at the same step and data position; a finished run with the same
configuration is not retrained (its summary is returned, `reused: True`), or, given a larger
max_steps, is extended from its final checkpoint. "The same configuration" covers what the dataset
and the trained dependencies hold, not only where they are (model_code.identity). A different one in
the same `out` is an error that names what changed (settings with their old and new values), unless
resume=False (start over: everything an earlier run left in `out` is removed first, its final model
included). A run whose loss or weights stop being finite ends with NonFiniteTraining, keeping its
last good checkpoint. A dependency must be a finished run (a completed train_state.json) or a part
saved elsewhere (no train state, no checkpoints); a stopped or running one is refused.

MLflow: params (the part's model config, the resolved training config, data and deps), metrics
every `log_every` steps (every key of the loss dict, lr, throughput, MFU), sample grids and the
final summary go to the tracking server at MLFLOW_TRACKING_URI, or by default to a local SQLite
store `.easel/mlflow.db` (artifacts in `.easel/mlruns`). The dataset's version id (dataset.json)
is logged as the `dataset_version` param and tag.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch

from model_code import storage
from model_code.config import deep_merge, load_preset
from model_code.identity import STATE_FILE, changed, dataset_identity, part_identity
from model_code.tracking import artifact_location, git_revision, tracking_uri
from model_code.train.files import read_json, write_json
from model_code.train.parts import Context, PartSpec, get_part

PREEMPTED_EXIT = 143  # 128 + SIGTERM: what a shell reports for a process ended by SIGTERM
# Everything a run leaves in `out`. Starting over removes it first (the state first: a stop half way
# never leaves an old model marked complete), so no file of the earlier run, its final model
# included, passes for this run's (as a later run's dependency, say) if this one stops early.
RUN_FILES = (STATE_FILE, "config.json", "model.safetensors", "history.csv", "checkpoints", "samples")
TOKENIZER_FILES = (STATE_FILE, "tokenizer.json", "easel_tokenizer.json")


class Preempted(SystemExit):
    """Training stopped by SIGTERM after writing its checkpoint: not a success.

    A SystemExit with code 143, so that every entry point ends non-zero without code of its own:
    `easel train` exits 143, a KFP task fails (and its
    `set_retry` re-runs it, resuming from the checkpoint), a PyTorchJob/TrainJob pod exits 143
    (restarted under its restart policy). No `except Exception` swallows it, so no later step can
    consume a half-trained model. `summary` is the run summary at the stop."""

    def __init__(self, summary: dict):
        super().__init__(PREEMPTED_EXIT)
        self.summary = summary


# --------------------------------------------------------------------------- MLflow
def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) or v is None else json.dumps(v, default=str)
    return out


def _require_mlflow() -> None:
    try:
        import mlflow  # noqa: F401
    except ImportError as e:
        raise RuntimeError("mlflow is not installed here: install it or train with mlflow=False "
                           "(--no-mlflow)") from e


def _mlflow_logger(tcfg: dict, part: str, preset_name: str, run_id: str | None, tags: dict):
    _require_mlflow()
    from pytorch_lightning.loggers import MLFlowLogger
    return MLFlowLogger(experiment_name=tcfg["mlflow_experiment"], run_name=f"{part}-{preset_name}",
                        tracking_uri=tracking_uri(), artifact_location=artifact_location(),
                        run_id=run_id, tags=None if run_id else tags, log_model=False)


# --------------------------------------------------------------------------- config and state
def _config(preset: str | dict, overrides: dict | None) -> dict:
    if isinstance(preset, dict):
        return deep_merge(preset, overrides) if overrides else dict(preset)
    return load_preset(preset, overrides)


def config_hash(part: str, model_config: dict, tcfg: dict, data: str, deps: dict[str, str],
                inputs: dict) -> str:
    """What must not change between a run and its resumption (operational keys may): the config,
    where the data and dependencies are, and what they hold (`inputs`, from input_identity)."""
    from model_code.train.module import OPERATIONAL_KEYS
    blob = {"part": part, "model": model_config, "data": data, "deps": deps,
            "train": {k: v for k, v in tcfg.items() if k not in OPERATIONAL_KEYS}, "inputs": inputs}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_identity(data: str, deps: dict[str, str]) -> dict:
    """What the dataset and each trained dependency hold (model_code.identity), not just where."""
    return {"data": dataset_identity(data), "deps": {k: part_identity(v) for k, v in sorted(deps.items())}}


def run_settings(part: str, model_config: dict, tcfg: dict | None, data: str,
                 deps: dict[str, str] | None) -> dict:
    """The settings a run records (train_state.json and latest.json, `config`), as JSON reads them
    back, so that a later run in the same `out` can name the ones it changed."""
    settings = {part: model_config, "data": data, "deps": deps or {}}
    if tcfg is not None:
        settings["train"] = tcfg
    return json.loads(json.dumps(settings, default=str))


def _changed_settings(old: dict | None, new: dict, shown: int = 3) -> list[str]:
    """`key old -> new` for the settings that differ (operational keys may change), the first
    `shown` of them; sections the old record lacks are not compared (written before they were)."""
    from model_code.train.module import OPERATIONAL_KEYS
    if not isinstance(old, dict):
        return []
    a = _flatten({k: v for k, v in old.items() if k in new})
    b = _flatten({k: v for k, v in new.items() if k in old})
    unset = "(unset)"
    keys = [k for k in sorted(set(a) | set(b)) if (k in a, a.get(k)) != (k in b, b.get(k))
            and not (k.startswith("train.") and k[len("train."):] in OPERATIONAL_KEYS)]
    out = [f"{k} {a.get(k, unset)} -> {b.get(k, unset)}" for k in keys[:shown]]
    return out + ([f"and {len(keys) - shown} more"] if len(keys) > shown else [])


def _mismatch(what: str, out: str, part: str, old: dict, chash: str, inputs: dict,
              settings: dict) -> ValueError:
    """The error for an `out` that holds another run's work, naming what changed where it can."""
    found = old.get("part") or (old.get("summary") or {}).get("part")
    if found and found != part:   # another part's output: starting over here would delete it
        return ValueError(f"{what} {out} holds a trained {found}, not a {part}: use another out for the "
                          f"{part} (starting over there, resume=False or the CLI's --restart, deletes that {found})")
    names = {"data": f"the dataset's contents ({str(old.get('inputs', {}).get('data'))[:12]} -> "
                     f"{inputs['data'][:12]})", **{f"deps.{k}": f"the trained {k}" for k in inputs["deps"]}}
    what_changed = [names[k] for k in changed(old.get("inputs"), inputs)]
    what_changed += _changed_settings(old.get("config"), settings)
    why = "; changed: " + ", ".join(what_changed) if what_changed else ""
    return ValueError(f"{what} {out} was trained with another configuration, data or dependencies "
                      f"(hash {old.get('config_hash')} != {chash}{why}): its {part} is not this run's; "
                      f"use another out, or start over (resume=False; the CLI's --restart)")


def _beyond(out: str, part: str, done: int, max_steps: int) -> ValueError:
    """A finished run or a checkpoint further on than this run's max_steps: not resumable here."""
    return ValueError(f"{out} holds a {part} trained for {done} steps, more than max_steps={max_steps}: "
                      f"use another out or resume=False")


def _read_state(out: str, fix: str | None = None) -> dict | None:
    path = storage.join(out, STATE_FILE)
    if not storage.exists(path):
        return None
    return read_json(path, fix or f"delete it to resume from the checkpoints in {out} (if any), or start "
                                  f"over (resume=False; the CLI's --restart)")


def _write_state(out: str, state: dict) -> None:
    write_json(storage.join(out, STATE_FILE), state)


def _start_over(out: str, names: tuple[str, ...]) -> None:
    for name in names:
        storage.remove(storage.join(out, name), recursive=True)


def _check_out(out: str, data: str, deps: dict[str, str]) -> None:
    """`out` is this run's alone: not the dataset or a dependency, nor inside or around one. A run
    writes its model and state there and starting over deletes them, so a shared directory would
    lose the dataset or the trained dependency (the error used to advise exactly that restart)."""
    inputs = [("the dataset", data)] + [(f"the trained {k} (a dependency)", v) for k, v in sorted(deps.items())]
    for what, uri in inputs:
        if not uri:
            continue
        inside, around = storage.within(out, uri), storage.within(uri, out)
        relation = "is" if inside and around else "is inside" if inside else "contains" if around else None
        if relation:
            raise ValueError(f"out {out} {relation} {what} at {uri}: a run writes its model, state and "
                             f"checkpoints into out and starting over deletes them; give out a directory "
                             f"of its own")


def _require_finished(name: str, uri: str) -> None:
    """A dependency is a finished run of this trainer (a completed train_state.json) or a part saved
    elsewhere (save_pretrained: no train state and no checkpoints; model_code.identity then hashes
    its files). A run that stopped, was preempted or is still going is neither: its directory holds
    an earlier model or none."""
    state = _read_state(uri, fix=f"retrain the {name} there, or pass another")
    if state is not None and state.get("completed"):
        return
    if state is None and not storage.exists(storage.join(uri, "checkpoints")):
        return
    raise ValueError(f"the {name} at {uri} is not a finished training run (checkpoints and no completed "
                     f"{STATE_FILE}: stopped, preempted or still training): finish it (run its training "
                     f"again to resume) or pass a finished {name}")


def _load_deps(spec: PartSpec, deps: dict[str, str] | None) -> dict[str, Any]:
    deps = dict(deps or {})
    missing = [d for d in spec.deps if not deps.get(d)]
    if missing:
        raise ValueError(f"part {spec.name!r} needs trained {', '.join(missing)}: pass deps="
                         + "{" + ", ".join(f"'{d}': URI" for d in spec.deps) + "}")
    unknown = sorted(set(deps) - set(spec.deps) - set(spec.optional_deps))
    if unknown:
        raise ValueError(f"part {spec.name!r} takes deps {list(spec.deps + spec.optional_deps)}, "
                         f"not {unknown}")
    loaded = {}
    for name, uri in deps.items():
        _require_finished(name, uri)
        try:
            loaded[name] = get_part(name).load(uri)
        except Exception as e:  # noqa: BLE001 - say which dependency could not be read
            raise ValueError(f"cannot load the trained {name} from {uri}: {e}") from e
    return loaded


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- the entry point
def train_part(part: str, preset: str | dict, data: str, out: str, deps: dict[str, str] | None = None,
               overrides: dict | None = None, resume: bool = True,
               mlflow: bool = True) -> dict[str, Any]:
    """Train one part on an ingested dataset and save it under `out`; returns the run summary:
    {part, out, steps, max_steps, metrics, first_metrics, mlflow_run_id, preempted, reused,
     resumed_from_step, dataset, dataset_version, samples_seen, seconds}.

    part: tokenizer | dvae | transformer | clip | captioner | prior | decoder | upsampler.
    preset: a preset name, a YAML path or an already loaded config dict; overrides: a dict,
    "a.b=c" strings or a JSON string, merged on top. deps: {part: URI of its trained output}.
    """
    t0 = time.time()
    spec = get_part(part)
    cfg = _config(preset, overrides)
    preset_name = cfg.get("name") or (preset if isinstance(preset, str) else "custom")
    if not storage.exists(storage.join(data, "manifest.parquet")) and not storage.exists(
            storage.join(data, "dataset.json")):
        raise ValueError(f"data {data!r} is not an ingested dataset (no manifest.parquet or dataset.json)")
    _check_out(out, data, dict(deps or {}))   # before anything is read from or written to out
    if not spec.is_network:
        return _train_tokenizer(cfg, preset_name, data, out, resume, mlflow, t0)

    from model_code.train.module import resolve_train_config
    tcfg = resolve_train_config(cfg, part, spec)
    loaded = _load_deps(spec, deps)
    _seed_all(tcfg["seed"])
    model = spec.build(cfg, loaded)
    inputs = input_identity(data, dict(deps or {}))
    chash = config_hash(part, model.config, tcfg, data, dict(deps or {}), inputs)
    settings = run_settings(part, model.config, tcfg, data, deps)

    state = _read_state(out) if resume else None
    if state and state.get("completed"):
        if state.get("config_hash") != chash:
            raise _mismatch("the finished run in", out, part, state, chash, inputs, settings)
        done = int(state["summary"]["steps"])
        if done == tcfg["max_steps"]:
            return {**state["summary"], "reused": True}
        if done > tcfg["max_steps"]:
            raise _beyond(out, part, done, tcfg["max_steps"])
        # a larger max_steps extends the finished run from its final checkpoint
    from model_code.train.callbacks import latest_checkpoint
    ckpt_dir = storage.join(out, "checkpoints")
    latest = latest_checkpoint(ckpt_dir) if resume else None
    if latest and latest.get("config_hash") != chash:
        raise _mismatch("the checkpoint in", ckpt_dir, part, latest, chash, inputs, settings)
    if latest and int(latest["step"]) > tcfg["max_steps"]:   # a preempted run further on than asked
        raise _beyond(out, part, int(latest["step"]), tcfg["max_steps"])
    if not resume:  # start over: nothing of an earlier run in `out` may be taken for this one's
        _start_over(out, RUN_FILES)
    return _fit(spec, cfg, tcfg, preset_name, model, loaded, data, out, dict(deps or {}), chash,
                latest, mlflow, t0, inputs, settings)


def _fit(spec: PartSpec, cfg: dict, tcfg: dict, preset_name: str, model: torch.nn.Module,
         loaded: dict, data: str, out: str, deps: dict[str, str], chash: str, latest: dict | None,
         mlflow: bool, t0: float, inputs: dict, settings: dict) -> dict[str, Any]:
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from model_code.data.loader import make_dataset, make_loader
    from model_code.train import callbacks as cb
    from model_code.train.factory import make_trainer, progress_mode
    from model_code.train.module import PartModule

    dataset = make_dataset(data, caption_policy=spec.caption_policy and tcfg["caption_policy"],
                           seed=tcfg["seed"], synthetic_fraction=tcfg["synthetic_fraction"],
                           synthetic_kind=tcfg["synthetic_kind"], cache=tcfg["data_cache"],
                           image_size=(cfg.get("data") or {}).get("size"), with_scene=spec.with_scene)
    A, B = int(tcfg["accumulate_grad_batches"]), int(tcfg["batch_size"])
    # captions tokenized in the loader's workers (PartSpec.text_len), not between steps
    text = ((loaded["tokenizer"], spec.text_len(model.config, loaded))
            if spec.text_len is not None and "tokenizer" in loaded else None)

    def loader_fn(start_batch: int, start_sample: int, rank: int, world_size: int):
        # one spare micro-batch: max_steps ends the run, never the end of the data, so a run saved
        # at its last step is not marked "end of epoch" and can be extended later
        return make_loader(dataset, B, int(tcfg["max_steps"]) * A + 1, start_batch=start_batch,
                           start_sample=start_sample, rank=rank, world_size=world_size,
                           num_workers=int(tcfg["num_workers"]), pin_memory=torch.cuda.is_available(),
                           text=text)

    ctx = Context(deps=loaded, model_config=model.config, train=tcfg)
    module = PartModule(spec, model, ctx, loader_fn)

    version = dataset.index.version
    logger, run_id = None, latest.get("mlflow_run_id") if latest else None
    if mlflow:
        tags = {"part": spec.name, "preset": preset_name, "dataset": data}
        if version:
            tags["dataset_version"] = version
        if git_revision():
            tags["git_sha"] = git_revision()
        logger = _mlflow_logger(tcfg, spec.name, preset_name, run_id, tags)
        if run_id is None:
            params = {**_flatten({spec.name: model.config}), **_flatten({"train": tcfg}),
                      "data.uri": data, "data.records": len(dataset), "dataset_version": version,
                      "dataset_content_hash": dataset.index.content_hash,
                      **{f"deps.{k}": v for k, v in deps.items()}}
            logger.log_hyperparams(params)
            from model_code.tracking import log_dataset
            log_dataset(logger.run_id, data, "training", version)
        run_id = logger.run_id

    throughput = cb.Throughput(tcfg["log_every"], tcfg["peak_flops"])
    ckpt = cb.ObjectStoreCheckpoint(storage.join(out, "checkpoints"), tcfg["ckpt_every"],
                                    tcfg["keep_checkpoints"], check_every=tcfg["log_every"],
                                    meta=lambda: {"part": spec.name, "config_hash": chash, "inputs": inputs,
                                                  "config": settings, "mlflow_run_id": run_id})
    grids = cb.SampleGrid(tcfg["sample_every"], tcfg["sample_n"], tcfg["seed"],
                          out_dir=None if mlflow else storage.join(out, "samples"))
    # after Throughput: the history row of a log step carries that step's perf/* numbers; before the
    # checkpoint: the row of a checkpoint's step is in the file the checkpoint flushes
    history = cb.History(storage.join(out, "history.csv"), tcfg["log_every"], throughput)
    callbacks = [throughput, history, ckpt, grids]
    if progress_mode(tcfg) == "log":
        callbacks.append(cb.LogLine(spec.name, tcfg["log_every"], throughput))
    trainer = make_trainer(tcfg, callbacks, logger, model=model)

    with tempfile.TemporaryDirectory(prefix="easel-resume-") as tmp:
        ckpt_path = None
        if latest:
            ckpt_path = (storage.get_file(latest["uri"], os.path.join(tmp, latest["file"]))
                         if storage.is_remote(latest["uri"]) else storage.local_path(latest["uri"]))
            print(f"resuming {spec.name} from step {latest['step']} ({latest['uri']})",
                  file=sys.stderr, flush=True)
        try:
            trainer.fit(module, ckpt_path=ckpt_path)
        except SIGTERMException:
            # SIGTERM reached Lightning's own handler during set-up: our callback has written the
            # checkpoint at the first step boundary; anything else is a real failure
            if not ckpt.preempted:
                raise
        except SystemExit as e:
            # Lightning answers Ctrl-C with its own "graceful shutdown" and sys.exit(1), which would
            # read as a failure with no message: it is an interrupt (the CLI says so, exit 130)
            if trainer.interrupted and not ckpt.preempted:
                raise KeyboardInterrupt(f"{spec.name} interrupted at step {trainer.global_step}") from e
            raise

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    metrics.update(throughput.latest)
    summary = {"part": spec.name, "out": out, "steps": int(trainer.global_step),
               "max_steps": int(tcfg["max_steps"]), "metrics": metrics,
               "first_metrics": module.first_metrics, "mlflow_run_id": run_id,
               "tracking_uri": tracking_uri() if mlflow else None,
               "preempted": ckpt.preempted, "reused": False,
               "resumed_from_step": int(latest["step"]) if latest else None,
               "dataset": data, "dataset_version": version, "samples_seen": module.samples_seen,
               "sample_grids": grids.logged, "seconds": round(time.time() - t0, 2)}
    if ckpt.preempted:
        if logger is not None and trainer.is_global_zero:
            logger.experiment.set_terminated(run_id, "KILLED")
        print(f"[{spec.name}] preempted at step {summary['steps']}/{summary['max_steps']}: "
              f"checkpoint written; run the same command again to resume", file=sys.stderr, flush=True)
        raise Preempted(summary)
    if trainer.global_step != tcfg["max_steps"]:
        raise RuntimeError(f"{spec.name}: training ended at step {trainer.global_step}, "
                           f"expected {tcfg['max_steps']}")
    if trainer.is_global_zero:
        _save_final(trainer, module, spec, cfg, loaded, out)
        # only here, after the final checkpoint's check of the weights and the last step's check of
        # the loss (callbacks.ObjectStoreCheckpoint): a diverged run never reads as completed
        _write_state(out, {"completed": True, "config_hash": chash, "inputs": inputs, "summary": summary,
                           "config": settings, "deps": deps})
        if logger is not None:
            client = logger.experiment
            for k, v in metrics.items():
                client.log_metric(run_id, f"final/{k.split('/', 1)[-1]}", v, step=trainer.global_step)
            client.log_dict(run_id, summary, "summary.json")
    return summary


def _save_final(trainer, module, spec: PartSpec, cfg: dict, loaded: dict, out: str) -> None:
    """save_pretrained of the trained weights (the EMA's where the part keeps one)."""
    if type(trainer.strategy).__name__.startswith("FSDP"):
        state = trainer.strategy.lightning_module_state_dict()  # full weights, gathered on rank 0
        fresh = spec.build(cfg, loaded)
        fresh.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        fresh.save_pretrained(out)
        return
    with module.eval_weights() as model:
        model.save_pretrained(out)


# --------------------------------------------------------------------------- the tokenizer
def _train_tokenizer(cfg: dict, preset_name: str, data: str, out: str, resume: bool, mlflow: bool,
                     t0: float) -> dict[str, Any]:
    """The text tokenizer is not a network: a BPE trained once on every caption of the training
    split (original, curated, synthetic short and long) -- DALL-E 1 lowercases and BPE-encodes."""
    from model_code.data.dataset import manifest, read_meta, version_id
    from model_code.text.blend import load_sidecars, tokenizer_texts
    from model_code.text.tokenizer import TextTokenizer

    tok_cfg = cfg.get("tokenizer") or {}
    vocab, max_len = tok_cfg.get("vocab_size"), tok_cfg.get("max_text_tokens")
    if not isinstance(vocab, int) or not isinstance(max_len, int):
        raise ValueError(f"tokenizer.vocab_size and tokenizer.max_text_tokens must be integers in the "
                         f"preset, got {vocab!r} and {max_len!r}")
    inputs = input_identity(data, {})
    chash = hashlib.sha256(json.dumps({"part": "tokenizer", "cfg": tok_cfg, "data": data, "inputs": inputs},
                                      sort_keys=True).encode()).hexdigest()[:16]
    settings = run_settings("tokenizer", tok_cfg, None, data, None)
    state = _read_state(out) if resume else None
    if state and state.get("completed"):
        # as for the networks: another dataset or settings must not silently replace a tokenizer
        # that parts trained on (their token ids would then mean other words)
        if state.get("config_hash") != chash:
            raise _mismatch("the finished run in", out, "tokenizer", state, chash, inputs, settings)
        return {**state["summary"], "reused": True}
    if not resume:
        _start_over(out, TOKENIZER_FILES)

    man = manifest(data)
    if "split" in man.columns:
        man = man[man["split"] == "train"]
    side = load_sidecars(data)
    if side is not None:
        man = man.merge(side[["short", "long"]], left_on="key", right_index=True, how="left")
    records = man.to_dict("records")
    texts = tokenizer_texts(records, has_sidecars=side is not None)
    tok = TextTokenizer.train(texts, vocab_size=vocab, max_len=max_len)
    tok.save(out)
    lengths = np.array([tok.count_tokens(t) + 2 for t in texts])  # + <bos>, <eos>
    version = version_id(read_meta(data))
    metrics = {"vocab_size": float(tok.vocab_size), "texts": float(len(texts)),
               "mean_tokens": float(lengths.mean()), "p95_tokens": float(np.percentile(lengths, 95)),
               "truncated_fraction": float((lengths > max_len).mean())}
    if metrics["truncated_fraction"] > 0.01:
        # every text part reads at most max_len tokens: a cut caption's lost tail (the last objects,
        # the relations) is a fact the image shows and its caption no longer states
        print(f"tokenizer: {metrics['truncated_fraction']:.1%} of the training captions are longer than "
              f"tokenizer.max_text_tokens={max_len} (95th percentile {metrics['p95_tokens']:.0f}, longest "
              f"{lengths.max()}); every text part will cut them", file=sys.stderr)
    run_id = None
    if mlflow:
        _require_mlflow()
        from model_code.tracking import log_run
        tags = {"part": "tokenizer", "preset": preset_name, "dataset": data,
                **({"dataset_version": version} if version else {}),
                **({"git_sha": git_revision()} if git_revision() else {})}
        run_id = log_run((cfg.get("train") or {}).get("mlflow_experiment", "easel-train"), f"tokenizer-{preset_name}",
                         {"tokenizer.vocab_size": vocab, "tokenizer.max_text_tokens": max_len, "data.uri": data,
                          "data.records": len(records), "dataset_version": version},
                         metrics, tags=tags, datasets={data: "training"})
    summary = {"part": "tokenizer", "out": out, "steps": 0, "max_steps": 0, "metrics": metrics,
               "first_metrics": None, "mlflow_run_id": run_id,
               "tracking_uri": tracking_uri() if mlflow else None, "preempted": False,
               "reused": False, "resumed_from_step": None, "dataset": data, "dataset_version": version,
               "samples_seen": len(records), "sample_grids": [], "seconds": round(time.time() - t0, 2)}
    _write_state(out, {"completed": True, "config_hash": chash, "inputs": inputs, "summary": summary,
                       "config": settings})
    return summary
