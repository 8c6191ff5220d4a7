"""The MLflow model registry for generation bundles: register, gate, promote, roll back, list.

    v = register_bundle("runs/x/bundle-dalle", "easel-dalle", {"dataset_version": ..., "train_run_ids": {...}})
    record_gate("easel-dalle", v["version"], {"verdict": "passed", "metrics": ..., ...})   # evaluation
    promote("easel-dalle", v["version"], alias="production")   # refused without a passed gate
    rollback("easel-dalle")                                     # production -> the version before
    mlflow.pyfunc.load_model("models:/easel-dalle@production").predict(df)

Tags on every model version (the lineage, see register_bundle):
    easel.recipe  easel.preset  easel.dataset_version  easel.git_revision  easel.train_run_ids (JSON)
    easel.lineage (all of it, JSON)   easel.gate.verdict ("pending" | "passed" | "failed")
    easel.gate.record (JSON: inputs, metrics, thresholds, verdict, reasons)   easel.gate.run_id
    easel.promotion.<alias>  (JSON: who, when, why of the last promotion of this version to <alias>)

Promotion moves the `staging` / `production` aliases (the current MLflow way) and sets the legacy
stage (Staging / Production, others archived) for stage-based UIs. A version is promotable iff its
`easel.gate.verdict` is "passed", unless forced with a reason, which is recorded.

The promotion history is the truth, the aliases follow it. Each promotion or rollback is one
registered-model tag of its own, `easel.promotion.event.<seq>.<time>.<id>` (JSON), so that
concurrent writers never overwrite each other's records (setting one tag is atomic in every
store; a read-modify-write of one JSON list is not). Replaying the events in key order gives
each alias a stack of versions: promote pushes, rollback pops. No lock spans an MLflow server,
so every writer, after writing its event, re-reads and moves the alias (and stage) to what the
replay says, until a read shows nothing left to fix: whichever writer writes last also reads
last, so the final state always agrees with the history, whatever the interleaving.
"""
from __future__ import annotations

import datetime as _dt
import getpass
import json
import logging
import os
import random
import tempfile
import time
import uuid

from model_code import storage, tracking

log = logging.getLogger(__name__)

# Aliases are the promotion mechanism: serving resolves models:/NAME@production, and every
# promotion and rollback moves them. The deprecated stage (MLflow 2.9) is kept only as a mirror:
# the MLflow UI's model list still has a Stage column and older clients resolve
# models:/NAME/Production. Easel never reads it; _settle derives it from the aliases after every
# promote and rollback, so the two cannot disagree.
ALIASES = ("production", "staging")
STAGES = {"production": "Production", "staging": "Staging"}
REGISTRY_EXPERIMENT = "easel-registry"

BUNDLE_CONTENT = "easel.bundle_content"   # generate.bundle_content_id of the registered bundle
GATE_VERDICT, GATE_RECORD, GATE_RUN_ID, GATE_TIME = ("easel.gate.verdict", "easel.gate.record",
                                                     "easel.gate.run_id", "easel.gate.recorded_at")
VERDICTS = ("passed", "failed")
EVENT_PREFIX = "easel.promotion.event."
MAX_REASON = 1000          # registered-model tag values are 5000 chars in SQL stores
SETTLE_ROUNDS = 50


class GateError(PermissionError):
    """Promotion refused: the version has no passed gate record."""


# ---------------------------------------------------------------- small helpers
def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name: a registered model name must be a non-empty string, got {name!r}")
    # MLflow refuses "/" and ":" (they split models:/NAME/VERSION and NAME@ALIAS URIs) only after
    # the bundle was uploaded: refused here, before anything is written
    if any(c in name for c in "'\"\\`/:") or len(name) > 256:
        raise ValueError(f"name: {name!r} must be at most 256 characters without quotes, backslashes, "
                         f"'/' or ':'")
    return name


def _check_version(version) -> str:
    s = str(version).strip()
    if isinstance(version, bool) or not s.isdigit() or int(s) < 1:
        raise ValueError(f"version: must be a positive integer, got {version!r}")
    return str(int(s))


def _check_alias(alias: str) -> str:
    if alias not in ALIASES:
        raise ValueError(f"alias: must be one of {', '.join(ALIASES)}, got {alias!r}")
    return alias


