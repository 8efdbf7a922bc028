"""A loopback HTTP server of static files with single-range GETs (what GDAL's /vsicurl/ sends)
and HTTP/1.1 keep-alive (as S3 and CDNs), counting bytes and requests per file: the remote
tests and ``benchmarks/bench_sources.py`` serve COGs and STAC catalogs with it."""

from __future__ import annotations

import http.server
import threading
from functools import partial
from pathlib import Path


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: RangeServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _file(self) -> Path | None:
        p = Path(self.translate_path(self.path))
        return p if p.is_file() else None

    def do_HEAD(self) -> None:
        p = self._file()
        if p is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(p.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.server.count(p.name, 0)

    def do_GET(self) -> None:
        p = self._file()
        if p is None:
            self.send_error(404)
            return
        size = p.stat().st_size
        spec = self.headers.get("Range", "")
        start, end = 0, size - 1
        if spec.startswith("bytes="):
            if "," in spec:
                self.send_error(416, "multiple ranges not supported")
                return
            a, _, b = spec[6:].partition("-")
            start, end = int(a), min(int(b) if b else size - 1, size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        body = b""
        if start <= end:
            with p.open("rb") as f:
                f.seek(start)
                body = f.read(end - start + 1)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.wfile.write(body)
        self.server.count(p.name, len(body))


class RangeServer(http.server.ThreadingHTTPServer):
    """Serves ``root`` on 127.0.0.1 (a free port); ``served``/``requests`` per file name."""

    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), partial(_RangeHandler, directory=str(root)))
        self.root = root
        self.served: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self._lock = threading.Lock()

    def count(self, name: str, n: int) -> None:
        with self._lock:
            self.served[name] = self.served.get(name, 0) + n
            self.requests[name] = self.requests.get(name, 0) + 1

    @property
    def bytes(self) -> int:
        return sum(self.served.values())

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def url(self, rel: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{rel}"

    def start(self) -> RangeServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self
