"""The book as a static website (``make site``, ``python -m accel.book.site``): Jupyter Book 1.x over the committed
notebooks, into ``build/site/`` (open ``build/site/index.html``).

The sources of the site's own pages live here, next to this file: ``_config.yml``, ``_toc.yml``, ``intro.md`` (the
home page: the README) and ``api/`` (autodoc pages of the four method modules). A build stages them with a copy of
README.md and of notebooks/ (the notebooks are read, never written) into a work folder, writes the repository's
address from pyproject (:func:`accel.book.links.repository_url`) into the staged config, so that each chapter's Colab
link is the one its badge carries, and runs Sphinx on it. No notebook is executed; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..links import ROOT, repository_url

SOURCES = Path(__file__).resolve().parent
NOTEBOOKS = ROOT / "notebooks"
OUTPUT = ROOT / "build" / "site"
BRANCH = "main"  # the branch the Colab links open, as in accel.book.links.colab_url
CHAPTERS = "[0-9][0-9]_*.ipynb"


def stage(work: Path, notebooks: Path = NOTEBOOKS, readme: Path = ROOT / "README.md") -> Path:
    """Copy the site's sources, README.md and the chapters into ``work/src`` (emptied first); return that folder."""
    import yaml

    src = work / "src"
    if src.exists():
        shutil.rmtree(src)
    shutil.copytree(SOURCES, src, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    shutil.copy2(readme, src / "README.md")
    (src / "notebooks").mkdir()
    chapters = sorted(notebooks.glob(CHAPTERS))
    if not chapters:
        raise FileNotFoundError(f"no chapters ({CHAPTERS}) in {notebooks}")
    for notebook in chapters:
        shutil.copy2(notebook, src / "notebooks" / notebook.name)
    config_path = src / "_config.yml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    config["repository"]["url"] = repository_url()
    config["repository"]["branch"] = BRANCH
    config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return src


def jupyter_book() -> str:
    """The ``jupyter-book`` command beside this interpreter (the dev extra installs it)."""
    found = shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) or shutil.which("jupyter-book")
    if not found:
        raise FileNotFoundError("`jupyter-book` is not installed (it is in the dev extra: pip install -e '.[dev]')")
    return found


def build(out: Path = OUTPUT, work: Path | None = None, verbose: bool = False) -> list[str]:
    """Build the site into ``out`` (replaced); return Sphinx's warnings, one line each.

    ``work`` (default: ``out`` with ``-src`` appended) holds the staged sources and Jupyter Book's ``_build``."""
    out = Path(out).resolve()
    work = Path(work).resolve() if work else out.with_name(out.name + "-src")
    src = stage(work)
    built = work / "_build"
    if built.exists():
        shutil.rmtree(built)
    command = [jupyter_book(), "build", str(src), "--path-output", str(work), "--builder", "html", "--all"]
    result = subprocess.run(command + ([] if verbose else ["--quiet"]), cwd=work, text=True,
                            stdout=None if verbose else subprocess.PIPE, stderr=subprocess.PIPE)
    stderr = re.sub(r"\x1b\[[0-9;]*m", "", result.stderr)  # Sphinx colours its messages
    warnings = [line for line in stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    if result.returncode != 0 or not (built / "html" / "index.html").exists():
        raise RuntimeError(f"the site did not build (exit {result.returncode}):\n{(result.stdout or '')[-3000:]}"
                           f"{stderr[-3000:]}")
    if out.exists():
        shutil.rmtree(out)
    shutil.move(built / "html", out)
    return warnings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUTPUT, help="output folder (default: build/site)")
    parser.add_argument("--verbose", action="store_true", help="print Sphinx's progress")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        warnings = build(args.out, verbose=args.verbose)
    except (RuntimeError, FileNotFoundError) as exc:
        print(exc, file=sys.stderr)
        return 1
    for line in warnings:
        print(line)
    print(f"site: {args.out / 'index.html'} ({time.monotonic() - started:.0f} s, {len(warnings)} warnings)")
    return 0
