"""Every pipeline compiles, the committed YAML is current, and cluster settings compile in."""
import os

import yaml

from pipelines.compile import PIPELINES, compile_all

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def test_committed_yaml_is_current(tmp_path, monkeypatch):
    for var in ("EASEL_IMAGE_REGISTRY", "EASEL_IMAGE_TAG", "EASEL_RELEASE", "EASEL_GPU_ACCELERATOR"):
        monkeypatch.delenv(var, raising=False)
    fresh = compile_all(str(tmp_path))
    for path in fresh:
        committed = os.path.join(ROOT, "pipelines", "compiled", os.path.basename(path))
        assert os.path.exists(committed), f"{committed} missing: run `easel pipeline compile`"
        with open(path) as a, open(committed) as b:
            assert a.read() == b.read(), f"{committed} is stale: run `easel pipeline compile`"


def test_lifecycle_requests_gpus_secrets_and_fans_out():
    with open(os.path.join(ROOT, "pipelines", "compiled", "lifecycle.yaml")) as f:
        docs = list(yaml.safe_load_all(f))
    spec, platform = docs[0], docs[1]
    text = yaml.safe_dump(spec)
    assert "nvidia.com/gpu" in text
    assert "parallelFor" in text or "iteratorPolicy" in text or "artifactIterator" in text or "parameterIterator" in text
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    train = executors["exec-train-transformer"]
    assert train["secretAsEnv"][0]["secretName"] == "easel-s3"
    assert train["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert any(v["mountPath"] == "/dev/shm" for v in train["emptyDirMounts"])
    # credentials never travel as pipeline parameters
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not any("secret" in p.lower() or "key" in p.lower() for p in params)


def test_every_pipeline_registered():
    assert set(PIPELINES) >= {"lifecycle", "data", "evaluate-promote"}