def _user(user: str | None) -> str:
    if user:
        return str(user)
    if os.environ.get("EASEL_USER"):
        return os.environ["EASEL_USER"]
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # containers without a passwd entry
        return "unknown"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _iso_ms(ms: int | None) -> str | None:
    if not ms:
        return None
    return _dt.datetime.fromtimestamp(ms / 1000, _dt.timezone.utc).isoformat(timespec="seconds")


def _is_missing(e: Exception) -> bool:
    return getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "RESOURCE_DOES_NOT_EXIST" in str(e)


def _get_version(c, name: str, version: str):
    from mlflow.exceptions import MlflowException
    try:
        return c.get_model_version(name, version)
    except MlflowException as e:
        if _is_missing(e):
            raise ValueError(f"version: model {name!r} has no version {version}") from None
        raise


def registered_version(name: str, version: str | int) -> str:
    """`version` of registered model `name`, checked to exist (ValueError naming what is missing):
    what a gate will be recorded on, checked before the evaluation it gates is run."""
    _check_name(name)
    version = _check_version(version)
    _get_model(tracking.client(), name)
    _get_version(tracking.client(), name, version)
    return version


def _get_model(c, name: str):
    from mlflow.exceptions import MlflowException
    try:
        return c.get_registered_model(name)
    except MlflowException as e:
        if _is_missing(e):
            raise ValueError(f"name: no registered model {name!r}") from None
        raise


def model_uri(name: str, ref: str | int = "production") -> str:
    """models:/NAME/VERSION for a version number, models:/NAME@ALIAS for an alias."""
    _check_name(name)
    ref = str(ref)
    return f"models:/{name}/{ref}" if ref.isdigit() else f"models:/{name}@{ref}"


# ---------------------------------------------------------------- register
def _pop_first(d: dict, *keys):
    vals = [d.pop(k) for k in keys if k in d]
    return next((v for v in vals if v not in (None, "")), None)


def _lineage_tags(meta: dict, lineage: dict) -> tuple[dict[str, str], dict | None]:
    """Tags of a new version from the bundle's own lineage and the caller's (caller wins).
    Known keys: dataset_version, git_revision (or git), train_run_ids (dict part -> run id, a
    list, or that as a JSON string), recipe and preset (default: the bundle's). A gate record is
    refused: only an evaluation writes one."""
    if lineage is not None and not isinstance(lineage, dict):
        raise ValueError(f"lineage: must be a dict, got {type(lineage).__name__}")
    merged = {**(meta.get("lineage") or {}), **(lineage or {})}
    rest = dict(merged)
    recipe = _pop_first(rest, "recipe") or meta["recipe"]
    if recipe != meta["recipe"]:
        raise ValueError(f"lineage: recipe {recipe!r} does not match the bundle's {meta['recipe']!r}")
    preset = _pop_first(rest, "preset") or meta.get("preset") or "unknown"
    git = _pop_first(rest, "git_revision", "git") or tracking.git_revision() or "unknown"
    dataset = _pop_first(rest, "dataset_version")
    runs = _pop_first(rest, "train_run_ids") or {}
    if isinstance(runs, str):  # from the command line: a JSON object/list, or "id1,id2"
        try:
            runs = json.loads(runs)
        except ValueError:
            runs = [r.strip() for r in runs.split(",") if r.strip()]
    if "gate" in rest:
        # a gate is what an evaluation found (record_gate, the gate step); a bundle.json or a
        # caller's lineage that says "passed" would let a model certify itself
        raise ValueError("lineage: holds a gate record; gates are written by evaluations only (easel evaluate "
                         "--gate-model/--gate-version, or the pipeline's gate step), never at registration")
    if not isinstance(runs, (dict, list, tuple)):
        raise ValueError(f"lineage: train_run_ids must be a dict (part -> run id) or a list, got {runs!r}")
    if dataset is None:
        log.warning("registering a bundle without a dataset version: lineage records 'unknown'")
    full = {**rest, "recipe": recipe, "preset": preset,
            "git_revision": git, "dataset_version": dataset or "unknown", "train_run_ids": runs}
    tags = {"easel.recipe": recipe, "easel.preset": str(preset), "easel.git_revision": str(git),
            "easel.dataset_version": str(dataset or "unknown"),
            "easel.train_run_ids": json.dumps(runs, sort_keys=True),
            "easel.lineage": json.dumps(full, sort_keys=True, default=str),
            "easel.bundle_format": meta.get("format", "")}
    return tags


