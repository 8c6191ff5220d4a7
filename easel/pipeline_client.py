"""Runs on Kubeflow Pipelines: one run (`easel pipeline submit`) or a recurring run on a cron
schedule (`easel pipeline schedule`), through `kfp.Client`.

Building the request and sending it are separate, so that what would be sent is checked without
a cluster:

    req = build_request("lifecycle", {"preset": "small", "deploy": "true"}, cron="0 3 * * *")
    req.package_path, req.arguments   # the compiled YAML and the typed, checked arguments
    send(req, "http://localhost:8080")  # kfp.Client: the run (or recurring run) and its URL

build_request compiles the pipeline named in pipelines.compile.PIPELINES (or takes a compiled
YAML file), reads the parameters the package declares, and checks the arguments against them:
an unknown name, a missing required parameter or a value of the wrong type is a ValueError that
says which. Values given as text (the CLI's KEY=VALUE) are converted to the declared type.

send talks to the KFP API at `host` (e.g. the UI's port-forward, http://localhost:8080). A host
that does not answer gives PipelineHostError with one line saying so, before kfp.Client's own
retries; an answer that refuses the request gives PipelineHostError with the API's reason. An
API token, where the installation needs one, comes from the environment (KF_PIPELINES_TOKEN),
never from an argument.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_EXPERIMENT = "easel"
# charts/easel-platform creates it with the Role the steps need (PyTorchJobs, InferenceServices)
DEFAULT_SERVICE_ACCOUNT = "easel-pipeline-runner"
TOKEN_ENV = "KF_PIPELINES_TOKEN"
HEALTHZ = "/apis/v2beta1/healthz"
_TYPES = {"STRING": "a string", "NUMBER_INTEGER": "an integer", "NUMBER_DOUBLE": "a number",
          "BOOLEAN": "true or false", "LIST": "a JSON list", "STRUCT": "a JSON object"}
_CRON_FIELD = re.compile(r"^[0-9A-Za-z*?/,\-#]+$")
_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


class PipelineHostError(RuntimeError):
    """The Kubeflow Pipelines API did not answer, or refused the request."""


@dataclass
class PipelineRequest:
    """Everything send() passes to kfp.Client."""
    pipeline: str                         # registered name, or the package file's name
    package_path: str                     # the compiled pipeline YAML
    arguments: dict[str, Any]             # checked and typed against the package's parameters
    run_name: str
    experiment: str = DEFAULT_EXPERIMENT
    namespace: str | None = None          # multi-user Kubeflow: the profile namespace
    service_account: str | None = DEFAULT_SERVICE_ACCOUNT
    enable_caching: bool | None = None    # None: the compiled per-step settings; else set in the package
    cron: str | None = None               # set: a recurring run (6-field cron, seconds first)
    max_concurrency: int = 1
    catchup: bool = False
    declared: dict[str, dict] = field(default_factory=dict)
    temporary_dir: str | None = None      # where build_request compiled the package, if it made one

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def discard(self) -> None:
        """Remove the temporary package directory build_request made (nothing else)."""
        if self.temporary_dir:
            shutil.rmtree(self.temporary_dir, ignore_errors=True)
            self.temporary_dir = None


# ---------------------------------------------------------------- the package and its parameters
def declared_parameters(package_path: str) -> dict[str, dict]:
    """{name: {"type": KFP parameter type, "required": bool, "default": value or None}} of a
    compiled pipeline's root inputs. Pipelines with artifact inputs cannot be started from here."""
    import yaml
    try:
        with open(package_path) as f:
            spec = next(iter(yaml.safe_load_all(f)), None) or {}
    except OSError as e:
        raise ValueError(f"pipeline: cannot read {package_path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise ValueError(f"pipeline: {package_path} is not YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(spec, dict) or "root" not in spec or "pipelineInfo" not in spec:
        raise ValueError(f"pipeline: {package_path} is not a compiled KFP pipeline (no pipelineInfo/root)")
    inputs = spec["root"].get("inputDefinitions") or {}
    if inputs.get("artifacts"):
        raise ValueError(f"pipeline: {package_path} takes artifact inputs {sorted(inputs['artifacts'])}; "
                         "only parameters can be given from here")
    out = {}
    for name, p in (inputs.get("parameters") or {}).items():
        out[name] = {"type": p.get("parameterType", "STRING"),
                     "required": not p.get("isOptional", False) and "defaultValue" not in p,
                     "default": p.get("defaultValue")}
    return out


def _convert(name: str, value: Any, kind: str) -> Any:
    """A value of the declared KFP type, from itself or from its text (the CLI's KEY=VALUE)."""
    bad = ValueError(f"parameter {name}: expected {_TYPES.get(kind, kind)}, got {value!r}")
    if kind == "STRING":
        if not isinstance(value, str):
            raise bad
        return value
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.strip().lower() in ("true", "1", "yes")
        raise bad
    if kind == "NUMBER_INTEGER":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        raise bad
    if kind == "NUMBER_DOUBLE":
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad from None
    if kind in ("LIST", "STRUCT"):
        want = list if kind == "LIST" else dict
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise bad from None
        if not isinstance(value, want):
            raise bad
        return value
    raise ValueError(f"parameter {name}: the package declares an unknown type {kind!r}")


def check_arguments(declared: dict[str, dict], arguments: dict[str, Any] | None, pipeline: str) -> dict[str, Any]:
    """The arguments typed as the pipeline declares them; ValueError for an unknown parameter, a
    missing required one, or a value that is not of its type. Unset optional parameters are left
    to the package's defaults."""
    arguments = dict(arguments or {})
    unknown = sorted(set(arguments) - set(declared))
    if unknown:
        raise ValueError(f"pipeline {pipeline}: unknown parameter{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(unknown)} (it takes: {', '.join(sorted(declared)) or 'none'})")
    missing = sorted(n for n, d in declared.items() if d["required"] and n not in arguments)
    if missing:
        raise ValueError(f"pipeline {pipeline}: missing required parameter{'s' if len(missing) > 1 else ''} "
                         + ", ".join(f"{n} ({_TYPES.get(declared[n]['type'], declared[n]['type'])})"
                                     for n in missing))
    typed = {n: _convert(n, v, declared[n]["type"]) for n, v in sorted(arguments.items())}
    for n, v in typed.items():
        try:
            check_value(n, v)
        except ValueError as e:
            said = str(e)
            raise ValueError(f"pipeline {pipeline}: {said if said.startswith(n) else f'{n}: {said}'}") from None
    return typed


def check_value(name: str, value: Any) -> None:
    """The library's own rule for a parameter's value, where one exists (ValueError naming it):
    a run that would fail at its last step (a deploy after hours of training) fails here instead."""
    from model_code.cluster import inferenceservice as isvc
    from model_code.cluster import pytorchjob as pj
    from model_code.config import PRESETS
    from model_code.text.blend import POLICIES
    from easel.lifecycle import RECIPES
    from easel.steps import LAUNCHERS
    choices = {"recipe": tuple(RECIPES), "caption_policy": tuple(p for p in POLICIES if p != "curated"),
               "launcher": LAUNCHERS, "part": pj.TRAIN_PARTS, "preset": PRESETS}
    if name in choices and value not in choices[name]:
        raise ValueError(f"{name} must be one of {', '.join(choices[name])}, got {value!r}")
    if name == "canary_traffic_percent":
        isvc.check_canary(value, "Serverless")
    elif name in ("serving_namespace", "namespace"):
        isvc.check_namespace(value)
    elif name == "service" and value:  # "" = the model's name
        isvc.check_service(value)
    elif name in ("gpus", "serving_gpus"):
        pj.check_int(name, value, 0, 16)
    elif name == "nodes":
        pj.check_int(name, value, 1, 1024)
    elif name == "gpus_per_node":
        pj.check_int(name, value, 1, 16)


def parse_params(items: list[str] | None) -> dict[str, str]:
    """["preset=small", "deploy=true"] -> {"preset": "small", "deploy": "true"} (typed later)."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param expects NAME=VALUE, got {item!r}")
        if key.strip() in out:
            raise ValueError(f"--param {key.strip()} given twice")
        out[key.strip()] = value
    return out


def normalize_cron(expr: str) -> str:
    """A cron expression as Kubeflow's scheduler reads it: six fields, seconds first. A standard
    five-field expression ("0 3 * * *": 03:00 daily) gets seconds 0 in front; the @daily-style
    macros and "@every 1h30m" pass as they are. ValueError for anything else."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError("cron: an expression is required, e.g. '0 3 * * *' (03:00 every day)")
    expr = " ".join(expr.split())
    if expr.startswith("@"):
        every = re.fullmatch(r"@every ((\d+(\.\d+)?(ns|us|ms|s|m|h))+)", expr)
        if every and not any(float(n) > 0 for n in re.findall(r"\d+(?:\.\d+)?", every.group(1))):
            raise ValueError(f"cron: {expr!r} would run without pause (a zero interval)")
        if expr in _CRON_MACROS or every:
            return expr
        raise ValueError(f"cron: unknown macro {expr!r} (use {', '.join(_CRON_MACROS)} or '@every 1h')")
    fields = expr.split(" ")
    if len(fields) not in (5, 6) or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(f"cron: {expr!r} is not a cron expression: 5 fields (minute hour day month weekday) "
                         "or 6 (seconds first)")
    full = fields if len(fields) == 6 else ["0"] + fields
    for value, (what, low, high, names) in zip(full, _CRON_RANGES):
        _check_cron_field(expr, value, what, low, high, names)
    return " ".join(full)


# (field, lowest, highest, names) of the six fields Kubeflow's scheduler (robfig/cron) reads
_CRON_RANGES = (("second", 0, 59, ()), ("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
                ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT",
                                  "NOV", "DEC")),
                ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")))


def _check_cron_field(expr: str, value: str, what: str, low: int, high: int, names: tuple) -> None:
    """A comma list of *, ? (days only), N, N-M, each with an optional /STEP: values in range,
    ranges ascending, steps positive (ValueError naming the field)."""
    def number(tok: str) -> int:
        n = names.index(tok.upper()) + (1 if what == "month" else 0) if tok.upper() in names else \
            int(tok) if tok.isdigit() else None
        if n is None or not low <= n <= high:
            raise ValueError(f"cron: {expr!r}: {what} {tok!r} is not in {low}-{high}")
        return n
    for item in value.split(","):
        base, slash, step = item.partition("/")
        if slash and (not step.isdigit() or int(step) == 0):
            raise ValueError(f"cron: {expr!r}: {what} step {step!r} must be a positive number")
        if base == "*" or (base == "?" and what.startswith("day")):
            continue
        first, dash, last = base.partition("-")
        if dash and number(first) > number(last):
            raise ValueError(f"cron: {expr!r}: {what} range {base!r} runs backwards")
        number(first)


# ---------------------------------------------------------------- building the request
def set_caching(package_path: str, enable: bool, out_path: str) -> str:
    """A copy of the package with caching on or off for every task, those inside conditions and
    loops included (kfp.Client's enable_caching reaches only the top-level tasks)."""
    import yaml
    with open(package_path) as f:
        docs = list(yaml.safe_load_all(f))
    spec = docs[0]
    dags = [spec["root"].get("dag") or {}] + [c.get("dag") or {} for c in (spec.get("components") or {}).values()]
    for dag in dags:
        for task in (dag.get("tasks") or {}).values():
            task.setdefault("cachingOptions", {})["enableCache"] = bool(enable)
    with open(out_path, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)
    return out_path


def build_request(pipeline: str, arguments: dict[str, Any] | None = None, *, package_dir: str | None = None,
                  run_name: str | None = None, experiment: str = DEFAULT_EXPERIMENT,
                  namespace: str | None = None, service_account: str | None = DEFAULT_SERVICE_ACCOUNT,
                  enable_caching: bool | None = None, cron: str | None = None, max_concurrency: int = 1,
                  catchup: bool = False) -> PipelineRequest:
    """What send() would send. pipeline: a name in pipelines.compile.PIPELINES (compiled now into
    package_dir, default a new temporary directory, so the package matches this code and the
    EASEL_IMAGE_* settings) or the path of a compiled .yaml file. cron: a recurring run.
    A temporary directory it makes is the caller's to remove (PipelineRequest.discard)."""
    if not isinstance(pipeline, str) or not pipeline:
        raise ValueError("pipeline: a pipeline name or a compiled .yaml file is required")
    made: list[str] = []

    def workdir() -> str:
        """package_dir, or a temporary directory made on first use (send() callers discard it)."""
        if package_dir:
            os.makedirs(package_dir, exist_ok=True)
            return package_dir
        if not made:
            made.append(tempfile.mkdtemp(prefix="easel-pipeline-"))
        return made[0]

    try:
        if pipeline.endswith((".yaml", ".yml")):
            package, name = pipeline, os.path.splitext(os.path.basename(pipeline))[0]
            if not os.path.isfile(package):
                raise ValueError(f"pipeline: {package} does not exist")
        else:
            from pipelines.compile import PIPELINES, compile_one
            name = pipeline
            if name not in PIPELINES:
                raise ValueError(f"pipeline: no pipeline named {name!r} (known: {', '.join(PIPELINES)})")
            package = compile_one(name, os.path.join(workdir(), f"{name}.yaml"))
        declared = declared_parameters(package)
        if enable_caching is not None:  # a given file stays as it is: the run gets a copy
            package = set_caching(package, enable_caching,
                                  os.path.join(workdir(), f"{name}.{'cached' if enable_caching else 'nocache'}.yaml"))
        request = _checked_request(name, package, declared, arguments, run_name, experiment, namespace,
                                   service_account, enable_caching, cron, max_concurrency, catchup)
    except BaseException:
        for d in made:
            shutil.rmtree(d, ignore_errors=True)
        raise
    request.temporary_dir = made[0] if made else None
    return request


def _checked_request(name, package, declared, arguments, run_name, experiment, namespace, service_account,
                     enable_caching, cron, max_concurrency, catchup) -> PipelineRequest:
    args = check_arguments(declared, arguments, name)
    if not isinstance(experiment, str) or not experiment.strip():
        raise ValueError("experiment: a name is required")
    if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or not 1 <= max_concurrency <= 10:
        raise ValueError(f"max_concurrency must be an integer in [1, 10], got {max_concurrency!r}")
    return PipelineRequest(pipeline=name, package_path=os.path.abspath(package), arguments=args,
                           run_name=run_name or f"easel-{name}", experiment=experiment.strip(),
                           namespace=namespace or None, service_account=service_account or None,
                           enable_caching=enable_caching, cron=normalize_cron(cron) if cron is not None else None,
                           max_concurrency=max_concurrency, catchup=bool(catchup), declared=declared)


# ---------------------------------------------------------------- sending it
def _check_host(host: str) -> str:
    if not isinstance(host, str) or not host.strip():
        raise ValueError("host: the Kubeflow Pipelines URL is required, e.g. http://localhost:8080")
    host = host.strip().rstrip("/")
    parsed = urllib.parse.urlparse(host)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"host: {host!r} is not an http(s):// URL of the Kubeflow Pipelines API or UI")
    return host


