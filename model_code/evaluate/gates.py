"""Evaluation gates: may this model version be promoted?

Two rules, both from the preset's `evaluate:` section:

    evaluate:
      margin: 0.10                       # relative; a candidate may lose at most 10% to production
      tolerance: 0.0                     # ... or this much in absolute terms, whichever is larger
      gates:
        pf.short.constraint: {min: 0.30}           # absolute floor (higher is better)
        fd_clip: {max: 0.50, margin: 0.25}         # absolute ceiling (lower is better), own margin
        clip_score: {min: 0.05, relative: false}   # threshold only (see below)
        pf.constraint: {better: higher, tolerance: 0.03}   # against production only

1. threshold: every gated metric must be >= its `min` / <= its `max`;
2. relative: where a version is in production, every gated metric may be worse than production's
   by at most max(`margin` x |production value|, `tolerance`), in the metric's direction (min ->
   higher is better, max -> lower is better, or `better:` when a gate has both or neither bound;
   a gate with neither is relative only). The absolute `tolerance` covers the evaluation's own
   sampling noise, which a relative margin cannot when production's value is near zero.

`recipes: [dalle]` applies a gate to those recipes only (dvae.psnr exists for dalle bundles);
the record's inputs must then name the candidate's recipe. `relative: false` keeps a metric out
of rule 2: CLIP score and FD are measured with the bundle's
own CLIP, so two versions that trained different CLIPs are not on one scale; prompt following is
judged by the oracle and always comparable.

A metric missing from the evaluation fails its gate (never silently passes). `gate()` is pure and
returns the record; `run_gate()` also fetches production's metrics from its gate record in the
MLflow registry, logs the record as a run artifact and attaches it to the model version
(registry.record_gate), which is what promotion checks.
"""
from __future__ import annotations

import math
from typing import Any

GATE_EXPERIMENT = "easel-gates"
RULE_KEYS = ("min", "max", "margin", "tolerance", "better", "relative", "recipes")


# ---------------------------------------------------------------- configuration
def gate_config(config: dict | str) -> dict[str, Any]:
    """Normalise a gate configuration: a preset name, a whole preset dict or its `evaluate:`
    section -> {"gates": {metric: {"min"?, "max"?, "better", "margin", "tolerance", "relative",
    "recipes"?}}, "margin": float, "tolerance": float}.
    ValueError names the offending field."""
    if isinstance(config, str):
        from model_code.config import load_preset
        config = load_preset(config)
    if not isinstance(config, dict):
        raise ValueError(f"config: expected a preset name or dict, got {type(config).__name__}")
    ev = config.get("evaluate", config) if "gates" not in config else config
    if not isinstance(ev, dict) or not isinstance(ev.get("gates"), dict) or not ev["gates"]:
        raise ValueError("evaluate.gates: no gates configured (a mapping metric -> {min: x} | {max: y})")
    margin = _number(ev.get("margin", 0.0), "evaluate.margin")
    tolerance = _number(ev.get("tolerance", 0.0), "evaluate.tolerance")
    for k, v in (("margin", margin), ("tolerance", tolerance)):
        if v < 0:
            raise ValueError(f"evaluate.{k}: must be >= 0, got {v}")
    gates = {}
    for metric, rule in ev["gates"].items():
        field = f"evaluate.gates.{metric}"
        if not isinstance(rule, dict):
            raise ValueError(f"{field}: expected a mapping like {{min: 0.5}}, got {rule!r}")
        unknown = sorted(set(rule) - set(RULE_KEYS))
        if unknown:
            raise ValueError(f"{field}: unknown keys {unknown} (allowed: {', '.join(RULE_KEYS)})")
        r: dict[str, Any] = {k: _number(rule[k], f"{field}.{k}") for k in ("min", "max", "margin", "tolerance")
                             if k in rule}
        if "min" in r and "max" in r and r["min"] > r["max"]:
            raise ValueError(f"{field}: min {r['min']} is above max {r['max']}")
        better = rule.get("better")
        if better is None:
            if ("min" in r) == ("max" in r):
                raise ValueError(f"{field}: say `better: higher` or `better: lower` when a gate has "
                                 "both or neither of min and max")
            better = "higher" if "min" in r else "lower"
        if better not in ("higher", "lower"):
            raise ValueError(f"{field}.better: must be 'higher' or 'lower', got {better!r}")
        r["better"] = better
        r["margin"] = r.get("margin", margin)
        r["tolerance"] = r.get("tolerance", tolerance)
        for k in ("margin", "tolerance"):
            if r[k] < 0:
                raise ValueError(f"{field}.{k}: must be >= 0, got {r[k]}")
        r["relative"] = rule.get("relative", True)
        if not isinstance(r["relative"], bool):
            raise ValueError(f"{field}.relative: must be true or false, got {r['relative']!r}")
        if "recipes" in rule:
            rec = rule["recipes"]
            if not isinstance(rec, list) or not rec or not all(isinstance(x, str) for x in rec):
                raise ValueError(f"{field}.recipes: expected a list of recipe names, got {rec!r}")
            r["recipes"] = list(rec)
        gates[str(metric)] = r
    return {"gates": gates, "margin": margin, "tolerance": tolerance}


