"""The one download helper every dataset uses.

Contract of :func:`download`:

* Files live in :func:`cache_dir` (``$ACCEL_DATA_DIR``, else ``data/cache`` in a source checkout, else
  ``~/.cache/accel``) unless ``root`` is given.
* A cached file whose SHA-256 matches is returned without touching the network, so everything works
  offline once the files are in place.
* A cached file whose SHA-256 does *not* match is never deleted (the user may have put it there):
  :class:`ChecksumError` says where it is and asks for it to be removed.
* Otherwise the file is streamed into a hidden ``.part-*`` file next to the target, verified, and moved
  into place with :func:`os.replace`. On any failure (network, HTTP, timeout, checksum, Ctrl-C) the
  partial file is removed, so the target path either holds the verified file or nothing.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

__all__ = ["CACHE_ENV", "ChecksumError", "DownloadError", "atomic_folder", "cache_dir", "download", "sha256sum"]

CACHE_ENV = "ACCEL_DATA_DIR"
_CHUNK = 1 << 20
_SCHEMES = ("http", "https", "file")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


class DownloadError(RuntimeError):
    """A file could not be downloaded; the message says why and how to provide it offline."""


class ChecksumError(DownloadError):
    """A downloaded or cached file does not have the expected SHA-256."""


def cache_dir() -> Path:
    """The folder downloads go to by default, created on demand."""
    if env := os.environ.get(CACHE_ENV):
        path = Path(env).expanduser()
    else:
        repo = Path(__file__).resolve().parents[2]
        in_checkout = (repo / "pyproject.toml").is_file() and (repo / "data").is_dir()
        path = repo / "data" / "cache" if in_checkout else Path.home() / ".cache" / "accel"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_folder(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a folder of generated files atomically: yields a hidden temporary folder next to ``target`` to fill;
    on success it is renamed to ``target``, on any error it is removed, so ``target`` is complete or absent.

    An existing ``target`` (a stale or damaged build its caller decided to replace) is moved aside and removed
    first. If another process renames its own complete build into place first, that one is kept and ours dropped.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".part-"))
    try:
        yield tmp
        if target.exists():
            stale = Path(tempfile.mkdtemp(dir=target.parent, prefix=".stale-"))
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

    Raises ``ValueError`` for a malformed argument, :class:`ChecksumError` when the cached or downloaded
    file has the wrong SHA-256, and :class:`DownloadError` when the download fails.
    """
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"sha256 must be a string of 64 hex digits, got {sha256!r}")
    sha256 = sha256.lower()
    if urllib.parse.urlsplit(url).scheme not in _SCHEMES:
        raise ValueError(f"url must start with one of {', '.join(s + '://' for s in _SCHEMES)}; got {url!r}")
    rel = Path(filename)
    if not filename or rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"filename must be a relative path inside the cache folder, got {filename!r}")

    target = Path(root).expanduser() / rel if root is not None else cache_dir() / rel
    if target.exists():
        actual = sha256sum(target)
        if actual == sha256:
            return target
        raise ChecksumError(
            f"{target} exists but has sha256 {actual}, expected {sha256}. "
            f"It was left untouched; delete it to re-download it from {url}."
        )

    target.parent.mkdir(parents=True, exist_ok=True)
    part = tempfile.NamedTemporaryFile(dir=target.parent, delete=False, prefix=".part-")
    try:
        digest = hashlib.sha256()
        with part:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    total = int(response.headers.get("Content-Length") or 0) or None
                    with tqdm(
                        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=rel.name, disable=not progress
                    ) as bar:
                        while chunk := response.read(_CHUNK):
                            part.write(chunk)
                            digest.update(chunk)
                            bar.update(len(chunk))
            except urllib.error.HTTPError as exc:
                raise DownloadError(
                    f"Could not download {url}: HTTP {exc.code} {exc.reason}. {_offline_hint(url, target, sha256)}"
                ) from exc
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise DownloadError(
                    f"Could not download {url}: {reason}. {_offline_hint(url, target, sha256)}"
                ) from exc
        actual = digest.hexdigest()
        if actual != sha256:
            raise ChecksumError(
                f"Checksum mismatch for {url}: expected sha256 {sha256}, got {actual}. "
                f"The corrupt download was removed. {_offline_hint(url, target, sha256)}"
            )
        os.replace(part.name, target)
    except BaseException:
        Path(part.name).unlink(missing_ok=True)
        raise
    return target
