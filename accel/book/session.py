"""Start-up of a chapter: resolve the profile, pick the device, seed explicit generators, open the results file."""

from __future__ import annotations

import os
import platform
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import accel

from .results import Results

PROFILES = ("smoke", "cpu", "paper")
PROFILE_ENV = "ACCEL_PROFILE"
RESULTS_ENV = "ACCEL_RESULTS_PATH"
DEVICE_ENV = "ACCEL_DEVICE"


def resolve_profile(profile: str = "auto") -> str:
    """The profile a chapter runs in: ``ACCEL_PROFILE`` if set, else ``profile``. ``auto`` is ``cpu`` on every device:
    the ``paper`` profile (the papers' full recipes: hours to days even on a GPU) runs only when asked for by name.
    An unknown name raises ValueError listing the allowed ones."""
    requested = os.environ.get(PROFILE_ENV) or profile
    name = str(requested).strip().lower()
    if name == "auto":
        return "cpu"
    if name not in PROFILES:
        source = f"environment variable {PROFILE_ENV}" if os.environ.get(PROFILE_ENV) else "profile"
        raise ValueError(f"Invalid {source}: {requested!r}; allowed: 'auto', " + ", ".join(repr(p) for p in PROFILES))
    return name


def pick_device() -> torch.device:
    """CUDA when present, else CPU; ``ACCEL_DEVICE`` (e.g. ``cpu``, ``cuda:1``) overrides, and must name a device this
    torch build can use."""
    requested = os.environ.get(DEVICE_ENV)
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"Invalid environment variable {DEVICE_ENV}: {requested!r}; expected a torch device such as "
                         "'cpu' or 'cuda'") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"Invalid environment variable {DEVICE_ENV}: {requested!r}; this torch build "
                             f"({torch.__version__}) sees no CUDA device; unset it or use 'cpu'")
        if device.index is not None and device.index >= count:
            raise ValueError(f"Invalid environment variable {DEVICE_ENV}: {requested!r}; CUDA devices here: 0 to "
                             f"{count - 1}")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "accel": accel.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the vector kernels in use (ATEN_CPU_CAPABILITY)
    }


def _stream_seed(seed: int, stream: int | str) -> int:
    """A seed for one named stream of randomness, derived from (seed, stream) without touching global RNG state."""
    tag = stream if isinstance(stream, int) else zlib.crc32(str(stream).encode())
    return int(np.random.SeedSequence([seed, tag]).generate_state(1, dtype=np.uint64)[0] % (2**63))


@dataclass
class Book:
    """What a chapter needs after start-up. Randomness comes only from the explicit generators made here."""

    profile: str
    seed: int
    device: torch.device
    results: Results
    versions: dict[str, str] = field(default_factory=versions)

    def seed_for(self, stream: int | str = 0) -> int:
        """A reproducible integer seed for one stream (an experiment, a run): same (seed, stream), same number."""
        return _stream_seed(self.seed, stream)

    def generator(self, stream: int | str = 0, device: torch.device | str = "cpu") -> torch.Generator:
        """A fresh ``torch.Generator`` seeded from (seed, stream)."""
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed_for(stream))
        return generator

    def rng(self, stream: int | str = 0) -> np.random.Generator:
        """A fresh NumPy ``Generator`` seeded from (seed, stream)."""
        return np.random.default_rng(self.seed_for(stream))


def start(
    profile: str = "auto",
    seed: int = 0,
    *,
    notebook: str | None = None,
    results_path: str | os.PathLike | None = None,
    style: bool = True,
    quiet: bool = False,
) -> Book:
    """Set a chapter up and print one line: profile, device, versions.

    Args:
        profile: ``auto`` (= ``cpu``, on any device), ``smoke``, ``cpu`` or ``paper``; ``ACCEL_PROFILE`` wins.
        seed: the root of every generator the chapter uses (``Book.generator``/``Book.rng``); global RNGs untouched.
        notebook: the chapter's name, written to the results file.
        results_path: where the results JSON goes (papermill injects ``RESULTS_PATH``); if None, ``ACCEL_RESULTS_PATH``;
            if neither, results are kept in memory only. An existing file there is replaced only once this run
            records its first result.
        style: apply the book's plotting style.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"Invalid seed: {seed!r}; expected a non-negative integer")
    seed = int(seed)
    resolved = resolve_profile(profile)
    device = pick_device()
    results_path = results_path or os.environ.get(RESULTS_ENV)
    path = Path(results_path) if results_path else None
    book = Book(profile=resolved, seed=seed, device=device, results=None)  # type: ignore[arg-type]
    book.results = Results(
        path, notebook=notebook, profile=resolved, device=describe_device(device), seed=seed, versions=book.versions
    )
    if style:
        from .style import use_style

        use_style()
    if not quiet:
        v = book.versions
        print(
            f"accel {v['accel']} | profile {resolved} | device {describe_device(device)} | "
            f"torch {v['torch']} | python {v['python']} | seed {seed}"
        )
        if notebook:
            from .glance import run_time_line

            print(run_time_line(notebook))
    return book
