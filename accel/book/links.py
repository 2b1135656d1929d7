"""The repository's public address, read from one place (pyproject's ``project.urls``), and what derives from it:
the Open-in-Colab badge and the Colab install line of every notebook.

After moving the repository, edit ``[project.urls] Repository`` and run ``python -m accel.book.links`` to rewrite the
notebooks' badges and install lines.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPOSITORY = "https://github.com/accel-book/accel"
_BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^)\s\"']+")
DISTRIBUTION = "accel-book"  # the name pip knows this package by (its import name is accel)
_INSTALL = re.compile(r"pip install -q \"accel(?:-book)?(?:\[book\])? @ git\+https://github\.com/[^\"]+\"")


def repository_url(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """``project.urls.Repository`` from pyproject.toml (the installed package's metadata outside a checkout)."""
    if pyproject.exists():
        match = re.search(r'^Repository\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE)
        if match:
            return match.group(1).rstrip("/")
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        for entry in metadata(DISTRIBUTION).get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().lower() == "repository":
                return url.strip().rstrip("/")
    except PackageNotFoundError:
        pass
    return DEFAULT_REPOSITORY


def _slug(url: str) -> str:
    match = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", url)
    if not match:
        raise ValueError(f"Invalid repository URL: {url!r}; expected https://github.com/<owner>/<name>")
    return match.group(1)


def colab_url(notebook: str, url: str | None = None, branch: str = "main") -> str:
    slug = _slug(url or repository_url())
    return f"https://colab.research.google.com/github/{slug}/blob/{branch}/notebooks/{notebook}"


def colab_badge(notebook: str, url: str | None = None) -> str:
    """Markdown for the Open-in-Colab badge of ``notebook`` (a file name under notebooks/)."""
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(notebook, url)})"


def install_line(url: str | None = None) -> str:
    """The Colab install line, with the book's extra: pip finds torch already satisfied, so Colab's CUDA torch is never
    replaced, and Colab's ipywidgets 7.7.1 is inside the extra's range."""
    return f'pip install -q "{DISTRIBUTION}[book] @ git+{url or repository_url()}"'


def rewrite_notebook(path: Path, url: str | None = None) -> bool:
    """Point ``path``'s badge and install line at ``url``; returns whether anything changed."""
    notebook = json.loads(path.read_text())
    changed = False
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        new = _BADGE.sub(colab_url(path.name, url), source)
        new = _INSTALL.sub(install_line(url), new)
        if new != source:
            cell["source"] = new.splitlines(keepends=True)
            changed = True
    if changed:
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return changed


def main() -> None:
    url = repository_url()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        print(f"{path.name}: {'rewritten' if rewrite_notebook(path, url) else 'up to date'} ({url})")


if __name__ == "__main__":
    sys.exit(main())
