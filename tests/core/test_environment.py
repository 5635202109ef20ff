"""The pinned environment: requirements.lock pins every dependency pyproject.toml names,
inside its ranges, is what this environment runs, and the set-up and environment.yml use it."""
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]


def locked() -> dict:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name.lower().replace("_", "-")] = spec.version
    return pins


def test_every_dependency_is_pinned_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = locked()
    for req in wanted:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not in requirements.lock"
        assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_this_environment_runs_the_locked_versions_of_torch_and_the_notebook_tools():
    pins = locked()
    for name in ("torch", "torchvision", "numpy", "matplotlib", "pandas", "papermill", "nbval"):
        assert metadata.version(name).split("+")[0] == pins[name], name


def test_the_set_up_and_environment_yml_use_the_lock():
    assert re.search(r'-c "\$_root/requirements.lock"', (ROOT / "scripts" / "ensure_env.sh").read_text())
    assert '"-c requirements.lock"' in (ROOT / "environment.yml").read_text()


def _ready(interpreter: str, checkout: Path) -> bool:
    """ensure_env.sh's readiness check alone, run from ``checkout`` (the rest of the
    script would install)."""
    script = '_root="$PWD"; eval "$(sed -n \'/^_ready()/,/^}/p\' scripts/ensure_env.sh)"; _ready "$1"'
    return subprocess.run(["bash", "-c", script, "ready", interpreter], cwd=checkout).returncode == 0


def test_the_set_up_accepts_an_environment_only_with_this_checkouts_package(tmp_path):
    assert _ready(sys.executable, ROOT)  # this environment: the project installed from here
    # another checkout with a package of the same name: its working directory must not
    # stand in for the environment's installed package
    other = tmp_path / "other-checkout"
    (other / "scripts").mkdir(parents=True)
    (other / "scripts" / "ensure_env.sh").write_text((ROOT / "scripts" / "ensure_env.sh").read_text())
    (other / "mresnet_core").mkdir()
    (other / "mresnet_core" / "__init__.py").write_text("")
    assert not _ready(sys.executable, other)
