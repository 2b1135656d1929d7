"""Tests for accel.datasets.cache against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import math
import os
import signal
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from _parts import killed_parts, start_part_owner, stop  # tests/_parts.py

from accel.datasets import cache
from accel.datasets.cache import ChecksumError, DownloadError, cache_dir, download, sha256sum

PAYLOAD = b"accel test payload\n" * 1000
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG_SHA = "0" * 64


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/srv over HTTP on a free port; `stop()` shuts it down early."""
    root = tmp_path / "srv"
    root.mkdir()
    (root / "data.bin").write_bytes(PAYLOAD)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop():
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_address[1]}", stop=stop)
    stop()


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("ACCEL_DATA_DIR", str(root))
    return root


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_empty(folder: Path) -> None:
    assert not folder.exists() or sorted(p.name for p in folder.iterdir()) == []


def test_download_verifies_then_uses_cache_offline(server, cache_root):
    path = download(f"{server.url}/data.bin", "data.bin", PAYLOAD_SHA, progress=False)
    assert path == cache_root / "data.bin"
    assert path.read_bytes() == PAYLOAD
    assert sha256sum(path) == PAYLOAD_SHA
    assert [p.name for p in cache_root.iterdir()] == ["data.bin"]  # no .part- left behind

    server.stop()
    again = download(f"{server.url}/data.bin", "data.bin", PAYLOAD_SHA.upper(), progress=False)
    assert again == path and again.read_bytes() == PAYLOAD


def test_download_with_progress_bar_and_subfolder(server, cache_root, capsys):
    path = download(f"{server.url}/data.bin", "sub/data.bin", PAYLOAD_SHA, progress=True)
    assert path == cache_root / "sub" / "data.bin"
    assert path.read_bytes() == PAYLOAD


def test_explicit_root_overrides_env(server, cache_root, tmp_path):
    other = tmp_path / "other"
    path = download(f"{server.url}/data.bin", "data.bin", PAYLOAD_SHA, root=other, progress=False)
    assert path == other / "data.bin"
    _assert_empty(cache_root)


def test_file_url(server, cache_root):
    url = (server.root / "data.bin").as_uri()
    assert download(url, "data.bin", PAYLOAD_SHA, progress=False).read_bytes() == PAYLOAD


def test_checksum_mismatch_removes_download(server, cache_root):
    url = f"{server.url}/data.bin"
    with pytest.raises(ChecksumError) as info:
        download(url, "data.bin", WRONG_SHA, progress=False)
    message = str(info.value)
    assert url in message and WRONG_SHA in message and PAYLOAD_SHA in message and "removed" in message
    _assert_empty(cache_root)


def test_unreachable_url(cache_root):
    url = f"http://127.0.0.1:{_closed_port()}/data.bin"
    with pytest.raises(DownloadError) as info:
        download(url, "data.bin", PAYLOAD_SHA, progress=False, timeout=5)
    assert not isinstance(info.value, ChecksumError)
    message = str(info.value)
    assert url in message
    assert "elsewhere" in message and str(cache_root / "data.bin") in message and PAYLOAD_SHA in message
    assert "ACCEL_DATA_DIR" in message
    _assert_empty(cache_root)


def test_http_404(server, cache_root):
    url = f"{server.url}/missing.bin"
    with pytest.raises(DownloadError) as info:
        download(url, "missing.bin", PAYLOAD_SHA, progress=False)
    message = str(info.value)
    assert url in message and "404" in message and "elsewhere" in message and "ACCEL_DATA_DIR" in message
    _assert_empty(cache_root)


def test_interrupt_removes_partial_file(server, cache_root, monkeypatch):
    class _InterruptingBar(cache.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    monkeypatch.setattr(cache, "tqdm", _InterruptingBar)
    with pytest.raises(KeyboardInterrupt):
        download(f"{server.url}/data.bin", "data.bin", PAYLOAD_SHA, progress=False)
    _assert_empty(cache_root)


def test_existing_corrupt_file_is_kept(cache_root):
    cache_root.mkdir()
    corrupt = cache_root / "data.bin"
    corrupt.write_bytes(b"not the payload")
    url = f"http://127.0.0.1:{_closed_port()}/data.bin"  # must not be contacted
    with pytest.raises(ChecksumError) as info:
        download(url, "data.bin", PAYLOAD_SHA, progress=False)
    message = str(info.value)
    assert str(corrupt) in message and PAYLOAD_SHA in message and sha256sum(corrupt) in message
    assert "delete" in message
    assert corrupt.read_bytes() == b"not the payload"


@pytest.mark.parametrize("bad", ["abc", "g" * 64, "0" * 63, "0" * 65, None, b"0" * 64])
def test_bad_sha256_argument(cache_root, bad):
    with pytest.raises(ValueError, match="sha256"):
        download("https://example.com/x", "x", bad)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "example.com/x", "/tmp/x"])
def test_bad_url_scheme(cache_root, url):
    with pytest.raises(ValueError, match="url"):
        download(url, "x", PAYLOAD_SHA)


@pytest.mark.parametrize("filename", ["", "../x", "/abs/x"])
def test_bad_filename(cache_root, filename):
    with pytest.raises(ValueError, match="filename"):
        download("https://example.com/x", filename, PAYLOAD_SHA)