def with_gate_config(cfg: dict, extra: dict | None) -> dict:
    """A resolved preset with `extra` ({"gates": ..., "margin": ..., "tolerance": ...}, or the same
    under "evaluate") merged over its `evaluate:` section, checked by gate_config (ValueError
    naming the field) before anything is recorded."""
    from model_code.config import deep_merge
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"gate_config: expected a JSON object (a mapping) like {{\"gates\": {{...}}}}, got {extra!r}")
    if extra:
        cfg = deep_merge(cfg, {"evaluate": extra.get("evaluate", extra)})
    gate_config(cfg)
    return cfg


def _number(v: Any, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ValueError(f"{field}: expected a finite number, got {v!r}")
    return float(v)


def _value(metrics: dict | None, name: str) -> float | None:
    v = (metrics or {}).get(name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


# ---------------------------------------------------------------- the verdict
def gate(candidate_metrics: dict, config: dict | str, production_metrics: dict | None = None,
         inputs: dict | None = None) -> dict[str, Any]:
    """Check a candidate's metrics against thresholds and (if given) production's metrics.

    Returns the gate record: {"inputs", "metrics", "thresholds", "margin", "production",
    "checks": [{metric, rule, value, limit, ok, reason}], "verdict": "passed"|"failed",
    "reasons": [...why it failed, or one line saying what passed], "notes": [...]}."""
    if not isinstance(candidate_metrics, dict):
        raise ValueError(f"candidate_metrics: expected a dict, got {type(candidate_metrics).__name__}")
    cfg = gate_config(config)
    recipe = (inputs or {}).get("recipe")
    checks, notes = [], []
    for metric, rule in cfg["gates"].items():
        if "recipes" in rule:
            if recipe is None:
                raise ValueError(f"inputs.recipe: the gate on {metric} applies to {rule['recipes']} only; "
                                 "say which recipe the candidate is")
            if recipe not in rule["recipes"]:
                notes.append(f"{metric}: gate for {', '.join(rule['recipes'])} only, not {recipe}")
                continue
        v = _value(candidate_metrics, metric)
        if v is None:
            checks.append({"metric": metric, "rule": "present", "value": None, "limit": None, "ok": False,
                           "reason": f"{metric} is missing from the evaluation (or not a finite number)"})
            continue
        if "min" in rule:
            ok = v >= rule["min"]
            checks.append({"metric": metric, "rule": "min", "value": v, "limit": rule["min"], "ok": ok,
                           "reason": f"{metric} = {v:.4g} is below the minimum {rule['min']:.4g}"})
        if "max" in rule:
            ok = v <= rule["max"]
            checks.append({"metric": metric, "rule": "max", "value": v, "limit": rule["max"], "ok": ok,
                           "reason": f"{metric} = {v:.4g} is above the maximum {rule['max']:.4g}"})
        p = _value(production_metrics, metric) if production_metrics is not None and rule["relative"] else None
        if production_metrics is not None and rule["relative"] and p is None:
            notes.append(f"production has no {metric}: relative rule not applied to it")
        if p is not None:
            slack = max(rule["margin"] * abs(p), rule["tolerance"])
            if rule["better"] == "higher":
                limit, ok, word = p - slack, v >= p - slack, "below"
            else:
                limit, ok, word = p + slack, v <= p + slack, "above"
            checks.append({"metric": metric, "rule": "vs_production", "value": v, "limit": limit, "ok": ok,
                           "production": p, "reason": f"{metric} = {v:.4g} is {word} production's {p:.4g} "
                                                      f"by more than the margin ({rule['margin']:.0%}, at "
                                                      f"least {rule['tolerance']:.4g}; limit {limit:.4g})"})
        elif "min" not in rule and "max" not in rule:   # a relative-only gate with nothing to compare
            checks.append({"metric": metric, "rule": "present", "value": v, "limit": None, "ok": True,
                           "reason": ""})
    failed = [c for c in checks if not c["ok"]]
    for c in checks:
        if c["ok"]:
            c["reason"] = ""
    n_rel = sum(c["rule"] == "vs_production" for c in checks)
    n_pre = sum(c["rule"] == "present" for c in checks)
    reasons = ([c["reason"] for c in failed] if failed else
               [f"all {len(checks)} checks passed ({len(checks) - n_rel - n_pre} thresholds, "
                f"{n_rel} against production" + (f", {n_pre} present" if n_pre else "") + ")"])
    return {"inputs": inputs or {}, "metrics": {k: v for k, v in candidate_metrics.items()
                                                if _value(candidate_metrics, k) is not None},
            "thresholds": cfg["gates"], "margin": cfg["margin"], "tolerance": cfg["tolerance"],
            "production": ({"metrics": {k: production_metrics[k] for k in cfg["gates"]
                                        if k in production_metrics}} if production_metrics is not None else None),
            "checks": checks, "verdict": "failed" if failed else "passed", "reasons": reasons,
            "notes": notes}


# ---------------------------------------------------------------- against the registry
def production_metrics(name: str, alias: str = "production") -> tuple[str | None, dict | None, list[str]]:
    """(version, metrics from its gate record, notes) of the version `alias` points at."""
    from mlflow.exceptions import MlflowException
    from model_code import tracking
    from model_code.registry import registry
    c = tracking.client()
    try:
        mv = c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None, None, [f"no {alias} version of {name}: relative rule not applied"]
    rec = registry.gate_record(name, mv.version)
    if not rec or not isinstance(rec.get("metrics"), dict):
        return str(mv.version), None, [f"{alias} version {mv.version} has no gate record with metrics: "
                                       "relative rule not applied"]
    return str(mv.version), rec["metrics"], []


def check_gate_target(name: str, version: str | int, config: dict | str) -> str:
    """What run_gate needs before anything is measured: a registered `version` of `name` and a
    configuration with gates (ValueError naming what is wrong). Checked before an evaluation that
    will be gated, so that a typo fails in seconds, not after the evaluation. Returns the version."""
    from model_code.registry import registry
    gate_config(config)
    return registry.registered_version(name, version)


def run_gate(name: str, version: str | int, metrics: dict, config: dict | str,
             inputs: dict | None = None, alias: str = "production") -> dict[str, Any]:
    """Gate a registered version: compare with the version `alias` points at (unless it is this
    one), log the record to MLflow (a run in the easel-gates experiment with gate_record.json)
    and attach it to the model version (registry.record_gate). Returns the record with run_id."""
    from model_code import tracking
    from model_code.registry import registry
    version = check_gate_target(name, version, config)
    registry.check_evaluated_bundle(name, version, (inputs or {}).get("bundle_content"))
    prod_version, prod_metrics, notes = production_metrics(name, alias)
    if prod_version == version:
        prod_metrics, notes = None, [f"version {version} is the {alias} version itself: relative rule not applied"]
    record = gate(metrics, config, prod_metrics, inputs)
    record["notes"] = notes + record["notes"]
    if record["production"] is not None:
        record["production"].update({"name": name, "version": prod_version, "alias": alias})
    record["model"] = {"name": name, "version": version}

    metrics = {"gate.passed": 1.0 if record["verdict"] == "passed" else 0.0,
               **{k: v for k, v in record["metrics"].items() if k in record["thresholds"]}}
    record["run_id"] = tracking.log_run(
        GATE_EXPERIMENT, f"gate {name} v{version}", metrics=metrics, dicts={"gate_record.json": record},
        tags={"easel.model": name, "easel.model_version": version, "easel.gate.verdict": record["verdict"],
              "easel.evaluation_run_id": str((inputs or {}).get("run_id") or "")})
    registry.record_gate(name, version, record)
    return record
