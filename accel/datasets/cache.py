"""The one download helper every dataset uses.

Contract of :func:`download`:

* Files live in :func:`cache_dir` (``$ACCEL_DATA_DIR``, else ``data/cache`` in a source checkout, else
  ``~/.cache/accel``) unless ``root`` is given.
* A cached file whose SHA-256 matches is returned without touching the network, so everything works
  offline once the files are in place.
* A cached file whose SHA-256 does *not* match is never deleted (the user may have put it there):
  :class:`ChecksumError` says where it is and asks for it to be removed.
* Otherwise the file is streamed into a hidden ``.part-*`` file next to the target, verified, and moved
  into place with :func:`os.replace`. On any failure (network, HTTP, timeout, a connection dropped before
  Content-Length bytes arrived, checksum, Ctrl-C) the partial file is removed, so the target path either holds
  the verified file or nothing.
* A cache folder that cannot be written raises ``PermissionError`` naming the folder and ``$ACCEL_DATA_DIR``.

Work files and folders (:func:`new_part`, used by every writer in accel.datasets) are named
``.part-<pid>-<host>-<random>``: the creating process's PID and a tag of its host name. A process killed by
SIGKILL or SIGTERM (or a power cut) cannot remove its part, so each new part first removes the stale ones in its
folder (:func:`remove_stale_parts`): those of this host whose PID no longer runs. A part of a live process, or of
another host sharing the folder, is never touched (a dead PID since reused keeps its part until that process ends
too). Parts named ``.part-*`` by older versions, with no owner in the name, are removed once nothing in them has
changed for :data:`LEGACY_PART_AGE` seconds (a day).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import math
import numbers
import os
import re
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

__all__ = [
    "CACHE_ENV",
    "ChecksumError",
    "DownloadError",
    "atomic_folder",
    "cache_dir",
    "download",
    "new_part",
    "remove_stale_parts",
    "sha256sum",
]

CACHE_ENV = "ACCEL_DATA_DIR"
_CHUNK = 1 << 20
_SCHEMES = ("http", "https", "file")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
LEGACY_PART_AGE = 24 * 3600  # seconds: a .part-* without an owner in its name is stale when unchanged this long
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_OWNED_PART = re.compile(r"\.part-(\d+)-([0-9a-f]{8})-")


class DownloadError(RuntimeError):
    """A file could not be downloaded; the message says why and how to provide it offline."""


class ChecksumError(DownloadError):
    """A downloaded or cached file does not have the expected SHA-256."""


def check_bool(name: str, value) -> bool:
    """value as a bool, or ValueError naming the argument: "no" or 1 must not pass for True."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Invalid {name}: {value!r}; expected True or False")
    return bool(value)


@contextmanager
def _writing_to(folder: Path) -> Iterator[None]:
    """Turn a refusal to write in folder (no permission, read-only file system) into a PermissionError that names
    the folder and the variable that moves the cache; the raw one says neither."""
    try:
        yield
    except OSError as exc:
        if not (isinstance(exc, PermissionError) or exc.errno == errno.EROFS):
            raise
        raise PermissionError(
            f"Cannot write to the cache folder {folder} ({exc.strerror or exc}). Make it writable, or set "
            f"{CACHE_ENV} to a writable folder to move the cache (or pass root=...)."
        ) from exc


