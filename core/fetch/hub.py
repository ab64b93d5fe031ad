"""What the Hugging Face Hub says about one file: its commit, checksum, size and where its bytes are.

huggingface_hub does the asking (the resolve URL, HF_ENDPOINT, HF_HUB_OFFLINE, proxies, the token from
HF_TOKEN or `hf auth login`, the HEAD that stops at the CDN's redirect); this module turns its answers
and its exceptions into a `RemoteFile` or a `DownloadError` a user can act on, and retries what a
flaky line or a busy server makes fail. The token is never put into a message.
"""

from __future__ import annotations

import re
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx2
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, validate_repo_id

from core import __version__
from core.errors import LatentDeskError

# Latent Desk sends the Hub what a download needs and nothing else. With telemetry on, huggingface_hub
# adds the torch version to the user agent and fetches a registry of AI agents from the Hub once a day
# (utils/_detect_agent.py); it reads this flag at each request, so setting it here covers the process.
constants.HF_HUB_DISABLE_TELEMETRY = True

TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
USER_AGENT = {"library_name": "latentdesk", "library_version": __version__}
LOG_IN = "log in with `hf auth login` (or set HF_TOKEN to an access token)"
SHA256 = re.compile(r"[0-9a-f]{64}")
GIT_SHA1 = re.compile(r"[0-9a-f]{40}")


class DownloadError(LatentDeskError):
    """A download that did not give a usable file; `reason` says which kind of failure, for code
    ("not_found", "unauthorized", "offline", "hash_mismatch", "disk_full", "cancelled", "network",
    "refused"), and the message says it for the user."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True)
class RemoteFile:
    repo: str
    file: str
    revision: str
    commit: str | None
    sha256: str | None      # LFS files: the Hub's sha256 of the content
    git_sha1: str | None    # small files kept in git: the blob's sha1, the Hub's ETag for them
    size: int | None
    url: str                # where the bytes are: the CDN after the Hub's redirect
    send_token: bool        # only to the Hub itself: a signed CDN URL needs none, and must not see it


def resolve(repo: str, file: str, *, revision: str = "main", endpoint: str | None = None,
            token: str | bool | None = None, cancel: threading.Event | None = None) -> RemoteFile:
    """Asks the Hub about `repo`/`file` at `revision`, retrying transient failures a few times."""
    if constants.is_offline_mode():
        raise DownloadError("offline", f"{repo}/{file}: offline mode is on (HF_HUB_OFFLINE), so nothing can be "
                                       "downloaded; unset HF_HUB_OFFLINE to download")
    try:
        validate_repo_id(repo)
    except HFValidationError:
        raise DownloadError("refused", f"{repo!r} is not a Hugging Face repo id (owner/name)") from None
    url = hf_hub_url(repo, file, revision=revision, endpoint=endpoint)
    backoff = Backoff(cancel, tries=4)
    while True:
        try:
            meta = get_hf_file_metadata(url, token=token, endpoint=endpoint, **USER_AGENT)
            break
        except (httpx2.RequestError, HfHubHTTPError, OfflineModeIsEnabled) as e:
            if not transient(e):
                raise hub_error(e, repo, file, revision, url) from None
            failed = "cannot reach" if isinstance(e, httpx2.TransportError) else "no good answer from"
            backoff.wait(f"{repo}/{file}: {failed} {origin(url)} ({describe(e)})")
        except LocalTokenNotFoundError:
            raise DownloadError("unauthorized", f"{repo}: no Hugging Face token was found; {LOG_IN}") from None
    etag = (meta.etag or "").lower()
    location = urljoin(url, meta.location)
    return RemoteFile(repo, file, revision, meta.commit_hash, etag if SHA256.fullmatch(etag) else None,
                      etag if GIT_SHA1.fullmatch(etag) else None, meta.size, location,
                      send_token=origin(location) == origin(url))


def request_headers(remote: RemoteFile, token: str | bool | None) -> dict[str, str]:
    """The Hub's usual headers (user agent; the token only where `send_token`), asking for raw bytes."""
    headers = build_hf_headers(token=token if remote.send_token else False, **USER_AGENT)
    headers["Accept-Encoding"] = "identity"     # a compressed body would not match the announced size
    return headers


