"""The embedded MLflow store under concurrent first use."""
import subprocess
import sys

# Each process creates the store (MLflow migrates a new SQLite file on first use) and an experiment.
_CHILD = ("from model_code import tracking; "
          "print(tracking.ensure_experiment('easel-concurrent'))")


def test_processes_sharing_a_new_sqlite_store_all_start(tmp_path, monkeypatch):
    # two `easel train ...` started together on a fresh EASEL_HOME: without the lock around the
    # store's creation both run MLflow's alembic migration and one fails ("table
    # _alembic_tmp_metrics already exists" / "Online migration expected to match one row")
    monkeypatch.setenv("EASEL_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    ids = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(ids) == 1, ids   # one experiment, the same id everywhere
