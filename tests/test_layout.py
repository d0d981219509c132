"""The package is a house of floors: each sub-package imports only the floors below it, the
dashboard imports only the sub-packages' public surface, and importing the package loads no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "galaxy_core"
FLOORS = ["base", "sources", "data", "model", "serving", "training"]
TOP = {"cli", "terminal", "__main__", "__init__"}


def _floor(module: str) -> int:
    """Floor of a dotted galaxy_core module name: the sub-packages in order, the CLI above them."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in FLOORS:
        return FLOORS.index(parts[1])
    return len(FLOORS)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every absolute or relative import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            found.append((module, [a.name for a in node.names], node.lineno))
    return found


def _core_files() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_every_module_lives_on_a_floor_or_is_the_cli():
    loose = [p.name for p in CORE.glob("*.py") if p.stem not in TOP]
    assert loose == [], f"modules outside the floors: {loose}"
    for floor in FLOORS:
        init = CORE / floor / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{floor}/__init__.py says nothing of its floor"


def test_no_floor_imports_a_higher_one():
    upward = []
    for path in _core_files():
        own = _floor(".".join(path.relative_to(REPO).with_suffix("").parts))
        for module, names, line in _imports(path):
            if not module.startswith("galaxy_core"):
                continue
            targets = [module] if module != "galaxy_core" else [f"galaxy_core.{n}" for n in names]
            for target in targets:
                if _floor(target) > own:
                    upward.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert upward == []


def test_no_module_of_the_core_imports_streamlit():
    offenders = [str(p.relative_to(REPO)) for p in _core_files()
                 if any(m.split(".")[0] == "streamlit" for m, _, _ in _imports(p))]
    assert offenders == []


def test_the_dashboard_imports_only_the_public_surface():
    import importlib

    leaks = []
    dashboard = [REPO / "app.py", *sorted((REPO / "app_pages").glob("*.py")),
                 *sorted((REPO / "app_support").glob("*.py"))]
    for path in dashboard:
        for module, names, line in _imports(path):
            if not module.startswith("galaxy_core"):
                continue
            parts = module.split(".")
            if len(parts) != 2 or parts[1] not in FLOORS:
                leaks.append(f"{path.relative_to(REPO)}:{line} imports {module}")
                continue
            public = set(importlib.import_module(module).__all__)
            leaks += [f"{path.relative_to(REPO)}:{line} imports {module}.{n}, not in its __all__"
                      for n in names if n not in public]
    assert leaks == []


def test_pages_are_never_imported():
    importers = [f"{p.relative_to(REPO)}:{line}"
                 for p in [REPO / "app.py", *REPO.glob("app_*/*.py"), *REPO.glob("tests/**/*.py")]
                 for module, _, line in _imports(p) if module.split(".")[0] == "app_pages"]
    assert importers == []


HELP = ("import sys; sys.argv = ['galaxy-classification', '--help']\n"
        "import galaxy_core.cli\ntry:\n    galaxy_core.cli.main()\nexcept SystemExit:\n    pass")


@pytest.mark.parametrize("code", ["import galaxy_core", "import galaxy_core.cli", HELP])
def test_importing_the_package_or_asking_for_help_loads_no_torch(code):
    probe = f"{code}\nimport sys\nprint('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
