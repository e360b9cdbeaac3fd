"""The layers of the code, read from its import statements (every one, also those inside functions).

config is the ground; the engine's layers are runs < train < orchestration; presets stand on
the engine; the facade `cifartui.engine.api` stands on all of the engine; the app and the
command line on top. A module may import its own layer and the ones below, never one above,
and no two modules import each other by any path. The app reaches the engine only through
the facade.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "cifartui"

# A layer, and the layers it may import besides itself.
ALLOWED = {
    "cifartui.config": set(),
    "cifartui.engine.runs": {"cifartui.config"},
    "cifartui.engine.train": {"cifartui.config", "cifartui.engine.runs"},
    "cifartui.engine.orchestration": {"cifartui.config", "cifartui.engine.runs", "cifartui.engine.train"},
    "cifartui.engine.api": {"cifartui.config", "cifartui.engine.runs", "cifartui.engine.train",
                            "cifartui.engine.orchestration"},
}
ENGINE_LAYERS = set(ALLOWED) - {"cifartui.config", "cifartui.engine.api"}
FACADE = "cifartui.engine.api"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in ROOT.rglob("*.py")}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The cifartui modules `path` imports, as names in `known` (a `from X import name` of a module counts it)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("cifartui"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cifartui"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return {name for name in found if name in known}


def layer_of(name: str) -> str | None:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if name == layer or name.startswith(layer + "."):
            return layer
    return None


def test_each_layer_imports_only_the_layers_below_it() -> None:
    known = set(modules())
    wrong = []
    for name, path in sorted(modules().items()):
        layer = layer_of(name)
        if layer is None:
            continue
        for target in sorted(imports_of(path, known)):
            target_layer = layer_of(target)
            if target_layer in (layer, None) and target_layer is not None:
                continue
            if target_layer not in ALLOWED[layer]:
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_no_module_reaches_itself_through_its_imports() -> None:
    known = set(modules())
    graph = {name: imports_of(path, known) - {name} for name, path in modules().items()}
    # A package's __init__ is imported by its submodules implicitly; only explicit arrows count.
    cycles = []
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_source_file_is_over_six_hundred_lines() -> None:
    long = {module_name(path): count for path in ROOT.rglob("*.py")
            if (count := len(path.read_text().splitlines())) > 600}
    assert long == {}


def _inside(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_app_reaches_the_engine_only_through_its_facade() -> None:
    known = set(modules())
    wrong = [f"{name} imports {target}" for name, path in sorted(modules().items()) if _inside(name, "cifartui.ui")
             for target in sorted(imports_of(path, known))
             if _inside(target, "cifartui.engine") and target != FACADE]
    assert wrong == []
    # The facade is what the app uses: at least one of its modules imports it.
    assert any(FACADE in imports_of(path, known) for name, path in modules().items() if _inside(name, "cifartui.ui"))


def test_the_engine_imports_neither_its_facade_nor_the_app_nor_the_command_line() -> None:
    known = set(modules())
    wrong = [f"{name} imports {target}" for name, path in sorted(modules().items())
             if any(_inside(name, layer) for layer in ENGINE_LAYERS)
             for target in sorted(imports_of(path, known))
             if any(_inside(target, above) for above in (FACADE, "cifartui.ui", "cifartui.cli"))]
    assert wrong == []


def test_the_app_and_the_facade_import_without_pytorch() -> None:
    """The app draws its first screen before PyTorch loads: importing it (and the facade) must not load PyTorch."""
    import subprocess
    import sys

    script = ("import sys\nimport cifartui.engine.api, cifartui.ui.app\n"
              "from cifartui.engine.api import RunControl, read_status\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_facade_loads_its_training_names_when_asked() -> None:
    from cifartui.engine import api
    from cifartui.engine.train import trainer

    assert api.Trainer is trainer.Trainer and api.check_resumable is trainer.check_resumable
    for name in api.__all__:  # every name it offers is there (the lazy ones load now)
        getattr(api, name)


def test_each_engine_layer_says_what_it_owns_and_what_it_may_import() -> None:
    for layer in sorted(ENGINE_LAYERS):
        init = ROOT.parent.joinpath(*layer.split(".")) / "__init__.py"
        assert init.is_file(), f"{layer} has no __init__.py"  # a namespace package would hide its docstring
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring and "import" in docstring.lower(), f"{layer}: its docstring should name what it may import"
