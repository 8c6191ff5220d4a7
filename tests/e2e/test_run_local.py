"""The main job end to end: `easel run local` through kfp.local, on a shrunken tiny preset
(fewer images and steps, so CI stays inside its budget; the README's command runs the full
tiny preset). It must end with a registered, gated, promoted and served model and a report."""
import json
import os
import subprocess
import sys

import pytest

SHRINK = ["--set", "data.n=300",
          "--set", "train.steps={dvae: 40, transformer: 40, clip: 40, captioner: 40, prior: 30, decoder: 10, "
                   "upsampler: 10}",
          "--set", "evaluate.n_per_category=2", "--set", "evaluate.samples_per_prompt=2",
          "--set", "evaluate.heldout_images=30",
          # a 40-step captioner's captions are all rejected: regenerating each twice (the preset's
          # max_retries) was a quarter of this test's time; tests/unit/recaption covers retries
          "--set", "recaption.max_retries=0",
          # a few dozen CPU steps cannot meet the tiny preset's real thresholds: gate on what
          # such a model can do, so the test exercises the gate -> promote path
          # (preset gates are deep-merged with this: each of the tiny preset's gates is loosened)
          "--set", "evaluate.gates={clip_score: {min: -1.0, relative: false}, "
                   "dvae.psnr: {min: 0.0, recipes: [dalle]}, pf.invalid: {max: 1.0}}"]


@pytest.mark.e2e
def test_run_local_end_to_end(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "EASEL_HOME": str(out)}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run([sys.executable, "-m", "easel", "run", "local", "--preset", "tiny", "--out", str(out),
                        "--json", *SHRINK], capture_output=True, text=True, env=env, timeout=3000,
                       cwd=tmp_path)  # outside any git checkout, as a new user's directory may be
    if r.returncode != 0:  # the failing task's traceback, not only the pipeline's last words
        err = r.stdout + r.stderr   # kfp.local streams the tasks' logs to stdout
        tb = err.rfind("Traceback (most recent call last)")
        pytest.fail(("..." + err[tb:tb + 6000] + "\n...\n" if tb >= 0 else "") + err[-2000:])
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["gates_passed"] is True
    assert summary["model"] == "easel-dalle" and summary["version"] == "1"
    assert summary["mlflow_uri"].startswith("sqlite:///")
    for recipe in ("dalle", "unclip"):
        rec = summary["recipes"][recipe]
        assert rec["gate"] == "passed"
        assert rec["lineage"]["dataset_version"].startswith("dvc:")
        assert set(rec["lineage"]["train_run_ids"]) >= {"tokenizer", "clip"}
    report = open(summary["report"]).read()
    assert "C2PA verified" in report and "easel-unclip" in report
    assert os.path.exists(out / "served" / "dalle" / "grid.png")

    # what the run prints to serve its promoted model works later, from another directory, in a
    # shell without the run's environment (the registry is under --out, not ./.easel)
    import shlex
    from tests.servers import _process, free_port
    words = shlex.split(summary["serve"]["dalle"])
    assigns = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("-"))
    argv = words[len(assigns):]
    assert argv[:2] == ["easel", "serve"] and assigns == {"EASEL_HOME": str(out)}
    env = {k: v for k, v in os.environ.items() if k not in ("EASEL_HOME", "MLFLOW_TRACKING_URI")}
    env.update(assigns)
    port = free_port()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cmd = [sys.executable, "-m", "easel", *argv[1:], "--host", "127.0.0.1", "--port", str(port)]
    with _process(cmd, str(tmp_path / "serve.log"), env, f"http://127.0.0.1:{port}/v1/models/easel",
                  lambda status: status == 200, timeout=300, name="easel serve", cwd=str(elsewhere)):
        pass
    assert summary["serve"]["dalle"] in report