def register_bundle(bundle_dir: str, name: str, lineage: dict | None = None,
                    run_id: str | None = None) -> dict:
    """Log the bundle (a directory or s3:// prefix) as a pyfunc model and register it as a new
    version of `name`, tagged with its lineage. The model is logged into run `run_id` (e.g. the
    evaluation run), else into a new run of the `easel-registry` experiment.

    Returns {name, version, uri, run_id, model_id, recipe, preset}."""
    from model_code.generate import bundle_content_id, read_bundle_meta
    from model_code.registry.pyfunc import log_bundle_model
    _check_name(name)
    meta = read_bundle_meta(bundle_dir)
    tags = {**_lineage_tags(meta, lineage or {}), BUNDLE_CONTENT: bundle_content_id(bundle_dir)}
    c = tracking.client()
    own_run = run_id is None
    if own_run:
        run_id = c.create_run(tracking.ensure_experiment(REGISTRY_EXPERIMENT), run_name=f"register-{name}",
                              tags=tags).info.run_id
    else:
        c.get_run(run_id)  # a clear error for a wrong run id, before any upload
    status = "FAILED"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = (storage.get_dir(bundle_dir, os.path.join(tmp, "bundle")) if storage.is_remote(bundle_dir)
                     else storage.local_path(bundle_dir))
            info = log_bundle_model(local, run_id, registered_model_name=name, tags=tags,
                                    metadata={"easel_recipe": meta["recipe"], "easel_preset": meta.get("preset", ""),
                                              "easel_bundle_format": meta["format"]})
        status = "FINISHED"
    finally:
        if own_run:
            c.set_terminated(run_id, status)
    version = str(info.registered_model_version)
    # every version says where it stands; "pending" is not promotable
    c.set_model_version_tag(name, version, GATE_VERDICT, "pending")
    _describe(c, name, version)
    log.info("registered %s version %s (%s, run %s)", name, version, meta["recipe"], run_id)
    return {"name": name, "version": version, "uri": model_uri(name, version), "run_id": run_id,
            "model_id": getattr(info, "model_id", None), "recipe": meta["recipe"],
            "preset": meta.get("preset", "")}


# ---------------------------------------------------------------- what the MLflow UI shows
def _run_link(c, run_id: str | None, label: str) -> str:
    """A Markdown link to a run in the MLflow UI (its hash route), or the bare id when unknown."""
    if not run_id:
        return ""
    try:
        exp = c.get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - a run in another store, or deleted: still name it
        return f"{label} (`{run_id}`)"
    return f"[{label}](#/experiments/{exp}/runs/{run_id})"


def version_description(name: str, version: str | int, c=None) -> str:
    """A version's description for the MLflow UI, in Markdown: what it is (recipe, preset, dataset
    version, code revision), the gate's verdict with each gated metric against its limit and
    production's value, and links to its training and evaluation runs. Built from the version's
    tags (the records stay there, as JSON, for programs)."""
    c = c or tracking.client()
    mv = _get_version(c, name, str(version))
    tags = mv.tags or {}
    lineage = json.loads(tags.get("easel.lineage") or "{}")
    lines = [f"**{name} version {mv.version}**: recipe `{tags.get('easel.recipe', '?')}`, preset "
             f"`{tags.get('easel.preset', '?')}`, dataset `{tags.get('easel.dataset_version', 'unknown')}`, "
             f"code `{str(tags.get('easel.git_revision', 'unknown'))[:12]}`.", ""]
    record = json.loads(tags[GATE_RECORD]) if tags.get(GATE_RECORD) else None
    verdict = tags.get(GATE_VERDICT) or "none"
    if record is None:
        lines += [f"**Gate: {verdict}** (not evaluated yet: it cannot be promoted until it passes).", ""]
    else:
        lines += gate_markdown({**record, "verdict": verdict}, name)
    runs = lineage.get("train_run_ids") or {}
    if isinstance(runs, dict) and runs:
        lines.append("Trained in: " + ", ".join(_run_link(c, rid, part) for part, rid in sorted(runs.items())) + ".")
    evaluated = (record or {}).get("run_id") or tags.get(GATE_RUN_ID)
    if evaluated:
        lines.append("Evaluated in: " + _run_link(c, evaluated, "evaluation run") + ".")
    return "\n".join(lines).strip() + "\n"


