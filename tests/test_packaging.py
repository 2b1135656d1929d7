"""environment.yml mirrors pyproject.toml; the two commands and CI are wired as the README says."""

import re
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # pip name -> conda-forge name where they differ
PIP_ONLY = {"playwright", "mnist1d"}  # kept in environment.yml's pip section


def split(requirement: str) -> tuple[str, str]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", requirement.split("#")[0])
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
