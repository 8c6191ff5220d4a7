"""The step layer (model_code/steps.py): summaries must be values KFP can hand to the next task."""
import numpy as np

from model_code.data.synth import synthesize
from easel.steps import kfp_value, version_step


def _has_none(v) -> bool:
    if v is None:
        return True
    if isinstance(v, dict):
        return any(_has_none(x) for x in v.values())
    if isinstance(v, list):
        return any(_has_none(x) for x in v)
    return False


def test_kfp_value_leaves_out_unknowns_and_plain_types():
    v = kfp_value({"a": None, "b": {"c": None, "d": (1, None, np.float32(0.5))}, "e": np.int64(3)})
    assert v == {"b": {"d": [1, 0.5]}, "e": 3}
    assert type(v["e"]) is int and type(v["b"]["d"][1]) is float


def test_version_outside_a_git_checkout_is_passable(tmp_path, monkeypatch):
    """A user running the main job outside a git checkout: the version has no git revision,
    and its summary must still be a valid KFP input for the bundle step (it once held None)."""
    monkeypatch.chdir(tmp_path)
    synthesize(str(tmp_path / "raw"), n=6, size=32, seed=0)
    s = version_step(str(tmp_path / "raw"))
    assert s["version"] and not _has_none(s)
