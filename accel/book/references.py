"""``make references``: re-run every chapter in smoke and rewrite tests/reference/, printing what changed.

    python -m accel.book.references [notebooks/00_where_time_goes.ipynb ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from .build import chapters
from .regression import diff_references, load, make_reference, reference_path, run_smoke


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory() as tmp:
        for notebook in chapters(argv or None):
            new = make_reference(run_smoke(notebook, Path(tmp)))
            path = reference_path(notebook.stem)
            old = load(path) if path.exists() else None
            changes = diff_references(old, new)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(new, indent=1, ensure_ascii=False) + "\n")
            status = "unchanged" if not changes else f"{len(changes)} change(s)"
            print(f"{path.relative_to(path.parents[2])}: {status}")
            for line in changes:
                print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