def gate_markdown(record: dict, name: str) -> list[str]:
    """A gate record as Markdown lines: the verdict with its reasons, each check against its limit
    and production's value, and the production version compared with (the version's description
    in the MLflow UI, and the report of the evaluation that was gated)."""
    lines = [f"**Gate: {record.get('verdict')}**: " + "; ".join(record.get("reasons") or []), ""]
    checks = record.get("checks") or []
    if checks:
        lines += ["| metric | value | rule | limit | production | ok |", "|---|---|---|---|---|---|"]
        fmt = (lambda v: f"{v:.4g}" if isinstance(v, (int, float)) else "-")  # noqa: E731
        for ch in checks:
            lines.append(f"| {ch.get('metric')} | {fmt(ch.get('value'))} | {ch.get('rule')} | "
                         f"{fmt(ch.get('limit'))} | {fmt(ch.get('production'))} | "
                         f"{'yes' if ch.get('ok') else '**no**'} |")
        lines.append("")
    prod = record.get("production") or {}
    if prod.get("version"):
        lines += [f"Compared with {name} version {prod['version']} (@{prod.get('alias', 'production')}).", ""]
    return lines


def _describe(c, name: str, version: str) -> None:
    c.update_model_version(name, version, description=version_description(name, version, c))


# ---------------------------------------------------------------- gate records
def check_evaluated_bundle(name: str, version: str | int, content: str | None) -> None:
    """ValueError unless the evaluated bundle (`content`: generate.bundle_content_id) is the one
    registered as this version: a good bundle's metrics must not pass another version's gate.
    Versions registered before the content was recorded are let through, with a warning."""
    if content is None:
        return
    version = _check_version(version)
    got = _get_version(tracking.client(), name, version).tags.get(BUNDLE_CONTENT)
    if got is None:
        log.warning("%s version %s records no bundle content (registered before it was recorded): "
                    "cannot check that the evaluation is of this version", name, version)
    elif got != content:
        raise ValueError(f"the evaluated bundle is not {name} version {version}: its content differs "
                         f"(evaluated {content[:12]}, registered {got[:12]}); evaluate the bundle that was "
                         f"registered as this version")


def record_gate(name: str, version: str | int, record: dict) -> dict:
    """Attach an evaluation gate record to a version (the evaluation step calls this).

    record: {"verdict": "passed"|"failed", "inputs": ..., "metrics": ..., "thresholds": ...,
             "reasons": [...], "run_id": the evaluation run (optional)}."""
    _check_name(name)
    version = _check_version(version)
    if not isinstance(record, dict):
        raise ValueError(f"record: a gate record must be a dict, got {type(record).__name__}")
    verdict = record.get("verdict")
    if verdict not in VERDICTS:
        raise ValueError(f"record['verdict']: must be 'passed' or 'failed', got {verdict!r}")
    body = json.dumps(record, sort_keys=True, default=str)
    if len(body) > 100_000:  # MLflow's limit for a model-version tag value
        raise ValueError(f"record: {len(body)} characters as JSON, more than a tag holds (100000); "
                         "log large evaluation outputs as run artifacts and reference them")
    c = tracking.client()
    mv = _get_version(c, name, version)
    at = _now()
    # the record first and the verdict last: whoever sees "passed" also sees why
    c.set_model_version_tag(name, version, GATE_RECORD, body)
    c.set_model_version_tag(name, version, GATE_TIME, at)
    if record.get("run_id"):
        c.set_model_version_tag(name, version, GATE_RUN_ID, str(record["run_id"]))
    elif GATE_RUN_ID in (mv.tags or {}):  # the run of an older record no longer applies
        c.delete_model_version_tag(name, version, GATE_RUN_ID)
    c.set_model_version_tag(name, version, GATE_VERDICT, verdict)
    _describe(c, name, version)
    return {"name": name, "version": version, "verdict": verdict, "recorded_at": at,
            "run_id": record.get("run_id")}