def probe(host: str, timeout: float = 10.0) -> None:
    """PipelineHostError unless something answers HTTP at host with a Kubeflow Pipelines health
    endpoint (any status but 404: an auth proxy's 401 or 403 is an answer, and kfp.Client then
    reports what it says; a 404 is another server, e.g. the MLflow port-forward, which kfp.Client
    would retry through pages of tracebacks)."""
    host = _check_host(host)
    try:
        with urllib.request.urlopen(host + HEALTHZ, timeout=timeout):
            return
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise PipelineHostError(f"{host} answers HTTP but is not the Kubeflow Pipelines API ({HEALTHZ}: "
                                    f"404); is it another service's port? (kubectl -n kubeflow "
                                    f"port-forward svc/ml-pipeline-ui 8080:80)") from None
        return
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise PipelineHostError(f"no Kubeflow Pipelines API answers at {host} ({reason}); is the port-forward "
                                "running? (kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80)") from None


def _kfp_error(host: str, e: Exception) -> PipelineHostError:
    status = getattr(e, "status", None)
    if status is not None:
        body = " ".join(str(getattr(e, "body", "") or "").split())[:300]
        return PipelineHostError(f"Kubeflow Pipelines at {host} refused the request: {status} "
                                 f"{getattr(e, 'reason', '')}: {body}".rstrip(": "))
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return PipelineHostError(f"no usable Kubeflow Pipelines API at {host}: {first}")


