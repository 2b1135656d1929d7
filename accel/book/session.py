"""Start-up of a chapter: resolve the profile, pick the device, seed explicit generators, open the results file."""

from __future__ import annotations

import json
import os
import platform
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import accel
from accel.experiments import replay

from .budget import DEFAULT_BUDGET_MINUTES, describe, fit_budget, minutes
from .results import Results

PROFILES = ("smoke", "cpu", "gpu", "paper")
PROFILE_ENV = "ACCEL_PROFILE"
RESULTS_FROM_ENV = "ACCEL_RESULTS_FROM"
RESULTS_ENV = "ACCEL_RESULTS_PATH"
DEVICE_ENV = "ACCEL_DEVICE"


def resolve_profile(profile: str = "auto", device: torch.device | None = None) -> str:
    """The profile a chapter runs in: ``ACCEL_PROFILE`` if set, else ``profile``. ``auto`` is ``gpu`` on a CUDA device
    (``device``, else the one ``pick_device`` picks) and ``cpu`` otherwise: the ``paper`` profile (the papers' full
    recipes: hours to days even on a GPU) runs only when asked for by name. An unknown name raises ValueError listing
    the allowed ones."""
    requested = os.environ.get(PROFILE_ENV) or profile
    name = str(requested).strip().lower()
    if name == "auto":
        return "gpu" if (device if device is not None else pick_device()).type == "cuda" else "cpu"
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

    @property
    def replaying(self) -> bool:
        """True when the chapter renders a recorded run (``RESULTS_FROM``) instead of training."""
        return replay.active().replaying

    def fit(self, cfg, cost_model, *probe_args, trims=(), budget_minutes: float | None = None, quiet: bool = False):
        """The chapter's config for this run: print the estimated run time on this device (from a short probe,
        ``cost_model(cfg, *probe_args)``), and trim ``trims`` (the chapter's ``TRIMS``: seeds, then epochs or steps)
        until it fits ``budget_minutes`` (None: the profile's default, ``DEFAULT_BUDGET_MINUTES``; none for cpu).
        When replaying a recorded run, no probe runs and the recorded run's config comes back."""
        if budget_minutes is None:
            budget_minutes = DEFAULT_BUDGET_MINUTES.get(self.profile)
        fitted = _planned(self, cfg, cost_model, probe_args, trims, budget_minutes, quiet)
        trimmed = (self.results.data.get("plan") or {}).get("trimmed")
        if self.replaying and trimmed and not quiet:  # a replay skips _planned's own printing
            print(f"The recorded run was trimmed to its budget: {'; '.join(trimmed)}.")
        return fitted