def check_gated(name: str, version: str | int, tags: dict | None, allow_ungated: bool = False) -> bool:
    """A version may be served or deployed only with a passed gate on record (the tags
    record_gate writes). Promotion in the MLflow UI (its "Promote model" button, or an alias set
    by hand) skips Easel's gate; this check is where the gate still holds. Returns True when the
    version is gated; False when it is not but `allow_ungated` lets it through (logged as a
    warning: the caller records it in the model's metadata); GateError otherwise."""
    verdict = (tags or {}).get(GATE_VERDICT) or "none"
    if verdict == "passed":
        return True
    if allow_ungated:
        log.warning("%s version %s has no passed gate record (gate: %s): served anyway because "
                    "--allow-ungated was given", name, version, verdict)
        return False
    raise GateError(f"{name} version {version} has no passed gate record in the registry (gate: "
                    f"{verdict}); an alias set in the MLflow UI or by hand skips Easel's gate. Gate "
                    f"it with `easel evaluate` and `easel model promote {name} {version}`, or pass "
                    f"--allow-ungated to serve it anyway (recorded)")


def gate_record(name: str, version: str | int) -> dict | None:
    """The gate record of a version (None when there is none)."""
    mv = _get_version(tracking.client(), _check_name(name), _check_version(version))
    body = mv.tags.get(GATE_RECORD)
    return json.loads(body) if body else None


# ---------------------------------------------------------------- promotion history
def _events(model) -> list[dict]:
    """Every promotion event of a registered model, oldest first."""
    out = []
    for key, value in (model.tags or {}).items():
        if key.startswith(EVENT_PREFIX):
            try:
                e = json.loads(value)
            except ValueError:
                log.warning("ignoring unreadable promotion record %s", key)
                continue
            e["key"] = key
            out.append(e)
    return sorted(out, key=lambda e: (int(e.get("seq", 0)), int(e.get("t_ns", 0)), e["key"]))


def _replay(events: list[dict], alias: str) -> list[str]:
    """The stack of versions that held `alias`, oldest first; the last one holds it now."""
    stack: list[str] = []
    for e in events:
        if e.get("alias") != alias:
            continue
        if e["action"] == "promote":
            if not stack and e.get("previous"):  # the alias was set outside Easel before: keep it
                stack.append(str(e["previous"]))
            if not stack or stack[-1] != e["version"]:
                stack.append(e["version"])
        elif e["action"] == "rollback":
            # a rollback applies only to the state it was made from; a concurrent duplicate
            # (someone else rolled back first) is a no-op
            if len(stack) >= 2 and stack[-1] == e["from"] and stack[-2] == e["version"]:
                stack.pop()
    return stack


def history(name: str, alias: str | None = None) -> list[dict]:
    """The promotion and rollback records of `name` (one alias or all), oldest first."""
    events = _events(_get_model(tracking.client(), _check_name(name)))
    return [e for e in events if alias is None or e.get("alias") == alias]


def _write_event(c, name: str, model, event: dict) -> dict:
    """Store one event under a key of its own; seq orders it after everything we have seen."""
    seq = max((int(e.get("seq", 0)) for e in _events(model)), default=0) + 1
    event = {**event, "seq": seq, "t_ns": time.time_ns(), "id": uuid.uuid4().hex[:12]}
    key = f"{EVENT_PREFIX}{seq:08d}.{event['t_ns']}.{event['id']}"
    c.set_registered_model_tag(name, key, json.dumps(event, sort_keys=True))
    return {**event, "key": key}


def _set_stage(c, name: str, version: str, stage: str) -> None:
    import warnings
    with warnings.catch_warnings():  # stages are deprecated (MLflow 2.9); set on purpose, quietly
        warnings.simplefilter("ignore", FutureWarning)
        c.transition_model_version_stage(name, version, stage,
                                         archive_existing_versions=stage in STAGES.values())


