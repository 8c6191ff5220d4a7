"""One place for MLflow setup: which tracking store and registry, where artifacts go, experiments,
the code revision, and quieting the store's noise.

    MLFLOW_TRACKING_URI set   -> that server or store (e.g. http://mlflow.easel:5000 in a cluster);
                                 artifacts go where the server says (proxied to MinIO there)
    unset (embedded default)  -> sqlite:///<EASEL_HOME>/mlflow.db, artifacts in <EASEL_HOME>/mlruns
    EASEL_HOME                -> default ./.easel, made absolute so that every process that
                                 starts in the same directory finds the same store
    MLFLOW_REGISTRY_URI       -> a separate registry store (default: the tracking store)

MLflow itself is imported lazily: the training and generation core must import without it.
"""
from __future__ import annotations

import logging
import os
import subprocess
import warnings

DEFAULT_HOME = ".easel"


# ---------------------------------------------------------------- where things live
def easel_home() -> str:
    """EASEL_HOME (default ./.easel) as an absolute path; not created here."""
    return os.path.abspath(os.environ.get("EASEL_HOME") or DEFAULT_HOME)


def embedded_uri() -> str:
    return f"sqlite:///{os.path.join(easel_home(), 'mlflow.db')}"  # absolute path -> four slashes


def uses_embedded_store() -> bool:
    """True for the local SQLite store under EASEL_HOME. (Not simply "MLFLOW_TRACKING_URI is
    unset": mlflow.set_tracking_uri writes that variable, so after configure() it is set.)"""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    return not env or env == embedded_uri()


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else the embedded SQLite store (its directory is created)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    os.makedirs(easel_home(), exist_ok=True)
    return embedded_uri()


def registry_uri() -> str:
    """MLFLOW_REGISTRY_URI if set, else the tracking store (MLflow's own rule)."""
    return os.environ.get("MLFLOW_REGISTRY_URI") or tracking_uri()


def artifact_location() -> str | None:
    """Where a new experiment keeps its artifacts: <EASEL_HOME>/mlruns with the embedded store,
    `mlruns/` beside the database for any other local SQLite store (MLflow's own default there is
    ./mlruns under whatever directory the process happens to run in); None (the server's
    default) for a tracking server."""
    if uses_embedded_store():
        return "file://" + os.path.join(easel_home(), "mlruns")
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        db = uri[len("sqlite:///"):]
        return "file://" + os.path.join(os.path.dirname(os.path.abspath(db)), "mlruns")
    return None


# ---------------------------------------------------------------- MLflow handles
def configure() -> str:
    """Point the fluent `mlflow.*` API at our stores (idempotent); returns the tracking URI."""
    import mlflow
    quiet()
    uri = tracking_uri()
    # set_tracking_uri also exports MLFLOW_TRACKING_URI (for subprocesses). The registry URI is
    # left to MLflow's own default (the tracking store, or MLFLOW_REGISTRY_URI when a user set
    # it): setting it here would export a stale MLFLOW_REGISTRY_URI when the tracking URI changes.
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        _create_sqlite_store(uri)
    return uri


_CREATED: set[str] = set()   # SQLite stores this process has made sure exist and are migrated


def _create_sqlite_store(uri: str) -> None:
    """Create and migrate a SQLite store under a lock beside the database. MLflow does both on a
    store's first use; two processes doing it at once on a new file (two `easel train` started
    together on a fresh EASEL_HOME) collide in its alembic migration and one dies ("table
    _alembic_tmp_metrics already exists"). Behind the lock the first one migrates, the others
    find the schema current. Once per process and URI."""
    if uri in _CREATED:
        return
    from filelock import FileLock
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    if path in ("", ":memory:"):
        return   # nothing on disk to share
    db = os.path.abspath(path)
    os.makedirs(os.path.dirname(db), exist_ok=True)
    with FileLock(db + ".lock"):
        SqlAlchemyStore(uri, artifact_location())
    _CREATED.add(uri)


def client():
    """An MlflowClient on our tracking store and registry."""
    from mlflow import MlflowClient
    configure()
    return MlflowClient(tracking_uri=tracking_uri(), registry_uri=registry_uri())


def ensure_experiment(name: str) -> str:
    """The id of experiment `name`, created (artifacts under EASEL_HOME with the embedded store)
    if missing. Safe when several processes create it at once."""
    from mlflow.exceptions import MlflowException
    if not name or not isinstance(name, str):
        raise ValueError(f"experiment name must be a non-empty string, got {name!r}")
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_location())
    except MlflowException:  # another process created it between our read and our write
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# ---------------------------------------------------------------- finished runs
def log_run(experiment: str, run_name: str, params: dict | None = None, metrics: dict | None = None,
            tables: dict | None = None, artifacts: str | None = None, tags: dict | None = None,
            datasets: dict[str, str] | None = None, files: dict[str, str] | None = None,
            dicts: dict[str, dict] | None = None) -> str:
    """One finished MLflow run, the one way Easel records a result that is complete when it is
    logged (evaluation, tables, gates, recaption, caption reports, the tokenizer); training
    streams its metrics through Lightning's MLflow logger instead. Client API only: never
    disturbs the caller's active run. params / metrics (non-finite values left out) / tags;
    tables {name: DataFrame}; artifacts: a directory or URI logged whole; files {uri: artifact
    dir}; dicts {name.json: dict}; datasets {uri: context} as the run's dataset inputs. Returns
    the run id; the run is FAILED if any of it could not be logged."""
    import math
    import time
    from mlflow.entities import Metric, Param
    from model_code import storage
    c = client()
    run = c.create_run(ensure_experiment(experiment), run_name=run_name,
                       tags={"easel.git_revision": git_revision() or "",
                             **{k: str(v) for k, v in (tags or {}).items()}})
    rid = run.info.run_id
    status = "FAILED"
    try:
        now = int(time.time() * 1000)
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        ms = [Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()
              if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))]
        for i in range(0, max(len(ps), len(ms)), 100):   # MLflow takes 100 params / 1000 metrics a batch
            c.log_batch(rid, metrics=ms[i:i + 100], params=ps[i:i + 100])
        for uri, context in (datasets or {}).items():
            log_dataset(rid, uri, context)
        for name, table in (tables or {}).items():
            c.log_table(rid, table, name)
        for name, d in (dicts or {}).items():
            c.log_dict(rid, d, name)
        import tempfile
        if artifacts:
            if not storage.is_remote(artifacts):
                c.log_artifacts(rid, storage.local_path(artifacts))
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    c.log_artifacts(rid, storage.get_dir(artifacts, tmp))
        for uri, where in (files or {}).items():
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, uri.rstrip("/").rsplit("/", 1)[-1])
                storage.get_file(uri, local)
                c.log_artifact(rid, local, where or None)
        status = "FINISHED"
    finally:
        c.set_terminated(rid, status=status)
    return rid


