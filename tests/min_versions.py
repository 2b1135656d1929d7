"""``make min-versions``: are pyproject.toml's lower bounds true? Install exactly those versions in a fresh venv, test.

    python tests/min_versions.py [--python PYTHON] [--chapter 01_infobatch] [--pip-args "..."] [--keep]

Every core and ``book`` requirement is pinned to its lower bound (``torch>=2.3`` -> ``torch==2.3.0``), and so are the
test tools of ``dev`` that the unit tests use (all but playwright: the browser test is not run here). A fresh venv
under build/min-versions/ (no system site-packages, no user site, no PYTHONPATH: nothing installed elsewhere leaks in)
is made with the lowest Python that ``requires-python`` allows, accel-book is installed into it (editable) with those
pins, and every pin is checked against what was installed. Then the unit tests run (everything but the browser test and
tests/test_notebooks.py, which runs every chapter), and one chapter in smoke against its reference. It prints the
versions installed and the time each step took. It takes minutes (torch alone is a large download), so `make test`
does not run it.

A bound that fails here is raised in pyproject.toml, with the reason in a comment there.

Standard library only, and kept in tests/ rather than in the package: it checks this repository (pyproject.toml,
tests/), means nothing in an installed wheel, and must not need the package it is checking (``import accel.book``
loads torch and matplotlib).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10: the dev extra installs tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "build" / "min-versions"
NOT_PINNED = {"playwright", "jupyter-book"}  # dev tools of the browser tests only (deselected here)
UNIT_TESTS = ["-m", "not browser and not claims", "--ignore=tests/test_notebooks.py", "--ignore=tests/test_browser.py"]

# Run from the venv's own folder, so that the accel imported is the installed wheel, not this checkout.
LIBRARY_ONLY = """
import os, importlib.util, sys
os.chdir(sys.prefix)
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]
import accel, accel.infobatch, accel.echo, accel.cowclip, accel.moe
absent = [m for m in ("matplotlib", "ipywidgets", "IPython") if importlib.util.find_spec(m)]
assert not absent, f"the core install brought in {absent}"
assert accel.__file__.startswith(sys.prefix), accel.__file__
print(f"accel {accel.__version__} from {accel.__file__}: the four method modules import; no matplotlib, ipywidgets")
"""
_REQUIREMENT = re.compile(r"\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._\-]*)\s*(?:\[[^\]]*\])?\s*(?P<specs>[^;]*?)\s*"
                          r"(?:;\s*(?P<marker>.*?)\s*)?")


def pad_release(version: str) -> str:
    """``2.3`` -> ``2.3.0``: at least three release numbers (``==`` compares them zero-padded anyway); a suffix such as
    ``.post1`` is kept."""
    match = re.fullmatch(r"(\d+(?:\.\d+)*)(.*)", version)
    if not match:
        raise ValueError(f"not a version: {version!r}")
    release = match.group(1).split(".")
    return ".".join(release + ["0"] * (3 - len(release))) + match.group(2)


def lowest_pin(requirement: str) -> str:
    """The requirement pinned to its lower bound: ``torch>=2.3`` -> ``torch==2.3.0``,
    ``ipywidgets>=7.7,<9`` -> ``ipywidgets==7.7.0``; an environment marker is kept. A requirement without a lower bound
    (``>=``, ``~=`` or ``==``) is an error: every bound this check verifies must be written down."""
    match = _REQUIREMENT.fullmatch(requirement.split("#", 1)[0])
    if not match:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    name, marker = match.group("name"), match.group("marker")
    lower = [m.group(2) for m in re.finditer(r"(>=|~=|==)\s*([^,\s]+)", match.group("specs"))]
    if len(lower) != 1:
        raise ValueError(f"{requirement!r}: needs exactly one lower bound (>=, ~= or ==) for the check to pin")
    return f"{name}=={pad_release(lower[0])}" + (f"; {marker}" if marker else "")


def pinned_name(pin: str) -> str:
    return pin.split("==", 1)[0].strip()


def requirement_name(requirement: str) -> str:
    return _REQUIREMENT.fullmatch(requirement.split("#", 1)[0]).group("name")


def core_names(pyproject: dict) -> set[str]:
    return {requirement_name(r) for r in pyproject["project"]["dependencies"]}


def pins(pyproject: dict) -> list[str]:
    """The core, ``book`` and (test-tool) ``dev`` requirements, each pinned to its lower bound."""
    project = pyproject["project"]
    extras = project["optional-dependencies"]
    requirements = list(project["dependencies"]) + list(extras["book"])
    requirements += [r for r in extras["dev"] if requirement_name(r) not in NOT_PINNED]
    return [lowest_pin(r) for r in requirements]


def python_floor(pyproject: dict) -> str:
    """``>=3.10`` -> ``3.10``."""
    match = re.fullmatch(r">=\s*(\d+\.\d+)", pyproject["project"]["requires-python"].strip())
    if not match:
        raise ValueError("requires-python should read >=X.Y")
    return match.group(1)


def same_version(pin: str, installed: str) -> bool:
    """``2.3.0`` is installed as ``2.3.0``, ``2.3`` or ``2.3.0+cpu`` (a local build label, as pip's ``==`` allows)."""
    return pad_release(pin) == pad_release(installed.split("+", 1)[0])


def find_python(version: str) -> str | None:
    """An interpreter of ``version`` (``3.10``): ``pythonX.Y`` on PATH, else one that pyenv installed."""
    candidates = [shutil.which(f"python{version}") or ""]
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"), reverse=True)
    for candidate in filter(None, candidates):
        done = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == version:
            return candidate
    return None


def clean_env(venv: Path) -> dict[str, str]:
    """The environment the venv's commands run in: its bin first on PATH, and nothing pointing elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "CONDA_PREFIX", "ACCEL_PROFILE", "JUPYTER_PATH")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv), PYTHONNOUSERSITE="1",
               JUPYTER_PREFER_ENV_PATH="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", help="interpreter for the venv (default: the requires-python floor, found on PATH "
                                         "or under pyenv)")
    parser.add_argument("--chapter", default="01_infobatch", help="the chapter run in smoke (default: %(default)s; "
                        "not 04_st_moe below the references' Python: its smoke corpus is that Python's stdlib source)")
    parser.add_argument("--pip-args", default="", help="extra pip install arguments, e.g. a CPU index for torch: "
                        "'--index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple'")
    parser.add_argument("--venv", default=str(VENV))
    parser.add_argument("--keep", action="store_true", help="re-use the venv if it exists (not a fresh check)")
    args = parser.parse_args(argv)

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = pins(pyproject)
    floor = python_floor(pyproject)
    python = args.python or find_python(floor)
    if not python:
        print(f"no Python {floor} (the requires-python floor) on PATH or under pyenv; pass --python "
              f"(make min-versions MIN_PYTHON=...)", file=sys.stderr)
        return 2
    venv = Path(args.venv).resolve()
    vpy, env = str(venv / "bin" / "python"), clean_env(venv)
    times: dict[str, float] = {}

    def step(name: str, command: list[str], shown: str = "") -> int:
        print(f"\n== {name}: {shown or shlex.join(command)}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(command, cwd=ROOT, env=env).returncode
        times[name] = time.perf_counter() - start
        print(f"== {name}: exit {code}, {times[name]:.0f} s", flush=True)
        return code

    started = time.perf_counter()
    print("pins (pyproject.toml's lower bounds):\n  " + "\n  ".join(wanted), flush=True)
    fresh = not (args.keep and Path(vpy).exists())
    if fresh:
        shutil.rmtree(venv, ignore_errors=True)
        if step("venv", [python, "-m", "venv", str(venv)]):
            return 1
    pip_args = ["--quiet", *shlex.split(args.pip_args)]
    pip = [vpy, "-m", "pip", "install", *pip_args]
    dist = venv / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    if step("pip", [*pip, "--upgrade", "pip"]) or step(
            "wheel", [vpy, "-m", "pip", "wheel", ".", "--no-deps", *pip_args, "-w", str(dist)]):
        return 1
    core = [pin for pin in wanted if pinned_name(pin) in core_names(pyproject)]
    if step("install the wheel and the core", [*pip, *map(str, dist.glob("*.whl")), *core]):
        return 1
    if not fresh:
        print("\n(--keep: the venv has the book already, so the library-only import is not checked)")
    elif step("the library without the book", [vpy, "-c", LIBRARY_ONLY], f"{vpy} -c LIBRARY_ONLY"):
        return 1
    if step("install the book and the test tools (editable)", [*pip, "-e", ".[book]", *wanted]):
        print("\nthe lowest versions do not install together: raise a bound in pyproject.toml", file=sys.stderr)
        return 1

    names = [pinned_name(p) for p in wanted]
    probe = ("import importlib.metadata as m, json, sys, torch\n"
             "v = {}\n"
             f"for n in {names!r}:\n"
             "    try: v[n] = m.version(n)\n"
             "    except m.PackageNotFoundError: v[n] = None\n"
             "print(json.dumps({'python': sys.version.split()[0], 'torch_file': torch.__file__, 'versions': v}))")
    found = json.loads(subprocess.run([vpy, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                                      check=True).stdout)
    print(f"\nPython {found['python']} ({python}); torch from {found['torch_file']}")
    wrong = []
    for pin in wanted:
        name, version = pinned_name(pin), pin.split("==", 1)[1].split(";", 1)[0].strip()
        installed = found["versions"][name]
        skipped = installed is None and ";" in pin  # a marker that excludes this Python
        ok = skipped or (installed is not None and same_version(version, installed))
        print(f"  {name:<14} {version:<14} installed {installed or '-':<14} {'' if ok else 'MISMATCH'}")
        wrong += [] if ok else [name]
    if wrong or not found["torch_file"].startswith(str(venv)):
        print(f"\nnot the lowest versions, or torch from outside the venv: {wrong}", file=sys.stderr)
        return 1
    freeze = subprocess.run([vpy, "-m", "pip", "freeze", "--exclude-editable"], env=env, capture_output=True, text=True)
    print("\npip freeze (everything installed, the unpinned dependencies at whatever pip chose):\n  "
          + "  ".join(freeze.stdout.splitlines(keepends=True)))

    pytest = [vpy, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfEs", "--durations=5"]
    unit = step("unit tests", [*pytest, *UNIT_TESTS])
    chapter = step(f"chapter {args.chapter} in smoke", [
        *pytest, "tests/test_notebooks.py", "-k", f"{args.chapter} and (smoke_matches_reference or perturbed)"])
    total = time.perf_counter() - started
    print("\nmin-versions: " + ("passed" if not (unit or chapter) else "FAILED") + f" in {total / 60:.1f} min ("
          + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items()) + ")")
    return 1 if unit or chapter else 0


if __name__ == "__main__":
    sys.exit(main())
