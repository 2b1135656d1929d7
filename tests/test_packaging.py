"""environment.yml mirrors pyproject.toml; the two commands and CI are wired as the README says; the wheel builds
without deprecation warnings and its library needs only torch and NumPy; `make min-versions` pins the lower bounds."""

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from min_versions import (  # tests/min_versions.py, the script behind `make min-versions`
    NOT_PINNED,
    lowest_pin,
    pins,
    python_floor,
    requirement_name,
    same_version,
)

try:
    import tomllib
except ImportError:  # Python 3.10 (the dev extra installs tomli there)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # pip name -> conda-forge name where they differ
PIP_ONLY = {"playwright", "mnist1d"}  # kept in environment.yml's pip section


def split(requirement: str) -> tuple[str, str]:
    """``"tomli>=1.1; python_version < '3.11'  # why"`` -> ``("tomli", ">=1.1")``: conda has no markers."""
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", requirement.split("#")[0].split(";")[0])
    return match.group(1).lower(), match.group(2).replace(" ", "")


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    return dict(split(r) for r in requirements)


def environment_requirements() -> tuple[dict[str, str], dict[str, str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, {}
    for entry in env["dependencies"]:
        if isinstance(entry, dict):
            pip.update(split(e) for e in entry["pip"] if not e.startswith("-e"))
        else:
            name, spec = split(entry)
            if name not in ("python", "pip"):
                conda[name] = spec
    return conda, pip


def test_environment_mirrors_pyproject():
    wanted = pyproject_requirements()
    conda, pip = environment_requirements()
    expected_conda = {CONDA_NAMES.get(n, n): s for n, s in wanted.items() if n not in PIP_ONLY}
    expected_pip = {n: s for n, s in wanted.items() if n in PIP_ONLY}
    assert conda == expected_conda, "environment.yml (conda) and pyproject.toml disagree; update both"
    assert pip == expected_pip, "environment.yml (pip section) and pyproject.toml disagree; update both"


def test_required_packages_are_named():
    conda, _ = environment_requirements()
    for name in ("jupyterlab", "pytorch", "matplotlib", "ipywidgets", "nbval", "papermill"):
        assert name in conda


def test_python_floor_matches():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert f"python{project['requires-python']}" in env["dependencies"]


def test_ci_and_readme_use_the_two_commands():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\s*(make \w+)\s*$", quick_start, re.MULTILINE)
    assert commands == ["make book", "make test"], commands
    makefile = (ROOT / "Makefile").read_text()
    for target in ("book", "test", "lab", "verify", "references"):
        assert re.search(rf"^{target}:", makefile, re.MULTILINE), f"Makefile lacks `{target}`"


def test_method_modules_import_nothing_else_from_accel():
    for name in ("infobatch", "echo", "cowclip", "moe"):
        path = ROOT / "accel" / f"{name}.py"
        if path.exists():
            assert not re.search(r"^\s*(from|import)\s+accel\b", path.read_text(), re.MULTILINE), name


def test_library_does_not_import_notebook_machinery():
    for path in (ROOT / "accel").rglob("*.py"):
        if "book" in path.relative_to(ROOT / "accel").parts:
            continue
        assert not re.search(r"^\s*(from|import)\s+(ipywidgets|IPython)\b", path.read_text(), re.MULTILINE), path


def test_licence_citation_and_one_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]  # an SPDX expression
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "CC BY 4.0" in licence
    assert "version" not in project and "version" in project["dynamic"]
    version = re.search(r'^__version__ = "([^"]+)"$', (ROOT / "accel" / "__init__.py").read_text(), re.MULTILINE)
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert version and citation["version"] == version.group(1) and citation["license"] == "MIT"


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# `make min-versions` (tests/min_versions.py) installs the lower bounds themselves; its logic, tested cheaply here.


def test_lowest_pin_turns_a_lower_bound_into_an_exact_version():
    assert lowest_pin("torch>=2.3") == "torch==2.3.0"
    assert lowest_pin("ipywidgets>=7.7,<9") == "ipywidgets==7.7.0"
    assert lowest_pin("mnist1d>=0.0.2.post1  # why") == "mnist1d==0.0.2.post1"
    assert lowest_pin("nbval >= 0.10") == "nbval==0.10.0"
    assert lowest_pin("tomli>=1.1; python_version < '3.11'") == "tomli==1.1.0; python_version < '3.11'"
    for unbounded in ("torch", "torch<3", "numpy>=1.24,>=1.26"):
        with pytest.raises(ValueError):
            lowest_pin(unbounded)
    assert same_version("2.3.0", "2.3.0+cpu") and same_version("6.0.0", "6.0") and not same_version("2.3.0", "2.3.1")


def test_min_versions_pins_every_core_book_and_test_requirement_at_its_bound():
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    wanted = pins(pyproject())
    tools = [r for r in extras["dev"] if requirement_name(r) not in NOT_PINNED]
    expected = project["dependencies"] + extras["book"] + tools
    assert [p.split("==")[0] for p in wanted] == [requirement_name(r) for r in expected]
    assert "torch" in [p.split("==")[0] for p in wanted] and "ipywidgets" in [p.split("==")[0] for p in wanted]
    assert NOT_PINNED <= {requirement_name(r) for r in extras["dev"]}, "NOT_PINNED names a tool the dev extra lacks"
    assert python_floor(pyproject()) == project["requires-python"].removeprefix(">=")


def test_min_versions_is_a_make_target_outside_make_test():
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^min-versions:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert target and "tests/min_versions.py" in target.group(1)
    test = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    assert "min" not in test, "make min-versions takes minutes; make test should not run it"


def test_ipywidgets_range_admits_colabs():
    from packaging.specifiers import SpecifierSet

    book = dict(split(r) for r in pyproject()["project"]["optional-dependencies"]["book"])
    assert "7.7.1" in SpecifierSet(book["ipywidgets"]) and "8.1.5" in SpecifierSet(book["ipywidgets"])


# Building and installing. The registry tests skip, saying so, where the package index cannot be reached.

UNREACHABLE = ("NewConnectionError", "ConnectTimeout", "ReadTimeout", "Name or service not known", "ProxyError",
               "Network is unreachable", "Temporary failure in name resolution", "Could not fetch URL", "SSLError")


def pip(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # one retry: pip reports a connection error only when it retries (with none, an unreachable index looks empty)
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--retries", "1", "--timeout", "20"]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    failures = [line for line in (done.stdout + done.stderr).splitlines() if any(s in line for s in UNREACHABLE)]
    if done.returncode and failures:
        pytest.skip(f"the package index cannot be reached: {failures[0].strip()[:300]}")
    return done


def test_distribution_name_is_free_or_ours(tmp_path):
    """`pip install accel-book` must never fetch somebody else's package (`accel` on PyPI is one)."""
    done = pip("download", "--no-deps", "--no-build-isolation", "accel-book", "-d", str(tmp_path), cwd=tmp_path)
    if done.returncode:
        assert "No matching distribution found for accel-book" in done.stderr, done.stderr
        return
    repository = pyproject()["project"]["urls"]["Repository"]
    for path in tmp_path.iterdir():  # published since: it must be this project
        with zipfile.ZipFile(path) as wheel:
            metadata = next(wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        assert repository in metadata, f"accel-book on the index is not this project's ({path.name})"


def test_book_extra_resolves_with_colabs_ipywidgets(tmp_path):
    report = tmp_path / "report.json"
    done = pip("install", "--dry-run", "--quiet", "--report", str(report), ".[book]", "ipywidgets==7.7.1")
    assert done.returncode == 0, done.stderr[-3000:]
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in json.loads(report.read_text())[
        "install"]}
    assert chosen.get("ipywidgets", "7.7.1") == "7.7.1"


def test_wheel_builds_without_deprecation_warnings_and_its_library_needs_only_torch_and_numpy(tmp_path):
    """Built as `pip wheel` does, offline (no build isolation, so this environment's setuptools, from the dev extra):
    no deprecation warning, an SPDX licence, core requirements torch and NumPy; and the four method modules import
    from the wheel with matplotlib, ipywidgets and IPython unimportable."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement
    from packaging.version import Version

    try:
        have = Version(version("setuptools"))
    except PackageNotFoundError:
        have = None
    floor = Requirement(pyproject()["build-system"]["requires"][0]).specifier
    if have is None or have not in floor:
        pytest.skip(f"the build backend needs setuptools{floor} (dev extra); this environment has {have}")
    done = pip("wheel", ".", "--no-deps", "--no-build-isolation", "-v", "-w", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    deprecations = [line for line in log.splitlines() if "deprecat" in line.lower()]
    assert not deprecations, "\n".join(deprecations)
    (wheel,) = tmp_path.glob("accel_book-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata and "License ::" not in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    core = [Requirement(line.split(":", 1)[1]) for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert sorted(r.name for r in core if not r.marker or "extra" not in str(r.marker)) == ["numpy", "torch"]
    blocked = ("matplotlib", "ipywidgets", "IPython")
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"{{name}} is not installed (blocked)")
sys.meta_path.insert(0, Block())
sys.path = [{str(wheel)!r}] + [p for p in sys.path if p not in ("", {str(ROOT)!r})]
import accel, accel.infobatch, accel.echo, accel.cowclip, accel.moe
assert accel.__file__.startswith({str(wheel)!r}), accel.__file__
"""
    imported = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert imported.returncode == 0, imported.stderr[-3000:]
