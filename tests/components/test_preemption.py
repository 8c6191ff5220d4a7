"""A preempted KFP training step (kfp.local, the lifecycle's runner): the task FAILS (the step
exits 143, train.run.Preempted), so no later step can consume the partial model, and running the
step again resumes from its checkpoint and finishes. On a cluster the retry is KFP's
(`set_retry` on GPU steps: tests/unit/faces/test_pipelines.py)."""
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.unit.data.test_loader import shapes_data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 40
OVERRIDES = json.dumps({
    "dvae": {"n_hid": 16, "codebook_size": 32, "n_blk_per_group": 1, "n_init": 16},
    "train": {"steps": {"dvae": STEPS}, "batch_size": 8, "log_every": 1, "ckpt_every": 1000,
              "progress": "log", "num_workers": 0}})
SCRIPT = """
import json, sys
from kfp import dsl
from components.train_dvae.component import train_dvae
from tests.components.kfp_local import init, run
init(sys.argv[1])
out = run(train_dvae, dataset=dsl.Dataset(name="dataset", uri=sys.argv[2], metadata={}), preset="tiny",
          overrides=sys.argv[3], caption_policy="", name="dvae", workdir=sys.argv[4])
print("SUMMARY " + json.dumps(out["Output"]), flush=True)
"""


def _command(tmp_path, data):
    return [sys.executable, "-c", SCRIPT, str(tmp_path / "kfp"), data, OVERRIDES, str(tmp_path / "work")]


@pytest.mark.timeout(600)
def test_a_preempted_step_fails_the_task_and_the_rerun_resumes(tmp_path_factory, tmp_path):
    data = shapes_data(tmp_path_factory.getbasetemp())
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "EASEL_HOME": str(tmp_path / "home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    run = subprocess.Popen(_command(tmp_path, data), cwd=tmp_path, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen, stopped_at, deadline = [], None, time.time() + 400
    for line in run.stdout:   # once training is under way, the node is "preempted"
        seen.append(line)
        if "[dvae] step 3/" in line and stopped_at is None:
            steps = [p for p in psutil.Process(run.pid).children(recursive=True)
                     if "executor_main" in " ".join(p.cmdline())]
            assert steps, "".join(seen[-30:])
            for p in steps:
                p.send_signal(signal.SIGTERM)
            stopped_at = time.time()
        assert time.time() < deadline, "".join(seen[-30:])
    run.wait(timeout=120)
    log = "".join(seen)
    assert stopped_at is not None, log[-3000:]
    assert run.returncode != 0, log[-3000:]                 # the task failed: never a success
    assert "FAILURE" in log and "SUMMARY" not in log, log[-3000:]
    ckpt = tmp_path / "work" / "dvae" / "checkpoints" / "latest.json"
    latest = json.load(open(ckpt))
    assert latest["reason"] == "sigterm" and 3 <= latest["step"] < STEPS
    assert not (tmp_path / "work" / "dvae" / "model.safetensors").exists()   # no model to consume

    again = subprocess.run(_command(tmp_path, data), cwd=tmp_path, env=env, text=True, capture_output=True,
                           timeout=400)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    summary = json.loads(next(ln for ln in again.stdout.splitlines() if ln.startswith("SUMMARY "))[8:])
    assert summary["resumed_from_step"] == latest["step"] and summary["steps"] == STEPS
    assert (tmp_path / "work" / "dvae" / "model.safetensors").exists()