def _settle(c, name: str, alias: str) -> str | None:
    """Move every alias and the legacy stages to what the history says; repeat until a fresh
    read needs no write. Returns the version holding `alias`.

    All aliases at once, not just the one this writer touched: the legacy stage is one field per
    version shared by both aliases (a version that gains production while another writer is
    marking it Staging), so a writer that settled only its own alias could leave the other
    alias's stage wrong with nobody left to fix it (the flaky 8-writer test). Settling
    everything means the last writer's last read always checks the whole state."""
    for attempt in range(SETTLE_ROUNDS):
        model = c.get_registered_model(name)
        events = _events(model)
        targets = {}
        for a in ALIASES:
            stack = _replay(events, a)
            targets[a] = stack[-1] if stack else None
        wrote, lost_race = False, False
        for a, target in targets.items():
            actual = model.aliases.get(a)
            if target is None or str(actual) == target:
                continue   # never promoted through Easel: left as it is
            try:
                c.set_registered_model_alias(name, a, target)
                wrote = True
            except Exception as e:  # noqa: BLE001 - narrowed below
                # another writer set the same alias at the same moment (the store's unique
                # constraint): a lost race, not an error; re-read and settle again
                if "UNIQUE constraint" not in str(e) and "IntegrityError" not in str(e):
                    raise
                lost_race = True
        if lost_race:
            time.sleep(random.uniform(0.01, 0.1))
            continue
        # the legacy stage follows the aliases; production wins when one version holds both
        want = {}
        if targets["staging"] is not None:
            want[targets["staging"]] = STAGES["staging"]
        if targets["production"] is not None:
            want[targets["production"]] = STAGES["production"]
        for version, stage in sorted(want.items(), key=lambda kv: kv[1] == STAGES["production"]):
            if c.get_model_version(name, version).current_stage != stage:
                _set_stage(c, name, version, stage)
                wrote = True
        # two concurrent transitions that each archive "the others" can both miss each other,
        # leaving a second version in Production/Staging: archive every version the aliases
        # do not account for (only versions Easel's history has promoted)
        if want:
            promoted = {e.get("version") for e in events} | {e.get("from") for e in events}
            for mv in c.search_model_versions(f"name = '{name}'"):
                v = str(mv.version)
                if v in promoted and v not in want and mv.current_stage in STAGES.values():
                    _set_stage(c, name, v, "Archived")
                    wrote = True
        if not wrote:
            return targets[alias] if targets[alias] is not None else (
                None if model.aliases.get(alias) is None else str(model.aliases[alias]))
        time.sleep(random.uniform(0.0, 0.05) * min(attempt + 1, 5))  # de-synchronise writers
    raise RuntimeError(f"the {alias} alias of {name} did not settle after {SETTLE_ROUNDS} rounds "
                       "of concurrent promotions; run the promotion again")


# ---------------------------------------------------------------- promote / rollback
def promote(name: str, version: str | int, alias: str = "production", force: bool = False,
            reason: str | None = None, user: str | None = None) -> dict:
    """Point `alias` at `version` (and set its legacy stage), recording who, when and why.

    Refused (GateError) unless the version's gate verdict is "passed", or force=True with a
    reason. Promoting the version that already holds the alias changes nothing (idempotent).
    Returns {name, version, alias, previous, changed, forced, gate, reason, user, time, current}
    where `current` is the version holding the alias afterwards (a concurrent promotion that
    came later may have won)."""
    _check_name(name)
    version, alias = _check_version(version), _check_alias(alias)
    reason = (reason or "").strip() or None
    if reason and len(reason) > MAX_REASON:
        raise ValueError(f"reason: at most {MAX_REASON} characters, got {len(reason)}")
    c = tracking.client()
    mv = _get_version(c, name, version)
    if mv.status != "READY":
        raise ValueError(f"version: {name} version {version} is {mv.status}, not READY")
    verdict = mv.tags.get(GATE_VERDICT) or "none"
    forced = verdict != "passed"
    if forced and not force:
        raise GateError(f"{name} version {version} has no passed gate record (gate: {verdict}); "
                        f"evaluate it first, or promote with --force --reason TEXT")
    if forced and not reason:
        raise ValueError("reason: forcing a promotion past the gate needs a reason (--reason TEXT)")
    who, at = _user(user), _now()
    model = c.get_registered_model(name)
    stack = _replay(_events(model), alias)
    previous = stack[-1] if stack else (str(model.aliases[alias]) if alias in model.aliases else None)
    changed = previous != version
    event = None
    if changed:
        event = _write_event(c, name, model, {"action": "promote", "alias": alias, "version": version,
                                              "previous": previous, "user": who, "time": at,
                                              "reason": reason, "forced": forced, "gate": verdict})
        c.set_model_version_tag(name, version, f"easel.promotion.{alias}",
                                json.dumps({"user": who, "time": at, "reason": reason, "forced": forced,
                                            "previous": previous}, sort_keys=True))
    current = _settle(c, name, alias)
    log.info("%s %s@%s -> version %s (was %s)%s", "promoted" if changed else "unchanged", name, alias,
             version, previous, " FORCED: " + reason if forced else "")
    return {"name": name, "version": version, "alias": alias, "previous": previous, "changed": changed,
            "forced": forced, "gate": verdict, "reason": reason, "user": who, "time": at,
            "current": current, "event": event["key"] if event else None}