def hub_error(e: Exception, repo: str, file: str, revision: str, url: str) -> DownloadError:
    """The Hub's answer, told plainly; never the request's headers (the token)."""
    where = f"{repo}/{file}"
    if isinstance(e, OfflineModeIsEnabled):
        return DownloadError("offline", f"{where}: offline mode is on (HF_HUB_OFFLINE); unset it to download")
    if isinstance(e, httpx2.RequestError):
        return network_error(e, where, url)
    status = getattr(getattr(e, "response", None), "status_code", None)
    terms = f"https://huggingface.co/{repo}"
    if isinstance(e, GatedRepoError):
        return DownloadError("unauthorized", f"{repo} is gated ({status}): accept its terms on {terms}, then "
                                             f"{LOG_IN} and run it again")
    if status in (401, 403):
        return DownloadError("unauthorized", f"{repo} is private, gated or does not exist ({status}): with access, "
                                             f"{LOG_IN}; for a gated model, accept its terms on {terms} first")
    if isinstance(e, RevisionNotFoundError):
        return DownloadError("not_found", f"{repo} has no revision {revision!r} (404)")
    if isinstance(e, RemoteEntryNotFoundError):
        return DownloadError("not_found", f"{repo} has no file {file!r} at {revision!r} (404)")
    if isinstance(e, RepositoryNotFoundError) or status == 404:
        return DownloadError("not_found", f"there is no repository {repo!r} on {origin(url)} (404)")
    return DownloadError("network", f"{where}: the Hub answered {status or describe(e)}; try again later")


def transient(e: Exception) -> bool:
    """Worth another try: a dropped or timed-out connection, a busy or failing server."""
    if isinstance(e, (OfflineModeIsEnabled, httpx2.TooManyRedirects, httpx2.UnsupportedProtocol)) or untrusted(e):
        return False
    if isinstance(e, httpx2.TransportError):
        return True
    status = getattr(getattr(e, "response", None), "status_code", None)
    return status in TRANSIENT_STATUS


def network_error(e: httpx2.RequestError, where: str, url: str) -> DownloadError:
    """A failure that another try would not mend, or the last of several that might have."""
    if isinstance(e, httpx2.TooManyRedirects):
        return DownloadError("network", f"{where}: {origin(url)} redirects in a loop; try again later")
    if untrusted(e):
        return DownloadError("network", f"{where}: this computer does not trust the certificate of {origin(url)}; "
                                        "if a proxy or firewall inspects HTTPS, set SSL_CERT_FILE to its CA bundle")
    return DownloadError("network", f"{where}: cannot reach {origin(url)} ({describe(e)}); check the "
                                    "connection, or set HF_ENDPOINT to a mirror")


def untrusted(e: BaseException | None) -> bool:
    """A certificate that failed verification, somewhere in the chain of causes (httpx2 wraps the ssl error)."""
    for _ in range(6):
        if e is None:
            return False
        if isinstance(e, ssl.SSLCertVerificationError):
            return True
        e = e.__cause__ or e.__context__
    return False


class Backoff:
    """Waits 0.5, 1, 2, 4 ... (at most 30) seconds between tries; `reset` after a try that got somewhere.
    The waits end at once when `cancel` is set."""

    FIRST_WAIT = 0.5

    def __init__(self, cancel: threading.Event | None, tries: int):
        self.cancel = cancel or threading.Event()
        self.tries = tries
        self.failed = 0

    def wait(self, message: str) -> None:
        """After a failure: returns when it is time to try again, or raises."""
        self.failed += 1
        if self.failed >= self.tries:
            raise DownloadError("network", f"{message}; gave up after {self.failed} tries")
        if self.cancel.wait(min(30.0, self.FIRST_WAIT * 2 ** (self.failed - 1))):
            raise cancelled()

    def check(self) -> None:
        if self.cancel.is_set():
            raise cancelled()

    def reset(self) -> None:
        self.failed = 0


def cancelled() -> DownloadError:
    return DownloadError("cancelled", "the download was cancelled")


def origin(url: str) -> str:
    """scheme://host[:port], for messages and for deciding where the token may go (a signed CDN URL's
    query string is a credential too, so messages never show whole URLs)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def describe(e: Exception) -> str:
    """A network error in a few words: its type, and its text where that is short and holds no URL."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text and len(text) < 120 and "://" not in text else type(e).__name__
