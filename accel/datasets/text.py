"""Byte-level text corpora for the ST-MoE chapter's language model, and the samplers that cut them into windows.

Both corpora come back as a :class:`TextCorpus` of 1-D uint8 tensors (one byte is one token, vocabulary 256):

* :func:`load_stdlib_corpus` (smoke and cpu profiles): the ``.py`` source files of the running Python's standard
  library, so it is on every machine and needs no network. Test folders, site-packages, generated documentation
  and platform-specific files are left out; the rest is put in a fixed order (by the SHA-256 of each file's relative
  path, so any byte budget gets a cross-section of the library, not just ``asyncio/``), and every ``val_every``-th
  file in that order goes to validation, so validation text comes from files never trained on. Each split
  concatenates its files, each followed by a NUL byte (never found in source code, so it marks the end of a file
  the way an end-of-text token does), up to its share of ``max_bytes`` (1 / val_every for validation). The result
  is cached under the data cache with a JSON manifest (Python version, file counts, bytes, SHA-256). The standard
  library differs a little between Python versions, so the corpus does too; the manifest says which.
* :func:`load_enwik8` (paper profile): enwik8, the first 10^8 bytes of the March 2006 English Wikipedia XML dump
  (the Hutter Prize file), with the standard 90M / 5M / 5M split. The 36 MB zip goes through
  :func:`accel.datasets.cache.download` (SHA-256 checked, atomic); its single member ``enwik8`` is streamed into a
  cached raw byte file, checked by the zip's CRC-32, and read back with one ``np.fromfile``.

Samplers: :func:`random_windows` draws a training batch of random windows (inputs and next-byte targets) from an
explicit ``torch.Generator``; :class:`ValidationWindows` iterates over fixed, non-overlapping windows, the same ones
every time, so validation losses are comparable across runs and steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sysconfig
import time
import urllib.parse
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import cache

__all__ = [
    "ENWIK8_BYTES",
    "ENWIK8_SHA256",
    "ENWIK8_URL",
    "ENWIK8_ZIP_BYTES",
    "STDLIB_DEFAULT_BYTES",
    "TextCorpus",
    "TextFormatError",
    "ValidationWindows",
    "decode",
    "load_corpus",
    "load_enwik8",
    "load_stdlib_corpus",
    "random_windows",
    "stdlib_files",
]

_CHUNK = 1 << 20

# ---------------------------------------------------------------------------------------------------------- corpora


class TextFormatError(RuntimeError):
    """A corpus file's checksum was accepted (or it had none), but its contents are not in the expected format."""


