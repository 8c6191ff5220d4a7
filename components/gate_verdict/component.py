from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def gate_verdict(record: dict) -> str:
    """The gate record's verdict ("passed" | "failed"): what the pipeline's dsl.If promotes on, so
    that a model the gate rejected is reported, not promoted, and the run still finishes."""
    from easel.steps import gate_verdict_step
    return gate_verdict_step(record)
