from kfp import dsl
from kfp.dsl import Metrics, Output

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def gate(registered: dict, evaluation: dict, preset: str, overrides: str, metrics: Output[Metrics],
         gate_config: dict = {}) -> dict:  # noqa: B006 (a KFP default, never mutated)
    """Thresholds and the relative rule against production; the record goes onto the version.
    gate_config (a JSON object: {"gates": {...}, "margin", "tolerance"}) is merged over the preset's gates. Its Metrics artifact: the gated metrics
    and gate.passed (1 or 0)."""
    from easel.steps import gate_step, publish
    record = gate_step(registered, evaluation, preset, overrides, gate_config)
    publish({"metrics": {**(record.get("metrics") or {}), "gate.passed": int(record.get("verdict") == "passed")}},
            metrics)
    return record
