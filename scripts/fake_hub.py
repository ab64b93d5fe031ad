"""A stand-in for the Hugging Face Hub on 127.0.0.1, for the download tests (tests/hub_server.py makes it a
fixture) and scripts/bench_download.py.

It speaks the part of the Hub the downloader uses: HEAD/GET `/{repo}/resolve/{revision}/{file}` with
`X-Repo-Commit`, `X-Linked-Etag`/`ETag`, `X-Linked-Size`, and, for LFS files, a 302 to a second server
(the "CDN", another port, so huggingface_hub stops at the redirect as it does on the real Hub) that
answers `Range` requests. Errors carry the Hub's `X-Error-Code`. Knobs on `HubServer` make it misbehave:
drop the connection once after N bytes, sleep between chunks, announce a wrong sha256, send more bytes
than announced, redirect in a loop, refuse one CDN request (a signed address that expired). `log`
records every request: what was asked and how much was sent.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

TOKEN = "hf_test_token_never_shown"     # the one token the server accepts for gated files
SENT_CHUNK = 64 * 1024


@dataclass
class Served:
    data: bytes
    sha256: str
    git_sha1: str      # what the Hub's ETag is for a file kept in git (not LFS)
    commit: str
    gated: bool
    lfs: bool


@dataclass
class LogEntry:
    method: str
    path: str
    range_start: int | None
    sent: int = 0      # body bytes written to the socket


class HubServer:
    def __init__(self):
        self.files: dict[tuple[str, str, str], Served] = {}
        self.log: list[LogEntry] = []
        self.drop_after: int | None = None   # close the connection once after this many body bytes
        self.chunk_delay = 0.0                # seconds slept before each 64 KiB chunk
        self.wrong_sha256 = False             # announce a sha256 that is not the file's
        self.extra_bytes = 0                  # append this many bytes beyond the announced size
        self.redirect_loop: str | None = None   # "hub" or "cdn": that server redirects to itself
        self.cdn_forbidden_once = False       # the next CDN request gets a 403, as an expired signed address does
        self.hub = self._start()
        self.cdn = self._start()
        self.url = f"http://127.0.0.1:{self.hub.server_port}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_port}"

    def add_file(self, repo: str, path: str, data: bytes, *, revision: str = "main", gated: bool = False,
                 lfs: bool = True) -> Served:
        commit = hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()
        served = Served(data, hashlib.sha256(data).hexdigest(),
                        hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(), commit, gated, lfs)
        self.files[(repo, revision, path)] = served
        return served

    def bytes_sent(self, path_part: str = "") -> int:
        return sum(e.sent for e in self.log if e.method == "GET" and path_part in e.path)

    def close(self) -> None:
        for server in (self.hub, self.cdn):
            server.shutdown()
            server.server_close()

    def _start(self) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.hub = self
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return server


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive, as the Hub and its CDN do

    def log_message(self, *args) -> None:      # quiet: the test output is for the tests
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        entry = LogEntry(self.command, self.path, range_start(self.headers.get("Range")))
        self.hub.log.append(entry)
        if self.server is self.hub.cdn:
            return self.answer_cdn(entry, body)
        if self.hub.redirect_loop == "hub":
            return self.send_empty(302, {"Location": self.path})
        repo, sep, rest = self.path.partition("/resolve/")
        revision, _, file = rest.partition("/")
        repo, revision, file = repo.strip("/"), unquote(revision), unquote(file)
        served = self.hub.files.get((repo, revision, file))
        if not sep or served is None:
            known_repo = any(r == repo for r, _, _ in self.hub.files)
            known_revision = any((r, v) == (repo, revision) for r, v, _ in self.hub.files)
            code = "EntryNotFound" if known_revision else "RevisionNotFound" if known_repo else "RepoNotFound"
            return self.send_empty(404, {"X-Error-Code": code, "X-Error-Message": f"{code} for {self.path}"})
        if served.gated and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self.send_empty(401, {"X-Error-Code": "GatedRepo", "X-Error-Message":
                                         f"Access to model {repo} is restricted. You must be authenticated."})
        sha256 = "0" * 64 if self.hub.wrong_sha256 else served.sha256
        headers = {"X-Repo-Commit": served.commit}
        if served.lfs:
            headers |= {"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(served.data)),
                        "ETag": f'"{served.git_sha1}"', "Location": f"{self.hub.cdn_url}/cdn/{served.sha256}"}
            return self.send_empty(302, headers)
        headers["ETag"] = f'"{served.git_sha1}"'
        self.send_data(entry, served.data, headers, body)

    def answer_cdn(self, entry: LogEntry, body: bool) -> None:
        if self.hub.redirect_loop == "cdn":
            return self.send_empty(302, {"Location": self.path})
        if self.hub.cdn_forbidden_once:
            self.hub.cdn_forbidden_once = False
            return self.send_empty(403, {})
        sha256 = self.path.rsplit("/", 1)[-1].split("?")[0]
        data = next((s.data for s in self.hub.files.values() if s.sha256 == sha256), None)
        if data is None:
            return self.send_empty(404, {})
        self.send_data(entry, data, {}, body)

    def send_data(self, entry: LogEntry, data: bytes, headers: dict, body: bool) -> None:
        start = entry.range_start or 0
        if start >= len(data) and entry.range_start is not None:
            return self.send_empty(416, {"Content-Range": f"bytes */{len(data)}"})
        payload = memoryview(data)[start:]
        if self.hub.extra_bytes:
            payload = memoryview(bytes(payload) + b"\xee" * self.hub.extra_bytes)
        self.send_response(206 if entry.range_start is not None else 200)
        for name, value in headers.items():
            self.send_header(name, value)
        if entry.range_start is not None:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if body:
            self.send_body(entry, payload)

    def send_body(self, entry: LogEntry, payload: memoryview) -> None:
        hub = self.hub
        chunk = SENT_CHUNK if hub.chunk_delay or hub.drop_after is not None else 1024 * 1024
        for at in range(0, len(payload), chunk):
            piece = payload[at:at + chunk]
            if hub.drop_after is not None and entry.sent + len(piece) > hub.drop_after:
                piece = piece[:hub.drop_after - entry.sent]
                hub.drop_after = None       # once: the next request is served in full
                self.wfile.write(piece)
                entry.sent += len(piece)
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)     # a dropped line: the client sees a short body
                return
            if hub.chunk_delay:
                time.sleep(hub.chunk_delay)
            try:
                self.wfile.write(piece)
            except OSError:          # the client went away (cancelled, killed)
                self.close_connection = True
                return
            entry.sent += len(piece)

    def send_empty(self, status: int, headers: dict) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()


def range_start(header: str | None) -> int | None:
    """`bytes=N-` → N (the downloader only ever asks for the rest of a file)."""
    if not header or not header.startswith("bytes="):
        return None
    return int(header[len("bytes="):].split("-")[0])