def package_identity(package_path: str) -> tuple[str, str, str]:
    """(pipeline name, version name, description) of a compiled package as the Kubeflow UI lists
    it: the pipeline's own name (pipelineInfo.name, e.g. easel-lifecycle), a version named by the
    package's content (the same package is the same version; any change, a new one) and the
    pipeline's description."""
    import hashlib
    import yaml
    with open(package_path, "rb") as f:
        raw = f.read()
    info = next(yaml.safe_load_all(raw)).get("pipelineInfo") or {}
    name = info.get("name") or os.path.splitext(os.path.basename(package_path))[0]
    return name, f"{name}-{hashlib.sha256(raw).hexdigest()[:12]}", info.get("description") or ""


def _pipeline_version(client, package_path: str) -> tuple[str, str, str, bool]:
    """Upload the package as a version named by its content, under its pipeline (created first if
    it is not there), unless that version exists already; returns (pipeline_id, version_id,
    version name, uploaded). Creating a pipeline also creates a first version named like the
    pipeline (KFP's own); runs always use the content-named one, so the same package submitted
    again finds it."""
    name, version_name, description = package_identity(package_path)
    pipeline_id = client.get_pipeline_id(name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(package_path, pipeline_name=name,
                                             description=description or None).pipeline_id
    else:
        # kfp.Client.get_pipeline_id's filter form (operation 1: EQUALS)
        flt = json.dumps({"predicates": [{"key": "display_name", "operation": 1, "stringValue": version_name}]})
        found = client.list_pipeline_versions(pipeline_id, page_size=1, filter=flt).pipeline_versions or []
        if found:
            return pipeline_id, found[0].pipeline_version_id, version_name, False
    version = client.upload_pipeline_version(package_path, version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id, version_name, True


def send(request: PipelineRequest, host: str, timeout: float = 10.0) -> dict[str, Any]:
    """Start the run, or create the recurring run, that `request` describes on the KFP at host.
    A run is of an uploaded pipeline version (the package uploaded as the pipeline, or as a new
    version of it when its content changed), so the UI lists it under its pipeline, as it does a
    run of a package a user uploaded by hand.
    Returns {"run_id" | "recurring_run_id", "experiment_id"?, "url", "pipeline", "arguments",
    "pipeline_id"?, "pipeline_version_id"?, "pipeline_version"?, "uploaded"?}.
    kfp.Client's own messages go to stderr (stdout carries the summary)."""
    import kfp
    import urllib3
    from kfp_server_api.exceptions import ApiException
    host = _check_host(host)
    probe(host, timeout)
    summary: dict[str, Any] = {"pipeline": request.pipeline, "arguments": request.arguments, "host": host}
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # kfp.Client's version notice, on every call
        try:
            kwargs = {"namespace": request.namespace} if request.namespace else {}
            client = kfp.Client(host=host, existing_token=os.environ.get(TOKEN_ENV) or None, **kwargs)
            if request.cron:
                exp = client.create_experiment(request.experiment, namespace=request.namespace)
                job = client.create_recurring_run(
                    experiment_id=exp.experiment_id, job_name=request.run_name, cron_expression=request.cron,
                    max_concurrency=request.max_concurrency, no_catchup=not request.catchup,
                    params=request.arguments, pipeline_package_path=request.package_path,
                    enable_caching=request.enable_caching, service_account=request.service_account)
                return {**summary, "recurring_run_id": job.recurring_run_id, "experiment_id": exp.experiment_id,
                        "cron": request.cron, "url": f"{host}/#/recurringrun/details/{job.recurring_run_id}"}
            pipeline_id, version_id, version_name, uploaded = _pipeline_version(client, request.package_path)
            exp = client.create_experiment(request.experiment, namespace=request.namespace)
            # caching is already in the package (build_request set it): a run of an uploaded
            # version takes the version's settings
            run = client.run_pipeline(experiment_id=exp.experiment_id, job_name=request.run_name,
                                      params=request.arguments, pipeline_id=pipeline_id, version_id=version_id,
                                      service_account=request.service_account)
            return {**summary, "run_id": run.run_id, "experiment_id": exp.experiment_id,
                    "pipeline_id": pipeline_id, "pipeline_version_id": version_id,
                    "pipeline_version": version_name, "uploaded": uploaded,
                    "url": f"{host}/#/runs/details/{run.run_id}"}
        except (ApiException, urllib3.exceptions.HTTPError, OSError, TimeoutError) as e:
            raise _kfp_error(host, e) from None
