"""The core library never imports its faces: `model_code` imports nothing from the `easel` glue
(CLI, steps, local lifecycle, pipeline client), `pipelines/` or `components/`, not even lazily
inside a function. The faces import the core, never the other way round."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
FACES = ("easel", "pipelines", "components")


def imported_modules(path: str) -> list[tuple[int, str]]:
    """(line, module) for every import in a file, at any depth, including
    importlib.import_module("...") / __import__("...") with a literal name."""
    tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def core_files() -> list[str]:
    out = []
    for base, _, files in os.walk(os.path.join(ROOT, "model_code")):
        out += [os.path.join(base, f) for f in files if f.endswith(".py")]
    return sorted(out)


def test_the_core_never_imports_a_face():
    files = core_files()
    assert len(files) > 30, "model_code not found"
    bad = [f"{os.path.relpath(f, ROOT)}:{line} imports {mod}"
           for f in files for line, mod in imported_modules(f) if mod.split(".")[0] in FACES]
    assert not bad, "the core imports a face:\n" + "\n".join(bad)


@pytest.mark.parametrize("snippet", ["import pipelines.compile", "from easel import steps",
                                     "def f():\n    from components.images import GPU_IMAGE",
                                     "import importlib\nimportlib.import_module('easel.cli')"])
def test_the_check_sees_every_kind_of_import(tmp_path, snippet):
    f = tmp_path / "m.py"
    f.write_text(snippet + "\n")
    assert any(m.split(".")[0] in FACES for _, m in imported_modules(str(f)))
