"""A local HTTP server on 127.0.0.1 for the download tests (Criteo's trust-on-first-use path, chapter 03's data source).

``serve(folder)`` serves the files in folder (a 404 for anything else) and yields its base URL; ``serve(folder,
truncate=True)`` announces each file's full Content-Length but sends only half of it and closes the connection, as a
dropped download does. ``closed_port_url(name)`` is a URL on a port nothing listens on (connection refused).
"""

from __future__ import annotations

import functools
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no request log on stderr
        pass


class _Truncating(_Quiet):
    def do_GET(self):
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        payload = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[: len(payload) // 2])
        self.wfile.flush()
        self.close_connection = True


@contextmanager
def serve(folder: Path, *, truncate: bool = False) -> Iterator[str]:
    """Serve folder's files over HTTP on 127.0.0.1; yields the base URL (no trailing slash)."""
    handler = functools.partial(_Truncating if truncate else _Quiet, directory=str(folder))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def closed_port_url(name: str) -> str:
    """An http URL for name on a local port that was free a moment ago (nothing listens there: refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"