def test_cache_dir_honours_env(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b"
    monkeypatch.setenv("ACCEL_DATA_DIR", str(target))
    assert cache_dir() == target
    assert target.is_dir()


def test_cache_dir_default_in_checkout(monkeypatch):
    monkeypatch.delenv("ACCEL_DATA_DIR", raising=False)
    repo = Path(cache.__file__).resolve().parents[2]
    if not ((repo / "pyproject.toml").is_file() and (repo / "data").is_dir()):
        pytest.skip("accel is not running from a source checkout")
    assert cache_dir() == repo / "data" / "cache"


def test_atomic_folder_is_complete_or_absent(tmp_path):
    from accel.datasets.cache import atomic_folder

    target = tmp_path / "built"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_folder(target) as tmp:
        (tmp / "a.bin").write_bytes(b"old")
    with atomic_folder(target) as tmp:  # replaces a stale build
        (tmp / "b.bin").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["b.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["built"]  # no hidden leftovers


# ---------------------------------------------------------------------------------------- reliability regressions


class _DroppingHandler(BaseHTTPRequestHandler):
    """Announces the whole payload, sends 5000 bytes of it, then drops the connection."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD[:5000])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def dropping_server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _DroppingHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_a_dropped_connection_is_reported_as_incomplete_not_as_a_checksum_mismatch(dropping_server, cache_root):
    url = f"{dropping_server}/data.bin"
    with pytest.raises(DownloadError) as info:
        download(url, "data.bin", PAYLOAD_SHA, progress=False, timeout=5)
    assert not isinstance(info.value, ChecksumError)
    message = str(info.value)
    assert f"received 5,000 of {len(PAYLOAD):,} bytes" in message and url in message and "ACCEL_DATA_DIR" in message
    _assert_empty(cache_root)  # no partial file


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf, "60", True, None])
def test_bad_timeout_argument(cache_root, timeout):
    with pytest.raises(ValueError, match=rf"Invalid timeout: {timeout!r}; expected a finite number of seconds > 0"):
        download("https://example.com/x", "x", PAYLOAD_SHA, timeout=timeout)


@pytest.mark.parametrize("progress", ["no", 1, None])
def test_bad_progress_argument(cache_root, progress):
    with pytest.raises(ValueError, match=rf"Invalid progress: {progress!r}; expected True or False"):
        download("https://example.com/x", "x", PAYLOAD_SHA, progress=progress)


def _check_unwritable_message(error: BaseException, folder) -> None:
    message = str(error)
    assert isinstance(error, PermissionError) and str(folder) in message and "ACCEL_DATA_DIR" in message, message


def test_an_unwritable_cache_folder_names_the_folder_and_the_variable(server, cache_root, monkeypatch):
    def refuse(*args, **kwargs):  # what a read-only folder does (root ignores chmod, so simulate it)
        raise PermissionError(13, "Permission denied")

    cache_root.mkdir()
    monkeypatch.setattr(cache.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError) as info:
        download(f"{server.url}/data.bin", "data.bin", PAYLOAD_SHA, progress=False)
    _check_unwritable_message(info.value, cache_root)
    monkeypatch.setattr(cache.Path, "mkdir", refuse)
    with pytest.raises(PermissionError) as info:
        download(f"{server.url}/data.bin", "sub/data.bin", PAYLOAD_SHA, root=cache_root, progress=False)
    _check_unwritable_message(info.value, cache_root / "sub")
    monkeypatch.setenv("ACCEL_DATA_DIR", str(cache_root / "elsewhere"))
    with pytest.raises(PermissionError) as info:
        cache_dir()
    _check_unwritable_message(info.value, cache_root / "elsewhere")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a user that chmod can lock out")
def test_a_read_only_cache_folder_names_the_folder_and_the_variable(server, cache_root):
    cache_root.mkdir()
    cache_root.chmod(0o555)
    try:
        with pytest.raises(PermissionError) as info:
            download(f"{server.url}/data.bin", "data.bin", PAYLOAD_SHA, progress=False)
    finally:
        cache_root.chmod(0o755)
    _check_unwritable_message(info.value, cache_root)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_parts_of_killed_processes_are_removed_and_live_ones_kept(server, cache_root, sig):
    cache_root.mkdir()
    owner, live = start_part_owner(cache_root)  # a live process in the middle of its own build
    try:
        mine = cache.new_part(cache_root)  # this process's own
        pid, dead = killed_parts(cache_root, sig)
        host = "0" * 8 if cache._HOST != "0" * 8 else "1" * 8
        other_host = cache_root / f".part-{pid}-{host}-abcd1234"  # same PID, another machine: not ours to judge
        other_host.write_bytes(b"")
        fresh_legacy, old_legacy = cache_root / ".part-abcd1234", cache_root / ".part-old12345"  # no owner in name
        fresh_legacy.write_bytes(b"")
        old_legacy.mkdir()
        (old_legacy / "column.bin").write_bytes(b"x")
        two_days_ago = time.time() - 2 * 24 * 3600
        for path in (old_legacy / "column.bin", old_legacy):
            os.utime(path, (two_days_ago, two_days_ago))

        assert download(f"{server.url}/data.bin", "data.bin", PAYLOAD_SHA, progress=False).read_bytes() == PAYLOAD
        assert not any(part.exists() for part in dead) and not old_legacy.exists()
        assert all(part.exists() for part in [*live, mine, other_host, fresh_legacy])
    finally:
        stop(owner)


def test_atomic_folder_removes_parts_of_killed_processes(tmp_path):
    _, dead = killed_parts(tmp_path)
    with cache.atomic_folder(tmp_path / "built") as tmp:
        (tmp / "a.bin").write_bytes(b"a")
    assert [p.name for p in tmp_path.iterdir()] == ["built"]
