"""Hidden ``.part-*`` work files and folders owned by another process, live or killed (shared by the dataset tests).

``start_part_owner(folder)`` starts a child that creates a part folder (with a file in it) and a part file in folder
through accel.datasets.cache.new_part, as a build or a download does, then sleeps; ``killed_parts`` kills such a child
mid-"build", which leaves its parts behind exactly as a killed build or download would.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

_CHILD = """
import sys, time
from accel.datasets import cache
folder = sys.argv[1]
parts = [cache.new_part(folder, directory=True), cache.new_part(folder)]
(parts[0] / "column.bin").write_bytes(b"x" * 1000)
print(*parts, sep="\\n", flush=True)
time.sleep(600)
"""


def start_part_owner(folder: Path) -> tuple[subprocess.Popen, list[Path]]:
    """A live child that owns a part folder and a part file in folder: (the process, [folder part, file part])."""
    process = subprocess.Popen([sys.executable, "-c", _CHILD, str(folder)], stdout=subprocess.PIPE, text=True)
    parts = [Path(process.stdout.readline().strip()) for _ in range(2)]
    if not all(part.name.startswith(".part-") and part.exists() for part in parts):
        process.kill()
        raise RuntimeError(f"the part owner failed to create its parts: {parts}")
    return process, parts


def stop(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    process.send_signal(sig)
    process.wait(timeout=30)
    process.stdout.close()


def killed_parts(folder: Path, sig: int = signal.SIGKILL) -> tuple[int, list[Path]]:
    """(pid, parts) of a child killed with sig while it owned a part folder and a part file in folder."""
    process, parts = start_part_owner(folder)
    stop(process, sig)
    assert all(part.exists() for part in parts)  # nothing ran to remove them
    return process.pid, parts
