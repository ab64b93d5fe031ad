"""One file from the Hugging Face Hub into a models folder: resumed, checked, and whole or not at all.

The bytes go into a hidden `.<name>.part` beside the destination (core/fetch/part_files.py keeps its
books): a rerun after a killed process, a dropped line or a sleep asks only for the rest (a `Range`
request) and re-hashes the finished part from disk. The file takes its final name (os.replace) only
once its checksum matches the one the Hub states, so the models folder never offers a partial, damaged
or swapped file. Pickles are refused by name before and by their first bytes after the download.
huggingface_hub answers the questions (core/fetch/hub.py); the GET (core/fetch/stream.py), resume,
retries, hashing, the move and progress are done here, in the models folder rather than its cache.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpx2

from core.eta import pace
from core.fetch import stream
from core.fetch.hub import (
    Backoff,
    DownloadError,
    RemoteFile,
    cancelled,
    describe,
    network_error,
    origin,
    request_headers,
    resolve,
    transient,
)
from core.fetch.part_files import (
    Digest,
    PartInfo,
    PartWriter,
    digest_of,
    discard,
    expected,
    info_path,
    locked,
    read_info,
    resume_point,
    sync_folder,
    write_info,
)
from core.loading.safetensors_io import PICKLE_SUFFIXES, looks_pickled

__all__ = ["DownloadError", "DownloadProgress", "fetch"]

SPACE_MARGIN = 64 * 1024 * 1024    # left free beyond the file: a full disk breaks more than this download
TIMEOUT = 20.0                 # seconds: a line silent this long (after a sleep, a network change) is dead
PROGRESS_EVERY = 0.1           # seconds between progress reports


@dataclass(frozen=True)
class DownloadProgress:
    done: int                  # bytes
    total: int
    rate: float | None         # bytes per second over this run (None before any byte has arrived)
    seconds_left: float | None


def fetch(repo: str, file: str, dest_dir: Path, *, revision: str = "main", save_as: str | None = None,
          endpoint: str | None = None, token: str | bool | None = None, cancel: threading.Event | None = None,
          on_progress: Callable[[DownloadProgress], None] | None = None) -> Path:
    """Downloads `file` of `repo` into `dest_dir` (as `save_as`, else its own name); returns the final path.
    Raises DownloadError; `cancel` stops it between two pieces of data, keeping the part for a rerun."""
    name = target_name(file, save_as)
    cancel = cancel or threading.Event()
    remote = resolve(repo, file, revision=revision, endpoint=endpoint, token=token, cancel=cancel)
    if remote.sha256 is None and (remote.git_sha1 is None or remote.size is None):
        raise DownloadError("refused", f"{repo}/{file}: the Hub states no checksum for it, so it could not be "
                                       "checked; nothing was downloaded")
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError("refused", f"{dest_dir}: the folder cannot be made ({e.strerror or e})") from None
    dest = dest_dir / name
    report = Reporter(on_progress)
    if dest.is_dir():
        raise DownloadError("refused", f"{dest} is a folder; move it away to download {repo}/{file} there")
    if dest.exists():
        if digest_of(dest, remote, cancel) == expected(remote):
            report(remote.size or dest.stat().st_size, final=True)
            return dest
        raise DownloadError("refused", f"{dest} already exists and is not {repo}/{file} at {revision!r}; move it "
                                       "away or delete it to download this one")
    part = dest_dir / f".{name}.part"
    info = PartInfo(repo, file, remote.commit, remote.sha256, remote.git_sha1, remote.size)

    def renew() -> RemoteFile:
        """A new CDN address: a signed one expires (in an hour, or over a night's sleep)."""
        fresh = resolve(repo, file, revision=revision, endpoint=endpoint, token=token, cancel=cancel)
        if expected(fresh) != expected(remote):
            raise DownloadError("network", f"{repo}/{file} changed on the Hub during the download; run it "
                                           "again to download the new version")
        return fresh

    with locked(part):
        for attempt in (1, 2):
            resumed = download_part(remote, part, info, token, cancel, report, renew)
            if resumed.hexdigest() == expected(remote):
                break
            discard(part)
            # After a resume the old bytes may be what is wrong (a power cut can leave zeros): once more,
            # from nothing, before blaming the server.
            if not resumed.was_resumed or attempt == 2:
                raise DownloadError("hash_mismatch", f"{repo}/{file}: the downloaded file's checksum is "
                                    f"{resumed.hexdigest()}, the Hub states {expected(remote)}; it was deleted")
        if looks_pickled(part):
            discard(part)
            raise DownloadError("refused", f"{repo}/{file} is a pickle-based PyTorch file (which can run code "
                                           "when opened) whatever its name says; it was deleted")
        os.replace(part, dest)
        sync_folder(dest_dir)
        info_path(part).unlink(missing_ok=True)
    return dest


def download_part(remote: RemoteFile, part: Path, info: PartInfo, token, cancel: threading.Event,
                  report: Reporter, renew: Callable[[], RemoteFile]) -> Digest:
    """Brings `part` to the whole file, from where an earlier run stopped if it was the same file."""
    if read_info(part) != info:
        discard(part)
        write_info(part, info)      # first: bytes in a part never belong to an unknown file
    with open(part, "ab+") as f:
        digest, done = resume_point(f, remote, cancel)
        check_space(part.parent, (remote.size or 0) - done, remote)
        report.start(done, remote.size)
        with PartWriter(f, digest) as out:
            transfer(remote, out, done, token, cancel, report, renew)
            f.flush()
            os.fsync(f.fileno())      # while the last pieces are still being hashed
    return digest


def transfer(remote: RemoteFile, out: PartWriter, done: int, token, cancel: threading.Event,
             report: Reporter, renew: Callable[[], RemoteFile]) -> None:
    """Appends the rest of the file to `f`, reconnecting with a Range request after each failure."""
    headers = request_headers(remote, token)
    backoff = Backoff(cancel, tries=8)
    total, renewed = remote.size, 0
    while total is None or done < total:
        backoff.check()
        ask = headers | ({"Range": f"bytes={done}-"} if done else {})
        before = done
        try:
            with stream.get(remote.url, ask, TIMEOUT) as r:
                if r.status in (401, 403) and not remote.send_token and renewed < 2:
                    remote, renewed = renew(), renewed + 1
                    headers = request_headers(remote, token)
                    continue
                if r.status >= 400:
                    raise refused_by_server(r.status, remote)
                if r.status == 200 and done:     # the server ignored the Range: take it all again
                    out.start_over()
                    done = before = 0
                elif r.status == 206 and not r.headers.get("Content-Range", "").startswith(f"bytes {done}-"):
                    raise DownloadError("network", f"{remote.repo}/{remote.file}: {origin(remote.url)} sent "
                                                   "another part of the file than asked for")
                for piece in r.pieces:
                    if cancel.is_set():
                        raise cancelled()
                    if total is not None and len(piece) > total - done:
                        piece = piece[:total - done]    # more than the Hub announced: never write past it
                    out.write(piece)
                    done += len(piece)
                    report(done)
                    renewed = 0
                    if done == total:
                        break     # anything beyond is not the file; the checksum decides the rest
            if total is None:
                break             # no size announced: the body, read to its end, is the file
            if done == before:    # an answer with nothing in it is a failure too, or this would spin
                raise httpx2.ReadError("the server sent no data")
        except httpx2.RequestError as e:
            if not transient(e):
                raise network_error(e, f"{remote.repo}/{remote.file}", remote.url) from None
            if done > before:
                backoff.reset()       # a line that drops now and then still gets there
            backoff.wait(f"{remote.repo}/{remote.file}: the connection to {origin(remote.url)} failed "
                         f"({describe(e)})")
        except OSError as e:      # writing the part, not the network
            raise disk_error(e, out.f.name) from None
    report(done, final=True)


def refused_by_server(status: int, remote: RemoteFile) -> Exception:
    where = f"{remote.repo}/{remote.file}"
    if status in (408, 429) or status >= 500:
        return httpx2.NetworkError(f"HTTP {status}")      # transient: retried like a dropped line
    if status in (401, 403):
        return DownloadError("unauthorized", f"{where}: {origin(remote.url)} refused the download ({status}) "
                                             "even at a new address; try again later")
    return DownloadError("not_found" if status == 404 else "network",
                         f"{where}: {origin(remote.url)} answered {status}")


def check_space(folder: Path, still_to_fetch: int, remote: RemoteFile) -> None:
    free = shutil.disk_usage(folder).free
    if still_to_fetch + SPACE_MARGIN > free:
        raise DownloadError("disk_full", f"{remote.repo}/{remote.file}: {gigabytes(still_to_fetch)} still to "
                            f"download, but only {gigabytes(free)} is free in {folder} (and {gigabytes(SPACE_MARGIN)} "
                            "is kept free); make room and run it again")


def disk_error(e: OSError, path: str) -> DownloadError:
    if e.errno in (28, 122):    # ENOSPC, EDQUOT: the part stays, for a rerun once there is room
        return DownloadError("disk_full", f"{path}: the disk is full; make room and run it again to resume")
    return DownloadError("refused", f"{path}: cannot be written ({e.strerror or e})")


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} kB"


