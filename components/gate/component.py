from kfp import dsl

from components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def gate(registered: dict, evaluation: dict, preset: str, overrides: str, gate_config: str = "") -> dict:
    """Thresholds and the relative rule against production; the record goes onto the version.
    gate_config (JSON) is merged over the preset's gates."""
    from easel.steps import gate_step
    return gate_step(registered, evaluation, preset, overrides, gate_config)
