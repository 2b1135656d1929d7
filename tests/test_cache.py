"""Tests for accel.datasets.cache against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import functools
import hashlib
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

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