def target_name(file: str, save_as: str | None) -> str:
    """The name in the models folder, checked: one plain name (no folders, nothing hidden), no pickle."""
    name = save_as or PurePosixPath(file).name
    if not name or name != PurePosixPath(name).name or "\\" in name or name.startswith(".") or "\0" in name:
        raise DownloadError("refused", f"{name!r} cannot be a file name in the models folder")
    for given in (file, name):
        if PurePosixPath(given).suffix.lower() in PICKLE_SUFFIXES:
            raise DownloadError("refused", f"{given}: a pickle-based PyTorch file, which can run code when opened; "
                                           "Latent Desk downloads .safetensors files only")
    return name


class Reporter:
    """Calls on_progress at most every PROGRESS_EVERY seconds; speed counts only this run's bytes."""

    def __init__(self, on_progress: Callable[[DownloadProgress], None] | None):
        self.on_progress = on_progress
        self.first = 0
        self.total = 0
        self.started = self.last = time.perf_counter()

    def start(self, done: int, total: int | None) -> None:
        self.first, self.total = done, total or 0
        self.started = time.perf_counter()
        self(done, final=True)

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        if self.on_progress is None or (not final and now - self.last < PROGRESS_EVERY):
            return
        self.last = now
        speed = pace(done - self.first, max(self.total, done) - self.first, now - self.started)
        self.on_progress(DownloadProgress(done, max(self.total, done), speed.rate, speed.seconds_left))
