"""Preemption: a training process (`easel train`) that gets SIGTERM part-way writes a checkpoint
and exits 143 (never 0); the same command run again resumes at the same step and data position, and ends with
exactly the weights (an EMA's) of a run that was never interrupted (same seed). And the same machinery
with the data, the checkpoints and the model in an S3 object store."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from model_code.config import parse_overrides
from tests.unit.data.test_loader import shapes_data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 12
SETTINGS = [  # a small real dVAE; the paper's schedules squeezed into the run
    "dvae.n_hid=16", "dvae.codebook_size=32", "dvae.n_blk_per_group=1", "dvae.n_init=16",
    "dvae.beta_warmup_steps=10", "dvae.tau_anneal_steps=12",
    f"train.steps.dvae={STEPS}", "train.batch_size=8", "train.log_every=1", "train.ckpt_every=1000",
    "train.progress=log", "train.num_workers=0", "train.seed=3",
    "train.dvae.ema_decay=0.9",   # the EMA (diffusers' EMAModel) is checkpointed and resumed too
]


def command(data: str, out: str) -> list[str]:
    """`easel train` (the CLI a PyTorchJob pod and a user run), with its JSON summary."""
    cmd = [sys.executable, "-m", "easel.cli", "train", "dvae", "--preset", "tiny", "--data", data,
           "--out", out, "--json"]
    for s in SETTINGS:
        cmd += ["--set", s]
    return cmd


def env(home: str) -> dict:
    # one thread: the same arithmetic in every process (and no fight for the 2 cores); MLflow in
    # a store of the test's own
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": ROOT,
            "EASEL_HOME": home, "MLFLOW_TRACKING_URI": f"sqlite:///{home}/mlflow.db"}


def summary_of(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.timeout(300)
def test_sigterm_checkpoints_and_the_same_command_resumes_exactly(tmp_path_factory, tmp_path):
    from model_code.train.run import train_part
    data = shapes_data(tmp_path_factory.getbasetemp())
    ref_out, out = str(tmp_path / "uninterrupted"), str(tmp_path / "preempted")
    home = str(tmp_path / "home")
    os.makedirs(home)
    run = subprocess.Popen(command(data, out), cwd=tmp_path, env=env(home), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # meanwhile, the uninterrupted reference: the same settings in this process, on one thread
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = train_part("dvae", "tiny", data=data, out=ref_out, overrides=parse_overrides(SETTINGS),
                               mlflow=False)
    finally:
        torch.set_num_threads(n)
    seen = []
    deadline = time.time() + 240
    for line in run.stderr:  # wait until training is under way, then preempt it
        seen.append(line)
        if "[dvae] step 3/" in line:
            run.send_signal(signal.SIGTERM)
            break
        assert time.time() < deadline, "".join(seen[-20:])
    rest, err = run.communicate(timeout=240)
    # 128 + SIGTERM: preempted, checkpointed -- never 0, so no job or pipeline counts it a success
    assert run.returncode == 143, "".join(seen[-20:]) + err
    assert "preempted (SIGTERM)" in err and "run the same command again" in err
    stopped = summary_of(rest)
    assert stopped["preempted"] and 3 <= stopped["steps"] < STEPS
    latest = json.load(open(os.path.join(out, "checkpoints", "latest.json")))
    assert latest["reason"] == "sigterm" and latest["step"] == stopped["steps"]
    assert latest["samples_seen"] == stopped["steps"] * 8
    assert not os.path.exists(os.path.join(out, "model.safetensors"))  # no final model yet

    again = subprocess.run(command(data, out), cwd=tmp_path, env=env(home), text=True,
                           capture_output=True, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = summary_of(again.stdout)
    assert resumed["resumed_from_step"] == stopped["steps"] and resumed["steps"] == STEPS
    assert f"resuming dvae from step {stopped['steps']}" in again.stderr

    assert reference["steps"] == STEPS and reference["samples_seen"] == resumed["samples_seen"]
    a = load_file(os.path.join(ref_out, "model.safetensors"))
    b = load_file(os.path.join(out, "model.safetensors"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed weights differ from the uninterrupted run's: {differ[:5]}"
    assert reference["metrics"]["train/loss"] == resumed["metrics"]["train/loss"]
    # the curve beside the model (history.csv) is the uninterrupted run's: every step once, the
    # rows before the kill kept, none written past the checkpoint repeated
    ref_rows, rows = _history(ref_out), _history(out)
    assert [r["step"] for r in rows] == [str(i) for i in range(1, STEPS + 1)]
    assert [r["train/loss"] for r in rows] == [r["train/loss"] for r in ref_rows]


def _history(out: str) -> list[dict]:
    import csv
    with open(os.path.join(out, "history.csv")) as f:
        return list(csv.DictReader(f))


def test_data_checkpoints_and_model_live_in_s3(s3_env, tmp_path_factory, tmp_path, monkeypatch):
    """The same run against the object store (SeaweedFS standing in for MinIO): shards streamed
    from s3:// into the local cache, checkpoints and the final model written to s3://, and a
    second call resuming from the checkpoint it finds there."""
    import uuid

    from model_code import storage
    from model_code.models.dvae import DVAE
    from model_code.config import parse_overrides
    from model_code.train.run import train_part
    prefix = f"{s3_env.bucket('easel-train-test')}/{uuid.uuid4().hex[:8]}"
    storage.put_dir(shapes_data(tmp_path_factory.getbasetemp()), f"{prefix}/data")
    monkeypatch.setenv("EASEL_DATA_CACHE", str(tmp_path / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        over = [s for s in SETTINGS if not s.startswith("train.steps")] + [
            "train.steps.dvae=6", "train.ckpt_every=3", "train.log_every=3"]
        s = train_part("dvae", "tiny", data=f"{prefix}/data", out=f"{prefix}/dvae",
                       overrides=parse_overrides(over), mlflow=False)
        assert s["steps"] == 6 and storage.exists(f"{prefix}/dvae/model.safetensors")
        assert [u.rsplit("/", 1)[1] for u in storage.ls(f"{prefix}/dvae/checkpoints")] == [
            "latest.json", "step-00000003.ckpt", "step-00000006.ckpt"]
        assert len(os.listdir(tmp_path / "cache")) == len(storage.ls(f"{prefix}/data/shards"))
        more = train_part("dvae", "tiny", data=f"{prefix}/data", out=f"{prefix}/dvae",
                          overrides=parse_overrides([*over, "train.steps.dvae=8"]), mlflow=False)
        assert more["resumed_from_step"] == 6 and more["steps"] == 8
        assert DVAE.from_pretrained(f"{prefix}/dvae").config["n_hid"] == 16
        history = storage.read_text(f"{prefix}/dvae/history.csv").splitlines()
        assert history[0].startswith("step,") and [r.split(",")[0] for r in history[1:]] == ["3", "6", "8"]
    finally:
        torch.set_num_threads(n)
