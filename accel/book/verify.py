"""``make verify`` (second half): nbval on each committed notebook, in the profile that produced its outputs.

Only cells marked ``# NBVAL_CHECK_OUTPUT`` are compared (``--nbval-lax``), verbatim, on whatever CPU runs the check.
So a checked cell prints plain text only (no rich display: a table's HTML or full-precision repr would differ in the
last digits between the floating-point kernels of two machines; no stderr: progress bars), and rounds each number to
what reproduces across kernels (data/results/cpu_spread.json). ``checked_cell_problems`` enforces the first part. The
profile is read from the notebook's metadata (``accel.profile``, written by ``make outputs``).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

from .build import chapters

CHECK_MARK = "# NBVAL_CHECK_OUTPUT"


def _last_statement(source: str) -> ast.stmt | None:
    try:
        body = ast.parse(source).body
    except SyntaxError:  # IPython syntax (magics): not judged
        return None
    return body[-1] if body else None


def checked_cell_problems(notebook: dict) -> list[str]:
    """Every way a committed notebook's checked cells break the rule above: outputs other than stdout text, or a
    source that ends on an expression (its value would be shown as a result)."""
    problems = []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") != "code" or CHECK_MARK not in "".join(cell.get("source", "")):
            continue
        last = _last_statement("".join(cell.get("source", "")))
        if isinstance(last, ast.Expr) and not (isinstance(last.value, ast.Call)
                                               and getattr(last.value.func, "id", None) == "print"):
            problems.append(f"cell {index}: a checked cell ends on an expression, whose value Jupyter shows as a "
                            "result (a trailing ';' does not hide it everywhere); end it on a print")
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "stream" and output.get("name") == "stdout":
                continue
            what = f"{kind} ({output.get('name')})" if kind == "stream" else f"{kind} {sorted(output.get('data', {}))}"
            problems.append(f"cell {index}: a checked cell shows {what}; print rounded text instead")
    return problems


# Words that belong to the project's own bookkeeping, not to a reader's chapter (matched case-insensitively, whole
# words), and the shape of an unrendered template: a config or results attribute quoted as code in prose.
INTERNAL_WORDS = ("issue", "issues", "feasibility study", "claim test", "claim tests", "could not be retrieved",
                  "todo", "fixme", "tbd", "session", "helper agent")
_INTERNAL = re.compile(r"\b(" + "|".join(re.escape(w) for w in INTERNAL_WORDS) + r")\b", re.IGNORECASE)
_TEMPLATE = re.compile(r"`(?:cfg|config|results|book)\.[A-Za-z_][A-Za-z_0-9.]*`|\{(?:cfg|results|book)\.[^}]*\}")


def prose_problems(notebook: dict) -> list[str]:
    """Every place a notebook's markdown reads as work in progress: a project-internal word (INTERNAL_WORDS), or an
    unrendered template (`cfg.x`, {cfg.x}) where the run's number belongs."""
    problems = []
    for index, cell in enumerate(notebook.get("cells", [])):
        if cell.get("cell_type") != "markdown":
            continue
        text = "".join(cell.get("source", ""))
        for match in _INTERNAL.finditer(text):
            problems.append(f"cell {index}: project-internal word {match.group(0)!r} in prose")
        for match in _TEMPLATE.finditer(text):
            problems.append(f"cell {index}: unrendered template {match.group(0)} in prose; show the run's value")
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    failed = []
    for notebook in chapters(argv or None):
        profile = (json.loads(notebook.read_text()).get("metadata", {}).get("accel") or {}).get("profile")
        if profile is None:
            print(f"{notebook.name}: no committed outputs (no accel.profile in its metadata); run `make outputs`")
            failed.append(notebook.name)
            continue
        print(f"{notebook.name}: nbval in profile {profile}", flush=True)
        env = dict(os.environ, ACCEL_PROFILE=profile)
        command = [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-o", "addopts=",
                   "-q", str(notebook)]
        if subprocess.run(command, env=env).returncode:
            failed.append(notebook.name)
    if failed:
        print(f"nbval failed for: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
