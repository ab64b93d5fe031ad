"""One GET, its body read as it arrives: the standard library on a direct line, huggingface_hub's session
through a proxy.

huggingface_hub's client (httpx2) reads a body in 64 KiB pieces through the h11 parser, allocating each:
on a fast line that is about half of curl's speed (scripts/bench_download.py measures it). A direct
connection is therefore read with http.client, each piece in one `recv` of up to 1 MiB and no parser in
the way; the TLS settings are httpx2's (certifi, SSL_CERT_FILE), so both paths trust the same
certificates. Where a proxy applies (HTTP(S)_PROXY, NO_PROXY, the system's settings, as
`urllib.request.getproxies` reads them, as httpx2 does) the request goes through huggingface_hub's own
session, which knows proxies and their authentication. Network failures come out as httpx2's exception
types either way, so the caller retries one kind of error.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit
from urllib.request import getproxies, proxy_bypass

import httpx2
from huggingface_hub.utils import get_session

PIECE = 1024 * 1024            # the most one read asks for: a cancel or a progress report waits at most this
MAX_REDIRECTS = 10
REDIRECTS = (301, 302, 303, 307, 308)


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]     # case-insensitive, as both clients give them
    pieces: Iterator[bytes]        # the body, as it arrives; raises httpx2 errors when the line fails


@contextlib.contextmanager
def get(url: str, headers: dict[str, str], timeout: float) -> Iterator[Response]:
    """GET `url`, following redirects (the Authorization header stays with its own origin)."""
    for _ in range(MAX_REDIRECTS):
        if proxied(url):
            with get_session().stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as r:
                yield Response(r.status_code, r.headers, r.iter_raw())
            return
        connection, response = request(url, headers, timeout)
        location = response.getheader("Location")
        if response.status in REDIRECTS and location:
            connection.close()
            target = urljoin(url, location)
            if origin(target) != origin(url):
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
            url = target
            continue
        try:
            yield Response(response.status, response.headers, body(response))
        finally:
            connection.close()
        return
    raise httpx2.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")


def request(url: str, headers: dict[str, str], timeout: float):
    parts = urlsplit(url)
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=tls())
    elif parts.scheme == "http":
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    else:
        raise httpx2.UnsupportedProtocol(f"cannot download from a {parts.scheme!r} address")
    path = parts.path or "/"
    try:
        connection.request("GET", f"{path}?{parts.query}" if parts.query else path, headers=headers)
        return connection, connection.getresponse()
    except (OSError, http.client.HTTPException) as e:
        connection.close()
        raise network_error(e) from e


def body(response: http.client.HTTPResponse) -> Iterator[bytes]:
    try:
        while piece := response.read1(PIECE):
            yield piece
    except (OSError, http.client.HTTPException) as e:
        raise network_error(e) from e
    if response.length:        # http.client ends quietly when the line drops before the announced end
        raise httpx2.RemoteProtocolError("the connection closed before the end of the body")


def network_error(e: Exception) -> httpx2.TransportError:
    """As httpx2 would say it; the cause stays attached (a certificate that failed is not retried)."""
    if isinstance(e, TimeoutError):
        return httpx2.ReadTimeout(str(e) or "timed out")
    if isinstance(e, ConnectionRefusedError):
        return httpx2.ConnectError(str(e))
    return httpx2.ReadError(f"{type(e).__name__}: {e}")


def proxied(url: str) -> bool:
    parts = urlsplit(url)
    proxies = getproxies()
    return bool(proxies.get(parts.scheme) or proxies.get("all")) and not proxy_bypass(parts.hostname or "")


@functools.cache
def tls():
    """The same trust as huggingface_hub's session: httpx2's default context."""
    return httpx2.create_ssl_context()


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port