def start(
    profile: str = "auto",
    seed: int = 0,
    *,
    notebook: str | None = None,
    results_path: str | os.PathLike | None = None,
    results_from: str | os.PathLike | None = None,
    style: bool = True,
    quiet: bool = False,
) -> Book:
    """Set a chapter up and print one line: profile, device, versions.

    Args:
        profile: ``auto`` (``gpu`` on CUDA, else ``cpu``), ``smoke``, ``cpu``, ``gpu`` or ``paper``; ``ACCEL_PROFILE``
            wins.
        seed: the root of every generator the chapter uses (``Book.generator``/``Book.rng``); global RNGs untouched.
        notebook: the chapter's name, written to the results file.
        results_path: where the results JSON goes (papermill injects ``RESULTS_PATH``); if None, ``ACCEL_RESULTS_PATH``;
            if neither, results are kept in memory only. An existing file there is replaced only once this run
            records its first result.
        results_from: a results file recorded by an earlier run of this chapter (if None, ``ACCEL_RESULTS_FROM``):
            the chapter then renders that run's tables, figures and verdicts without training; its profile and seed
            are the recorded run's.
        style: apply the book's plotting style.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"Invalid seed: {seed!r}; expected a non-negative integer")
    seed = int(seed)
    device = pick_device()
    results_path = results_path or os.environ.get(RESULTS_ENV)
    path = Path(results_path) if results_path else None
    results_from = results_from or os.environ.get(RESULTS_FROM_ENV)
    recorded = _recorded_run(results_from, notebook, path) if results_from else None
    resolved = recorded["profile"] if recorded else resolve_profile(profile, device)
    seed = int(recorded["seed"]) if recorded else seed
    book = Book(profile=resolved, seed=seed, device=device, results=None)  # type: ignore[arg-type]
    book.results = Results(
        path, notebook=notebook, profile=resolved, device=describe_device(device), seed=seed, versions=book.versions
    )
    if recorded:
        book.results.replayed_from(recorded, str(results_from))
        replay.begin(source=recorded["replay"], source_name=f"RESULTS_FROM {str(results_from)!r}")
    else:
        replay.begin(record=book.results.replay_value)
    if style:
        from .style import use_style

        use_style()
    if not quiet:
        v = book.versions
        print(
            f"accel {v['accel']} | profile {resolved} | device {describe_device(device)} | "
            f"torch {v['torch']} | python {v['python']} | seed {seed}"
        )
        if recorded:
            print(f"Rendering the run recorded in {results_from}: profile {recorded['profile']} on "
                  f"{recorded['device']}, commit {str(recorded.get('git_commit'))[:12]}, seed {recorded['seed']}, "
                  f"{minutes(recorded.get('wall_time_s') or 0)} of training then; nothing is trained now.")
        elif notebook:
            from .glance import run_time_line

            print(run_time_line(notebook))
    return book


def _recorded_run(results_from: str | os.PathLike, notebook: str | None, results_path: Path | None) -> dict:
    """The results file named by RESULTS_FROM, checked: it exists, is this chapter's and holds recorded values."""
    source = Path(results_from)
    if not source.is_file():
        raise ValueError(f"Invalid RESULTS_FROM: {str(results_from)!r} is not a file; expected a results file such as "
                         f"data/results/{notebook or '<chapter>'}.cpu.json")
    if results_path is not None and results_path.resolve() == source.resolve():
        raise ValueError(f"Invalid RESULTS_PATH: {str(results_path)!r} is the RESULTS_FROM file; rendering a recorded "
                         "run must not overwrite it: give another RESULTS_PATH or None")
    try:
        recorded = json.loads(source.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"Invalid RESULTS_FROM: {str(results_from)!r} is not a readable results file ({error})") \
            from None
    if notebook and recorded.get("notebook") != notebook:
        raise ValueError(f"Invalid RESULTS_FROM: {str(results_from)!r} was recorded by chapter "
                         f"{recorded.get('notebook')!r}, not {notebook!r}")
    if not recorded.get("replay"):
        raise ValueError(f"Invalid RESULTS_FROM: {str(results_from)!r} holds no recorded values (\"replay\"): it was "
                         "written by an older version of the book; re-run the chapter to record one")
    return recorded


@replay.replayable
def _planned(book: Book, cfg, cost_model, probe_args, trims, budget_minutes, quiet):
    estimate_of = cost_model(cfg, *probe_args)
    untrimmed = estimate_of(cfg)
    cfg, estimate, trimmed = fit_budget(cfg, estimate_of, budget_minutes, trims)
    book.results.plan({"estimate_s": round(estimate.seconds, 1),
                       "parts_s": {k: round(v, 1) for k, v in estimate.parts.items()}, "basis": estimate.basis,
                       "budget_minutes": budget_minutes, "trimmed": trimmed})
    if not quiet:
        print(f"Estimated run time on this device, profile {book.profile}: {describe(untrimmed)}.")
        if budget_minutes is None:
            print("No time budget (BUDGET_MINUTES = None): nothing trimmed.")
        elif trimmed:
            over = estimate.seconds > 60 * budget_minutes
            print(f"Budget {budget_minutes:g} min: trimmed {'; '.join(trimmed)}; estimate now "
                  f"{minutes(estimate.seconds)}"
                  + (" (the smallest this chapter allows; still above the budget)." if over else "."))
        else:
            print(f"Budget {budget_minutes:g} min: fits, nothing trimmed.")
    return cfg
