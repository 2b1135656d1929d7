"""``make verify`` (second half): nbval on each committed notebook, in the profile that produced its outputs.

Only cells marked ``# NBVAL_CHECK_OUTPUT`` are compared (``--nbval-lax``): they print rounded numbers that the seeds
fix. The profile is read from the notebook's metadata (``accel.profile``, written by ``make outputs``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .build import chapters


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