# ---------------------------------------------------------------- lineage helpers
def _git(path: str | None, *args: str) -> str | None:
    """stdout of `git -C DIR ARGS` for the checkout holding `path` (a file or directory; default
    this package), or None when git fails or is absent."""
    path = path or os.path.dirname(os.path.abspath(__file__))
    where = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)) or "."
    try:
        out = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_head(path: str | None = None) -> str | None:
    """The commit: EASEL_GIT_SHA (set in images built from CI, where there is no checkout), else
    `git rev-parse HEAD` of the checkout holding `path`; None outside a git checkout. The one place
    Easel asks git for a revision (dataset versions, lineage, run tags)."""
    if os.environ.get("EASEL_GIT_SHA"):
        return os.environ["EASEL_GIT_SHA"]
    out = _git(path, "rev-parse", "HEAD")
    return out.strip() if out and out.strip() else None


def git_dirty(path: str | None = None) -> bool | None:
    """Whether the checkout holding `path` has uncommitted changes to tracked files (None: unknown)."""
    if os.environ.get("EASEL_GIT_SHA"):
        return None
    out = _git(path, "status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


def git_revision(path: str | None = None) -> str | None:
    """The code revision for lineage: git_head, with "-dirty" when the checkout has local changes."""
    head = git_head(path)
    return head + ("-dirty" if head and git_dirty(path) else "") if head else None


def log_dataset(run_id: str, uri: str, context: str, version: str | None = None) -> None:
    """Log an ingested dataset as an input of a run (MLflow's dataset view: name, digest, source,
    profile), not only as a tag. The digest is the dataset's content hash from its dataset.json;
    `version` (the DVC version id) goes into the profile and a tag. A dataset without dataset.json
    is logged by its URI alone."""
    import json
    import posixpath
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from model_code.data.dataset import content_id, read_meta, version_id
    meta = read_meta(uri)
    version = version or version_id(meta)
    digest = str(content_id(meta) or version or uri)[:36]
    profile = {k: meta[k] for k in ("accepted", "quarantined", "duplicates", "records", "size") if k in meta}
    if version:
        profile["version"] = version
    ds = Dataset(name=posixpath.basename(uri.rstrip("/")) or uri, digest=digest,
                 source_type="s3" if uri.startswith("s3://") else "local", source=json.dumps({"uri": uri}),
                 profile=json.dumps(profile) if profile else None)
    tags = [InputTag("mlflow.data.context", context)] + ([InputTag("easel.dataset_version", str(version))]
                                                          if version else [])
    client().log_inputs(run_id, datasets=[DatasetInput(ds, tags=tags)])


def bundle_lineage(parts: dict[str, str], dataset: dict | None = None) -> dict:
    """A bundle's lineage: the dataset version (`dataset`: the data version step's summary), the git
    revision and the MLflow run that trained each part (from the part's train_state.json)."""
    import json
    from model_code import storage
    runs = {}
    for part, uri in parts.items():
        state = storage.join(uri, "train_state.json")
        if storage.exists(state):
            runs[part] = json.loads(storage.read_text(state)).get("summary", {}).get("mlflow_run_id")
    dataset = dataset or {}
    return {"dataset_version": dataset.get("version"), "dataset": dataset.get("dataset"),
            "git_revision": dataset.get("git_rev") or git_head(os.getcwd()),
            "train_run_ids": {k: v for k, v in runs.items() if v}}


# ---------------------------------------------------------------- noise
def quiet() -> None:
    """Silence what the stores print on every use and that users cannot act on: SQLAlchemy's
    SADeprecationWarning on each SQLite open (it also breaks `-W error`), Alembic's migration
    chatter when a store is created, and MLflow's FutureWarnings about its own internals.
    Idempotent (an identical filter replaces itself), so cheap to call on every configure()."""
    warnings.filterwarnings("ignore", message=r".*noload.*loader strategy is deprecated")
    try:
        from sqlalchemy.exc import SADeprecationWarning
        warnings.filterwarnings("ignore", category=SADeprecationWarning)
    except ImportError:
        pass
    # FutureWarnings raised inside MLflow about its own internals (stage deprecation included;
    # registry.py also silences the stage warning where it sets a stage on purpose)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"mlflow(\.|$)")
    for name in ("alembic", "alembic.runtime.migration", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
