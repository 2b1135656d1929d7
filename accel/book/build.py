"""Execute the chapters with papermill and print each one's key result beside the paper's (``make book``).

    python -m accel.book.build [--profile auto] [--out build] [--results-from PATTERN] [notebooks/01_x.ipynb ...]

Each chapter runs in a fresh kernel with ``PROFILE`` and ``RESULTS_PATH`` injected; ``ACCEL_PROFILE`` in the
environment overrides the profile inside the chapter. Executed notebooks land in ``<out>/``, results in
``<out>/results/``. The committed notebooks are never modified.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

from accel.experiments.progress import STATIC_ENV

ROOT = Path(__file__).resolve().parents[2]


def chapters(paths: list[str] | None = None) -> list[Path]:
    found = [Path(p) for p in paths] if paths else sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [str(p) for p in found if not p.exists()]
    if missing:
        raise SystemExit(f"no such notebook: {', '.join(missing)}")
    return found


@contextmanager
def _environment(**values: str):
    """Set these environment variables (inherited by the kernels papermill starts) and restore them afterwards.
    Always sets STATIC_ENV: executed notebooks are for reading, so loops print one summary line, not a tqdm widget."""
    values = {STATIC_ENV: "1", **values}
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def execute(notebook: Path, out_dir: Path, profile: str, timeout: int | None = None,
            results_from: Path | None = None) -> tuple[Path, float]:
    """Run one chapter; returns (results path, seconds). Papermill shows a progress bar over the chapter's cells.
    ``results_from``: render the run recorded in that results file instead of training (RESULTS_FROM)."""
    import papermill

    results_path = out_dir / "results" / f"{notebook.stem}.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.unlink(missing_ok=True)
    start = time.perf_counter()
    with _environment():
        papermill.execute_notebook(
            str(notebook),
            str(out_dir / notebook.name),
            parameters={"PROFILE": profile, "RESULTS_PATH": str(results_path),
                        **({"RESULTS_FROM": str(Path(results_from).resolve())} if results_from else {})},
            kernel_name="python3",
            progress_bar={"desc": notebook.stem, "unit": "cell"},
            cwd=str(notebook.parent),
            execution_timeout=timeout,
        )
    return results_path, time.perf_counter() - start


def execute_inplace(notebook: Path, profile: str, force: bool = False) -> tuple[Path, float]:
    """Re-execute a committed notebook in place (its outputs are what readers see on GitHub), recording the profile in
    its metadata for ``make verify`` and the results under data/results/. Refuses to overwrite uncommitted edits."""
    import nbformat
    import papermill

    if not force and subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "--", str(notebook)]).returncode:
        raise SystemExit(f"{notebook} has uncommitted changes; commit them first (or pass --force to overwrite)")
    results_path = ROOT / "data" / "results" / f"{notebook.stem}.{profile}.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # Executed into an untracked file beside it, moved over the notebook only at the end: the tracked tree stays clean
    # while the chapter runs, so its results file records a clean commit (no "-dirty").
    executed = notebook.with_name(f".{notebook.stem}.executing.ipynb")
    try:  # no parameters: papermill then adds no injected cell to the committed notebook
        with _environment(ACCEL_PROFILE=profile, ACCEL_RESULTS_PATH=str(results_path)):
            papermill.execute_notebook(str(notebook), str(executed), kernel_name="python3", cwd=str(notebook.parent),
                                       progress_bar={"desc": notebook.stem, "unit": "cell"})
        nb = nbformat.read(executed, as_version=4)
    finally:
        executed.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    nb.metadata["accel"] = {"profile": profile, "seconds": round(seconds, 1)}
    nb.metadata.pop("papermill", None)  # timestamps and paths of this machine: noise in a diff
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    static_widget_text(nb)
    nbformat.write(nb, notebook)
    return results_path, seconds


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_TEXT = ("Interactive explorer: its controls run in a live kernel (JupyterLab, Colab). The figure and readout "
               "above show its initial setting.")


def static_widget_text(nb) -> None:
    """Replace each widget output's plain-text fallback (a ``VBox(children=(...`` repr that viewers without a kernel
    print) with one sentence saying what the widget is and where its initial state is shown."""
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_MIME in data:
                data["text/plain"] = WIDGET_TEXT


def summary(rows: list[tuple[str, float, dict]]) -> str:
    lines = ["", "Key results (this run beside the paper)", "=" * 40]
    for name, seconds, results in rows:
        lines.append(f"{name}  [{results.get('profile')} on {results.get('device')}, {seconds:.0f} s]")
        for entry in results.get("key_results", []):
            lines.append(f"  {entry['label']}")
            lines.append(textwrap.indent(f"this run: {entry['this_run']}\npaper:    {entry['paper']}", "    "))
        claims = results.get("claims", {})
        failed = [n for n, c in claims.items() if c["passed"] is False]
        unevaluated = [n for n, c in claims.items() if c["passed"] is None]
        checked = len(claims) - len(unevaluated)
        held = f"  claims held: {checked - len(failed)}/{checked}" + (f" (not: {', '.join(failed)})" if failed else "")
        lines.append(held + (f"; not evaluated: {', '.join(unevaluated)}" if unevaluated else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="chapters to run (default: every notebooks/NN_*.ipynb)")
    parser.add_argument("--profile", default="auto", help="auto | smoke | cpu | gpu | paper (ACCEL_PROFILE overrides)")
    parser.add_argument("--out", default=str(ROOT / "build"), help="folder for executed notebooks and results")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    parser.add_argument("--inplace", action="store_true", help="re-execute the committed notebooks in place")
    parser.add_argument("--results-from", default=None, metavar="PATTERN",
                        help="render recorded runs without training: a results file per chapter, '{stem}' standing "
                             "for the chapter's name, e.g. 'data/results/{stem}.gpu.json'")
    parser.add_argument("--force", action="store_true", help="with --inplace: overwrite uncommitted notebook edits")
    args = parser.parse_args(argv)

    from .session import resolve_profile

    profile = resolve_profile(args.profile)  # fail fast on a bad name, before any kernel starts
    out_dir = Path(args.out).resolve()  # the kernels run in notebooks/: a relative path would land there
    rows = []
    for notebook in chapters(args.notebooks):
        if args.inplace:
            results_path, seconds = execute_inplace(notebook, profile, args.force)
        else:
            source = Path(args.results_from.format(stem=notebook.stem)) if args.results_from else None
            results_path, seconds = execute(notebook, out_dir, profile, args.timeout, results_from=source)
        rows.append((notebook.stem, seconds, json.loads(results_path.read_text())))
    print(summary(rows))
    print(f"\nExecuted notebooks and results files: {ROOT / 'notebooks' if args.inplace else out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