@dataclass(frozen=True, eq=False)
class TextCorpus:
    """A byte-level corpus: ``train``, ``val`` (and ``test``, or None) are 1-D uint8 tensors of byte values.

    ``manifest`` describes where the bytes came from (source, version, sizes, SHA-256 of each split).
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor | None
    manifest: dict[str, Any]

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{split}={len(t):,}" for split, t in [("train", self.train), ("val", self.val), ("test", self.test)]
            if t is not None
        )
        return f"TextCorpus({self.name!r}, {sizes} bytes)"


def decode(tokens: torch.Tensor | np.ndarray | bytes) -> str:
    """Byte tokens ([N] or any shape, flattened) -> text, undecodable bytes shown as U+FFFD."""
    if isinstance(tokens, (bytes, bytearray)):
        return bytes(tokens).decode("utf-8", errors="replace")
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    return bytes(np.asarray(tokens, dtype=np.uint8).ravel()).decode("utf-8", errors="replace")


def _sha256_bytes(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


# ------------------------------------------------------------------------------------------- the standard library

STDLIB_DEFAULT_BYTES = 4 * 2**20  # 4 MiB: well below the ~11 MB the library has, so the same size on every version
_STDLIB_SEPARATOR = b"\x00"
# pydoc_data/ is one generated 0.75 MB file of documentation prose, not source code.
_STDLIB_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data"}
)


def _excluded_dir(name: str) -> bool:
    # config-3.X-<platform>/ holds the platform's python-config.py: not the same on every machine.
    return name in _STDLIB_EXCLUDED_DIRS or name.startswith("config-")


def _stdlib_root(stdlib: str | os.PathLike[str] | None) -> Path:
    root = Path(sysconfig.get_paths()["stdlib"] if stdlib is None else stdlib).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Standard library folder not found: {root}")
    return root


def stdlib_files(stdlib: str | os.PathLike[str] | None = None) -> list[str]:
    """Relative POSIX paths of the standard library's ``.py`` files, in corpus order.

    stdlib: the folder to read (default: the running interpreter's, ``sysconfig.get_paths()["stdlib"]``).
    Left out: folders named test, tests, idle_test, site-packages, dist-packages, __pycache__, pydoc_data and
    config-* (anywhere in the tree), and the platform's ``_sysconfigdata*.py``. Order: by the SHA-256 of the
    relative path, a fixed pseudo-random order that is the same on every machine for the files they share.
    """
    root = _stdlib_root(stdlib)
    found = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not _excluded_dir(d)]  # prune: site-packages can be huge
        rel = Path(folder).relative_to(root)
        for name in filenames:
            if name.endswith(".py") and not name.startswith("_sysconfigdata") and os.path.isfile(Path(folder, name)):
                found.append((rel / name).as_posix())
    return sorted(found, key=lambda path: hashlib.sha256(path.encode()).hexdigest())


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r}; expected an int >= {minimum}")


def _stdlib_fingerprint(root: Path, files: list[str]) -> str:
    """SHA-256 over each file's path, size and modification time: changes when the library on disk changes."""
    digest = hashlib.sha256(str(root.resolve()).encode())
    for rel in files:
        st = (root / rel).stat()
        digest.update(f"\n{rel}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def _build_stdlib(root: Path, files: list[str], max_bytes: int | None, val_every: int) -> tuple[bytes, bytes, dict]:
    """Every val_every-th file (in order) goes to validation, the others to training; each split concatenates its
    files (each + separator) up to its share of max_bytes: val max_bytes // val_every, train the rest."""
    budget = {"train": None, "val": None}
    if max_bytes is not None:
        budget = {"val": max_bytes // val_every, "train": max_bytes - max_bytes // val_every}
        if budget["val"] == 0:
            raise ValueError(
                f"Invalid max_bytes: {max_bytes!r}; expected at least val_every = {val_every} (validation gets "
                f"max_bytes // val_every bytes)"
            )
    if len(files) < val_every:
        raise ValueError(
            f"Invalid val_every: {val_every!r}; the standard library at {root} has only {len(files)} files, "
            f"expected at least val_every of them"
        )
    parts: dict[str, list[bytes]] = {"train": [], "val": []}
    size = {"train": 0, "val": 0}
    truncated: dict[str, str | None] = {"train": None, "val": None}
    for position, rel in enumerate(files):
        split = "val" if position % val_every == val_every - 1 else "train"
        limit = budget[split]
        if limit is not None and size[split] >= limit:
            if all(size[s] >= budget[s] for s in size):
                break
            continue
        piece = (root / rel).read_bytes() + _STDLIB_SEPARATOR
        if limit is not None and size[split] + len(piece) > limit:
            piece, truncated[split] = piece[: limit - size[split]], rel
        parts[split].append(piece)
        size[split] += len(piece)
    info = {
        "files": {split: len(pieces) for split, pieces in parts.items()},
        "truncated_files": truncated,
        "files_available": len(files),
    }
    return b"".join(parts["train"]), b"".join(parts["val"]), info


def _read_split(folder: Path, split: str, manifest: dict) -> np.ndarray | None:
    path = folder / f"{split}.bin"
    if not path.is_file() or path.stat().st_size != manifest["bytes"][split]:
        return None
    data = np.fromfile(path, dtype=np.uint8)
    return data if _sha256_bytes(data) == manifest["sha256"][split] else None


def _write_atomic_folder(target: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (name -> bytes) as the folder ``target``, complete or not at all."""
    with cache.atomic_folder(target) as tmp:
        for name, payload in files.items():
            (tmp / name).write_bytes(payload)


def load_stdlib_corpus(
    max_bytes: int | None = STDLIB_DEFAULT_BYTES,
    *,
    val_every: int = 20,
    root: str | os.PathLike[str] | None = None,
    stdlib: str | os.PathLike[str] | None = None,
) -> TextCorpus:
    """The Python standard library's ``.py`` files as a byte corpus (train and val; ``test`` is None).

    max_bytes: total bytes of train + val, or None for every file. Validation gets ``max_bytes // val_every``
        bytes, training the rest; in each split the file that crosses its share is cut. The default 4 MiB is well
        below what recent Pythons have (11.3 MB for 3.11: 10.7 MB train, 0.6 MB validation), so it fixes the size.
    val_every: every ``val_every``-th file in corpus order (see :func:`stdlib_files`) goes to validation, so the
        model never trains on a validation file.
    root: cache folder (default :func:`accel.datasets.cache.cache_dir`); the corpus lives in
        ``root/python-stdlib/py<version>-<max_bytes>-every<val_every>/`` as ``train.bin``, ``val.bin`` (raw bytes)
        and ``manifest.json``. It is rebuilt when the library on disk changes (paths, sizes, modification times) or
        a cached file fails its SHA-256; building reads the files once (a fraction of a second).
    stdlib: another folder to read instead of this interpreter's standard library (tests use a small fake one).
    """
    if max_bytes is not None:
        _check_positive_int("max_bytes", max_bytes)
    _check_positive_int("val_every", val_every, minimum=2)
    library = _stdlib_root(stdlib)
    files = stdlib_files(library)
    if not files:
        raise FileNotFoundError(f"No .py files found under {library}")
    fingerprint = _stdlib_fingerprint(library, files)

    version = platform.python_version() if stdlib is None else "custom"
    base = Path(root).expanduser() if root is not None else cache.cache_dir()
    folder = base / "python-stdlib" / f"py{version}-{max_bytes if max_bytes is not None else 'all'}-every{val_every}"
    manifest_path = folder / "manifest.json"
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("source_fingerprint") == fingerprint:
                train, val = _read_split(folder, "train", manifest), _read_split(folder, "val", manifest)
                if train is not None and val is not None:
                    return TextCorpus("python-stdlib", torch.from_numpy(train), torch.from_numpy(val), None, manifest)
        except (ValueError, KeyError, TypeError):
            pass  # an unreadable manifest: rebuild below

    start = time.perf_counter()
    train_bytes, val_bytes, info = _build_stdlib(library, files, max_bytes, val_every)
    manifest = {
        "name": "python-stdlib",
        "description": "the .py files of the Python standard library, byte level, each followed by a NUL byte",
        "licence": "PSF-2.0 (Python Software Foundation License)",
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "stdlib": str(library),
        "max_bytes": max_bytes,
        "val_every": val_every,
        "order": "sha256 of each file's relative POSIX path",
        "excluded": "folders test, tests, idle_test, site-packages, dist-packages, __pycache__, pydoc_data, "
        "config-*; files _sysconfigdata*.py",
        **info,
        "bytes": {"train": len(train_bytes), "val": len(val_bytes)},
        "sha256": {"train": hashlib.sha256(train_bytes).hexdigest(), "val": hashlib.sha256(val_bytes).hexdigest()},
        "files_sha256": hashlib.sha256("\n".join(files).encode()).hexdigest(),
        "source_fingerprint": fingerprint,
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    payload = json.dumps(manifest, indent=1).encode()
    _write_atomic_folder(folder, {"train.bin": train_bytes, "val.bin": val_bytes, "manifest.json": payload})
    train = np.frombuffer(bytearray(train_bytes), dtype=np.uint8)
    val = np.frombuffer(bytearray(val_bytes), dtype=np.uint8)
    return TextCorpus("python-stdlib", torch.from_numpy(train), torch.from_numpy(val), None, manifest)


# --------------------------------------------------------------------------------------------------------- enwik8

ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
# SHA-256 of the 36,445,475-byte enwik8.zip, as published in Hugging Face datasets' enwik8 dataset_infos.json and
# pinned identically by several independent projects; not recomputed here (no network when this was written).
ENWIK8_SHA256 = "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc"
ENWIK8_ZIP_BYTES = 36_445_475
ENWIK8_BYTES = 100_000_000  # the member "enwik8" (published md5 a1fa5ffddb56f4953e226637dabbb36a)
_ENWIK8_MEMBER = "enwik8"


def _extract_member(zip_path: Path, target: Path, member: str) -> tuple[int, str]:
    """Stream ``member`` of the zip into ``target`` (atomically); returns (bytes, sha256). zipfile checks the CRC-32."""
    digest = hashlib.sha256()
    size = 0
    part = cache.new_part(target.parent)
    try:
        with open(part, "wb") as out:
            try:
                with zipfile.ZipFile(zip_path) as archive:
                    names = archive.namelist()
                    if member not in names:
                        raise TextFormatError(f"{zip_path} has no member {member!r}; it has {names[:5]}")
                    with archive.open(member) as source:
                        while chunk := source.read(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
                raise TextFormatError(
                    f"{zip_path} is not a readable zip archive ({type(exc).__name__}: {exc})"
                ) from exc
        if size == 0:
            raise TextFormatError(f"{zip_path}: member {member!r} is empty")
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def load_enwik8(
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    url: str | None = None,
    sha256: str | None = None,
    progress: bool = True,
) -> TextCorpus:
    """enwik8 as a byte corpus: train = the first 90%, val = the next 5%, test = the last 5% of the member's bytes
    (90,000,000 / 5,000,000 / 5,000,000 for the real file, the split every enwik8 result uses).

    root: folder for the zip and the extracted bytes (default: the accel data cache).
    download: fetch the zip when it is missing; with ``False`` a missing zip raises ``FileNotFoundError`` saying
        where to put it. A present zip is SHA-256 checked either way.
    url, sha256: another source (a mirror, or a test fixture in the same format: a zip with one member named
        ``enwik8``). The zip is cached under the URL's file name, its member as ``<name>.bin`` (+ ``.bin.json``).

    Raises :class:`~accel.datasets.cache.ChecksumError` (wrong SHA-256), :class:`~accel.datasets.cache.DownloadError`
    (network) and :class:`TextFormatError` (not a zip, no ``enwik8`` member, CRC error, wrong size). The first call
    extracts 100 MB (a second or two); later calls check the zip's and the bytes' SHA-256 and read them.
    """
    cache.check_bool("download", download)
    cache.check_bool("progress", progress)
    source = ENWIK8_URL if url is None else url
    checksum = ENWIK8_SHA256 if sha256 is None else sha256
    filename = urllib.parse.unquote(urllib.parse.urlsplit(source).path.rsplit("/", 1)[-1])
    if not filename:
        raise ValueError(f"Invalid url: {source!r}; expected a URL that ends in a file name")
    folder = Path(root).expanduser() if root is not None else cache.cache_dir()
    zip_path = folder / filename
    if not download and not zip_path.exists():
        size = f", {ENWIK8_ZIP_BYTES:,} bytes" if source == ENWIK8_URL else ""
        raise FileNotFoundError(
            f"enwik8 archive not found at {zip_path} and download=False. Download {source} (sha256 {checksum}{size}) "
            f"and place it there, or call load_enwik8(download=True)."
        )
    zip_path = cache.download(source, filename, checksum, root=folder, progress=progress)

    stem = filename[: -len(".zip")] if filename.lower().endswith(".zip") else filename
    bin_path, info_path = folder / f"{stem}.bin", folder / f"{stem}.bin.json"
    data = None
    if bin_path.is_file() and info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
            if info.get("zip_sha256") == checksum.lower() and bin_path.stat().st_size == info["bytes"]:
                data = np.fromfile(bin_path, dtype=np.uint8)
                if _sha256_bytes(data) != info["sha256"]:
                    data = None
        except (ValueError, KeyError, TypeError):
            data = None
    if data is None:
        size, digest = _extract_member(zip_path, bin_path, _ENWIK8_MEMBER)
        if checksum.lower() == ENWIK8_SHA256 and size != ENWIK8_BYTES:
            bin_path.unlink()
            raise TextFormatError(
                f"{zip_path}: member {_ENWIK8_MEMBER!r} has {size:,} bytes, expected {ENWIK8_BYTES:,}"
            )
        info = {
            "source": source,
            "zip_sha256": checksum.lower(),
            "member": _ENWIK8_MEMBER,
            "bytes": size,
            "sha256": digest,
        }
        tmp = cache.new_part(folder)
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, info_path)
        data = np.fromfile(bin_path, dtype=np.uint8)

    n = len(data)
    n_eval = n // 20
    if n_eval < 2:
        raise TextFormatError(f"{zip_path}: member {_ENWIK8_MEMBER!r} has {n} bytes, too few to split 90/5/5")
    tensor = torch.from_numpy(data)
    train, val, test = tensor[: n - 2 * n_eval], tensor[n - 2 * n_eval : n - n_eval], tensor[n - n_eval :]
    manifest = {
        "name": "enwik8",
        "description": "the first 10^8 bytes of the English Wikipedia XML dump of 2006-03-03 (Hutter Prize)",
        **info,
        "split": {"train": len(train), "val": len(val), "test": len(test)},
    }
    return TextCorpus("enwik8", train, val, test, manifest)


def load_corpus(name: str, **kwargs: Any) -> TextCorpus:
    """``"python-stdlib"`` -> :func:`load_stdlib_corpus`, ``"enwik8"`` -> :func:`load_enwik8` (kwargs passed on)."""
    loaders = {"python-stdlib": load_stdlib_corpus, "enwik8": load_enwik8}
    if name not in loaders:
        raise ValueError(f"Invalid name: {name!r}; expected one of {tuple(loaders)}")
    return loaders[name](**kwargs)


# -------------------------------------------------------------------------------------------------------- samplers


def _as_tokens(data: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A 1-D integer tensor over the same memory where possible (uint8 for bytes)."""
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in "iu":
            raise ValueError(f"Invalid data: dtype {data.dtype}; expected integer token ids (uint8 for bytes)")
        if data.dtype.kind == "u" and data.dtype != np.uint8:
            data = data.astype(np.int64)
        data = torch.from_numpy(data)
    if not isinstance(data, torch.Tensor):
        raise ValueError(f"Invalid data: {type(data).__name__}; expected a 1-D tensor or array of token ids")
    if data.dtype.is_floating_point or data.dtype.is_complex or data.dtype == torch.bool:
        raise ValueError(f"Invalid data: dtype {data.dtype}; expected integer token ids (uint8 for bytes)")
    if data.dim() != 1:
        raise ValueError(f"Invalid data: shape {tuple(data.shape)}; expected a 1-D sequence")
    return data


def _check_window(n: int, batch_size: int, seq_len: int) -> None:
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("seq_len", seq_len)
    if n < seq_len + 1:
        raise ValueError(
            f"Invalid seq_len: {seq_len!r}; the data have {n} tokens, expected seq_len <= len(data) - 1 = {n - 1} "
            f"(a window needs seq_len + 1 tokens: inputs and next-token targets)"
        )


def _cut(data: torch.Tensor, starts: torch.Tensor, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    windows = data[starts.to(data.device)[:, None] + torch.arange(seq_len + 1, device=data.device)]  # [B, T + 1]
    if device is not None:
        windows = windows.to(device, non_blocking=True)  # move the small dtype, widen on arrival
    windows = windows.long()
    return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()


def random_windows(
    data: torch.Tensor | np.ndarray,
    batch_size: int,
    seq_len: int,
    generator: torch.Generator,
    *,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch of random windows: (x [B, T], y [B, T]) int64 with y[b, t] = x[b, t + 1] (next token).

    data: 1-D token ids (uint8 bytes from a :class:`TextCorpus`, or a NumPy array; not copied).
    Each window starts uniformly at random in [0, len(data) - seq_len - 1], drawn with one ``torch.randint`` of
    shape [B] from ``generator`` (the global RNG is never used; a CUDA generator draws on its device). The windows
    are gathered where ``data`` lives and moved to ``device`` (default: that same place) before widening to int64.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"Invalid generator: {generator!r}; expected a torch.Generator (the global RNG is not used)")
    data = _as_tokens(data)
    _check_window(len(data), batch_size, seq_len)
    starts = torch.randint(len(data) - seq_len, (batch_size,), generator=generator, device=generator.device)
    return _cut(data, starts, seq_len, device)


class ValidationWindows:
    """Fixed evaluation windows over held-out data; iterating yields (x [b, T], y [b, T]) int64 batches, in order.

    Window j covers data[j T : j T + T + 1] (inputs and next-token targets), so the (len(data) - 1) // T windows
    tile the data without overlap and every target is predicted once. ``max_windows`` keeps that many of them,
    evenly spaced over the data (window ``(i * total) // max_windows`` for i = 0, 1, ...), for a cheaper estimate
    that still sees all of it. Batches hold ``batch_size`` windows (the last one may hold fewer); no randomness,
    so every pass, every run and every arm of an experiment evaluates on the same bytes.
    """

    def __init__(
        self,
        data: torch.Tensor | np.ndarray,
        batch_size: int,
        seq_len: int,
        *,
        max_windows: int | None = None,
        device: torch.device | str | None = None,
    ):
        self.data = _as_tokens(data)
        _check_window(len(self.data), batch_size, seq_len)
        if max_windows is not None:
            _check_positive_int("max_windows", max_windows)
        self.batch_size, self.seq_len, self.device = batch_size, seq_len, device
        total = (len(self.data) - 1) // seq_len
        keep = total if max_windows is None else min(max_windows, total)
        self.starts = (torch.arange(keep) * total // keep) * seq_len  # [num_windows]

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    @property
    def num_tokens(self) -> int:
        """Targets per pass: num_windows * seq_len."""
        return self.num_windows * self.seq_len

    def __len__(self) -> int:
        return -(-self.num_windows // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for first in range(0, self.num_windows, self.batch_size):
            yield _cut(self.data, self.starts[first : first + self.batch_size], self.seq_len, self.device)