def cache_dir() -> Path:
    """The folder downloads go to by default, created on demand."""
    if env := os.environ.get(CACHE_ENV):
        path = Path(env).expanduser()
    else:
        repo = Path(__file__).resolve().parents[2]
        in_checkout = (repo / "pyproject.toml").is_file() and (repo / "data").is_dir()
        path = repo / "data" / "cache" if in_checkout else Path.home() / ".cache" / "accel"
    with _writing_to(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def _running(pid: int) -> bool:
    """Whether process pid exists on this machine (True when we cannot tell)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would signal the process on Windows: never judge there
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):
        return True  # e.g. PermissionError: it exists, under another user
    return True


def _last_change(path: Path) -> float:
    """The newest mtime of path and, for a folder, of its direct entries."""
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        times += [entry.stat(follow_symlinks=False).st_mtime for entry in os.scandir(path)]
    return max(times)


def remove_stale_parts(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the ``.part-*`` files and folders in folder that no live process owns (module docstring); returns
    them. Safe to call at any time: it never touches a part whose owner may still run; errors are ignored."""
    removed = []
    try:
        entries = [Path(entry.path) for entry in os.scandir(folder) if entry.name.startswith(".part-")]
    except OSError:
        return removed
    for path in entries:
        try:
            owned = _OWNED_PART.match(path.name)
            if owned:
                stale = owned[2] == _HOST and not _running(int(owned[1]))
            else:
                stale = time.time() - _last_change(path) > LEGACY_PART_AGE
            if not stale:
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass  # gone already, or not ours to remove: leave it
    return removed


def new_part(folder: str | os.PathLike[str], *, directory: bool = False, suffix: str = "") -> Path:
    """A new empty hidden work file (or folder) in folder, ``.part-<pid>-<host>-<random><suffix>``, to be filled
    and then renamed into place (or removed on failure). Creates folder, and first removes its stale parts."""
    folder = Path(folder)
    prefix = f".part-{os.getpid()}-{_HOST}-"
    with _writing_to(folder):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_parts(folder)
        if directory:
            return Path(tempfile.mkdtemp(dir=folder, prefix=prefix, suffix=suffix))
        handle, name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
        os.close(handle)
        return Path(name)


@contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder of generated files atomically: yields a hidden temporary folder next to ``target`` to fill;
    on success it is renamed to ``target``, on any error it is removed, so ``target`` is complete or absent.

    An existing ``target`` (a stale or damaged build its caller decided to replace) is moved aside and removed
    first. If another process renames its own complete build into place first, that one is kept and ours dropped.
    """
    target = Path(target)
    tmp = new_part(target.parent, directory=True)
    try:
        yield tmp
        if target.exists():
            stale = new_part(target.parent, directory=True)  # a part too: removed later if we die before rmtree
            try:
                os.rename(target, stale / "old")
            except OSError:
                pass  # another process moved or replaced it first
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():  # not a concurrent builder that got there first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256sum(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _offline_hint(url: str, target: Path, sha256: str) -> str:
    return (
        f"To work offline, download {url} elsewhere and place it at {target} (sha256 {sha256}), "
        f"or set {CACHE_ENV} to a folder that holds it."
    )


def stream_download(url: str, part: Path, *, hint: str, desc: str, progress: bool, timeout: float,
                    expected_bytes: int | None = None) -> tuple[str, int]:
    """Stream ``url`` into the file ``part`` and return (its SHA-256, its size in bytes). The caller removes ``part``
    on any failure. ``hint`` ends every error message (what to do instead).

    Raises :class:`DownloadError` when the server cannot be reached or fails, or the connection drops before all of
    its Content-Length arrived; :class:`ChecksumError` when ``expected_bytes`` is given and the reported or received
    size differs from it."""
    digest, received, reported = hashlib.sha256(), 0, None
    with open(part, "wb") as out:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                reported = int(response.headers.get("Content-Length") or 0) or None
                if expected_bytes is not None and reported is not None and reported != expected_bytes:
                    raise ChecksumError(f"{url} reports {reported:,} bytes, expected {expected_bytes:,}: not the file "
                                        f"this version of accel knows. Nothing was downloaded or recorded. {hint}")
                with tqdm(total=reported or expected_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                          disable=not progress) as bar:  # fmt: skip
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"Could not download {url}: HTTP {exc.code} {exc.reason}. {hint}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DownloadError(f"Could not download {url}: {reason}. {hint}") from exc
    if reported is not None and received != reported:  # http.client reads a dropped connection as a short end
        raise DownloadError(f"Incomplete download of {url}: received {received:,} of {reported:,} bytes (the "
                            f"connection was dropped); the partial file was removed. Try again. {hint}")
    if expected_bytes is not None and received != expected_bytes:
        raise ChecksumError(f"{url} sent {received:,} bytes, expected {expected_bytes:,}; the download was removed "
                            f"and nothing was recorded. {hint}")
    return digest.hexdigest(), received


def download(
    url: str,
    filename: str,
    sha256: str,
    *,
    root: str | os.PathLike[str] | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Return the path of ``filename`` in the cache, downloading it from ``url`` first if needed.

    timeout: seconds (a finite number > 0) that connecting or any single read may take.
    Raises ``ValueError`` for a malformed argument, :class:`ChecksumError` when the cached or downloaded
    file has the wrong SHA-256, :class:`DownloadError` when the download fails (including a connection dropped
    before all of its Content-Length arrived), and ``PermissionError`` when the cache folder is not writable.
    """
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"sha256 must be a string of 64 hex digits, got {sha256!r}")
    sha256 = sha256.lower()
    if urllib.parse.urlsplit(url).scheme not in _SCHEMES:
        raise ValueError(f"url must start with one of {', '.join(s + '://' for s in _SCHEMES)}; got {url!r}")
    rel = Path(filename)
    if not filename or rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"filename must be a relative path inside the cache folder, got {filename!r}")
    real = isinstance(timeout, numbers.Real) and not isinstance(timeout, bool)
    if not (real and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"Invalid timeout: {timeout!r}; expected a finite number of seconds > 0")
    progress = check_bool("progress", progress)

    target = Path(root).expanduser() / rel if root is not None else cache_dir() / rel
    if target.exists():
        actual = sha256sum(target)
        if actual == sha256:
            return target
        raise ChecksumError(
            f"{target} exists but has sha256 {actual}, expected {sha256}. "
            f"It was left untouched; delete it to re-download it from {url}."
        )

    part = new_part(target.parent)
    try:
        actual, _ = stream_download(url, part, hint=_offline_hint(url, target, sha256), desc=rel.name,
                                    progress=progress, timeout=timeout)
        if actual != sha256:
            raise ChecksumError(
                f"Checksum mismatch for {url}: expected sha256 {sha256}, got {actual}. "
                f"The corrupt download was removed. {_offline_hint(url, target, sha256)}"
            )
        os.replace(part, target)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return target
