"""The repository is an installable package: a wheel built from it installs in a fresh virtual
environment and its console script answers --help (offline: no dependency is downloaded; the
fresh environment sees this one's packages through a .pth file)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import site
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

from galaxy_core.base.config import CLASSES

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.packaging


def test_pyproject_declares_the_package_its_dependencies_and_the_console_script() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = {line.split("==")[0].lower() for line in (REPO / "requirements.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    declared = {d.split(">")[0].split("<")[0].split("=")[0].lower()
                for d in [*project["dependencies"], *project["optional-dependencies"]["app"]]}
    assert declared == pinned  # every pinned requirement has a compatible range, and no more
    assert project["scripts"]["galaxy-classification"] == "galaxy_core.cli:main"


def test_a_wheel_installs_in_a_fresh_venv_and_runs_help(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "galaxy_core", source / "galaxy_core",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "models" / "default", source / "models" / "default")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(wheels), str(source)], check=True, timeout=120)
    wheel = next(wheels.glob("galaxy_classification-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "galaxy_core/cli.py" in names and not any(n.startswith("tests/") for n in names)
    assert {"galaxy_core/_models/default/card.json", "galaxy_core/_models/default/model.safetensors"} <= set(names)

    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=False)
    purelib = next(fresh.glob("lib/python*/site-packages"))
    (purelib / "outer.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(fresh / "bin" / "python"), "install",
                    "--no-deps", "--no-index", "-q", str(wheel)], check=True, timeout=120)
    answer = subprocess.run([str(fresh / "bin" / "galaxy-classification"), "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert answer.returncode == 0, answer.stderr
    assert "evaluate" in answer.stdout and "predict" in answer.stdout
    assert answer.stdout.startswith("usage: galaxy-classification "), answer.stdout

    # The shipped model comes with it: an example galaxy is classified with no --model.
    example = next((REPO / "examples" / "images").glob("*.jpg"))
    env = {k: v for k, v in os.environ.items() if k != "GALAXY_MODEL_DIR"}
    command = [str(fresh / "bin" / "galaxy-classification"), "predict", str(example)]
    answer = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert answer.returncode == 0, answer.stderr
    row = next(csv.DictReader(io.StringIO(answer.stdout)))
    assert row["label"] in CLASSES and row["error"] == ""

    # A missing model names both ways to give one.
    missing = {**env, "GALAXY_MODEL_DIR": str(tmp_path / "nowhere")}
    answer = subprocess.run(command, cwd=tmp_path, env=missing, capture_output=True, text=True, timeout=300,
                            check=False)
    assert answer.returncode == 2 and "Traceback" not in answer.stderr
    assert "--model" in answer.stderr and "GALAXY_MODEL_DIR" in answer.stderr, answer.stderr
    where = subprocess.run([str(fresh / "bin" / "python"), "-c", "import galaxy_core; print(galaxy_core.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert str(purelib) in where.stdout, where.stderr