def rollback(name: str, alias: str = "production", reason: str | None = None,
             user: str | None = None) -> dict:
    """Return `alias` to the version that held it before the current one (from the promotion
    history). Rolling back again goes one further back. Returns the same keys as promote()."""
    _check_name(name)
    alias = _check_alias(alias)
    reason = (reason or "").strip() or None
    if reason and len(reason) > MAX_REASON:
        raise ValueError(f"reason: at most {MAX_REASON} characters, got {len(reason)}")
    c = tracking.client()
    model = _get_model(c, name)
    stack = _replay(_events(model), alias)
    if len(stack) < 2:
        raise ValueError(f"nothing to roll back to: the {alias} alias of {name} has no earlier "
                         f"version in its promotion history ({' -> '.join(stack) or 'never promoted'})")
    current, target = stack[-1], stack[-2]
    who, at = _user(user), _now()
    event = _write_event(c, name, model, {"action": "rollback", "alias": alias, "version": target,
                                          "from": current, "user": who, "time": at, "reason": reason})
    c.set_model_version_tag(name, target, f"easel.promotion.{alias}",
                            json.dumps({"user": who, "time": at, "reason": reason, "rollback_from": current},
                                       sort_keys=True))
    holder = _settle(c, name, alias)
    log.info("rolled back %s@%s: version %s -> %s", name, alias, current, target)
    return {"name": name, "version": target, "alias": alias, "previous": current, "changed": True,
            "forced": False, "gate": _get_version(c, name, target).tags.get(GATE_VERDICT) or "none",
            "reason": reason, "user": who, "time": at, "current": holder, "event": event["key"]}


# ---------------------------------------------------------------- reading
def list_versions(name: str) -> list[dict]:
    """Every version of `name`, oldest first: version, aliases, stage, status, created, run_id,
    gate (verdict), recipe, tags."""
    _check_name(name)
    c = tracking.client()
    model = _get_model(c, name)
    by_version: dict[str, list[str]] = {}
    for a, v in model.aliases.items():
        by_version.setdefault(str(v), []).append(a)
    versions, token = [], None
    while True:
        page = c.search_model_versions(f"name = '{name}'", page_token=token)
        versions += list(page)
        token = page.token
        if not token:
            break
    out = []
    for mv in sorted(versions, key=lambda m: int(m.version)):
        out.append({"version": str(mv.version), "aliases": sorted(by_version.get(str(mv.version), [])),
                    "stage": mv.current_stage, "status": mv.status, "created": _iso_ms(mv.creation_timestamp),
                    "run_id": mv.run_id, "gate": mv.tags.get(GATE_VERDICT) or "none",
                    "recipe": mv.tags.get("easel.recipe"), "tags": dict(mv.tags)})
    return out


def load_by_alias(name: str, alias: str = "production"):
    """The pyfunc model that `alias` (or a version number) of `name` points at."""
    import mlflow.pyfunc
    tracking.configure()
    return mlflow.pyfunc.load_model(model_uri(name, alias))


def load_generator(name: str, ref: str | int = "production"):
    """The model_code.generate.Generator inside a registered version (for servers that want
    PIL images and the sampling knobs rather than the pyfunc's DataFrame)."""
    return load_by_alias(name, ref).unwrap_python_model().generator
