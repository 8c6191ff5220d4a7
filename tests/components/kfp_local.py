"""Run KFP components through `kfp.local` (SubprocessRunner, no venv: the component code runs
in this interpreter's environment, as `easel run local` runs it) and hand back their outputs.

kfp.local runs a lone component call only when every argument is a parameter ("Input
artifacts are not supported"), so each component is wrapped in a one-task pipeline that imports
its artifact inputs with `dsl.importer` (the URI unchanged: a local artifact's path is its URI)
and returns every output of the task. kfp.local runs importers in-process: the component is the
only subprocess. A list of artifacts (a `List[Dataset]` input) becomes a ParallelFor of
importers, collected, as a fan-out's outputs are in the real pipeline.

    outputs = run(ingest, raw=synth_outputs["raw"], preset="tiny", overrides=OV, workdir="")
    outputs["dataset"].path, outputs["Output"]["accepted"]

`run_parallel` runs independent chains of such calls two at a time: each task is a
single-threaded subprocess that spends most of its time importing torch and Lightning, so two
at once use both cores of a CI box.
"""
import inspect
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, NamedTuple

from kfp import dsl, local
from kfp.dsl.types import type_annotations
from kfp.local import pipeline_orchestrator

# The DSL traces a pipeline function inside one process-wide "current pipeline": build one at a
# time. Running the built spec needs no lock.
_BUILDING = threading.Lock()


def init(pipeline_root: str) -> None:
    """The lifecycle's own kfp.local settings (model_code/lifecycle.py)."""
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=pipeline_root,
               raise_on_error=True)


def output_types(component) -> dict[str, Any]:
    """Output name -> Python type: Output[X] parameters, plus the return value as "Output"."""
    sig = inspect.signature(component.python_func)
    outs = {name: type_annotations.get_io_artifact_class(p.annotation)
            for name, p in sig.parameters.items()
            if type_annotations.is_artifact_wrapped_in_Output(p.annotation)}
    if sig.return_annotation not in (inspect.Signature.empty, None):
        outs["Output"] = sig.return_annotation
    return outs


def _constant(value: Any) -> Any:
    """A parameter as a pipeline constant. The compiler refuses None inside a constant (between
    tasks, a step's None arrives as JSON null); the steps read such dicts with .get(), so a key
    that holds None is the same as a missing one."""
    if isinstance(value, dict):
        return {k: _constant(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_constant(v) for v in value]
    return value


def _is_artifacts(value: Any) -> bool:
    return isinstance(value, dsl.Artifact) or (
        isinstance(value, list) and bool(value) and all(isinstance(a, dsl.Artifact) for a in value))


def run(component, **arguments) -> dict[str, Any]:
    """Execute `component` once with `arguments` (artifacts may be Artifact objects from an
    earlier run's outputs); returns {output name: value or Artifact}. Raises RuntimeError when
    the task fails (raise_on_error); its log is on stdout."""
    types = output_types(component)
    Outputs = NamedTuple("Outputs", list(types.items()))

    def one_task():
        args = {}
        for name, value in arguments.items():
            if isinstance(value, list) and _is_artifacts(value):
                with dsl.ParallelFor([a.uri for a in value]) as uri:
                    imported = dsl.importer(artifact_uri=uri, artifact_class=type(value[0]), reimport=False)
                args[name] = dsl.Collected(imported.output)
            elif _is_artifacts(value):
                args[name] = dsl.importer(artifact_uri=value.uri, artifact_class=type(value), reimport=False,
                                          metadata=dict(value.metadata)).output
            else:
                args[name] = _constant(value)
        task = component(**args)
        return Outputs(**{name: task.outputs[name] for name in types})

    one_task.__annotations__["return"] = Outputs  # the pipeline's outputs: every task output
    name = "test-" + re.sub(r"[^a-z0-9-]", "-", component.name.lower())
    with _BUILDING:
        pipeline = dsl.pipeline(name=name)(one_task)
    return dict(pipeline_orchestrator.run_local_pipeline(pipeline_spec=pipeline.pipeline_spec, arguments={}))


def run_parallel(jobs: dict[str, Callable[[], Any]], workers: int = 2) -> dict[str, Any]:
    """Run independent jobs (each a function making one or more `run` calls) `workers` at a
    time; returns {name: result}. The first failure is raised once all have ended."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
    return {name: f.result() for name, f in futures.items()}
