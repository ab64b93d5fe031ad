"""The bookkeeping of a download in progress, beside its destination in the models folder.

`.<name>.part` holds the bytes so far and `.<name>.part.json` which file they belong to (repo, file,
commit, checksum, size), so that a rerun resumes only a part of the same file and starts over on
anything else. `.<name>.part.lock` keeps two downloads of one file (the window and the command line)
from writing one part together. The checksum is the Hub's: sha256 for LFS files, the git blob's sha1
for small files kept in git.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.fetch.hub import DownloadError, RemoteFile, cancelled

CHUNK = 8 * 1024 * 1024        # the most read from disk at once when hashing a part or a finished file


@dataclass(frozen=True)
class PartInfo:
    """What a `.part` file holds the beginning of: a part for anything else is thrown away. The commit is
    kept for people but not compared: a new commit that leaves this file alone (a README edit) does not
    change its bytes, and the checksum says whether they changed."""
    repo: str
    file: str
    commit: str | None = field(compare=False)
    sha256: str | None
    git_sha1: str | None
    size: int | None


class Digest:
    """The running checksum of what has been written, and whether it started from an earlier run's part."""

    def __init__(self, remote: RemoteFile):
        self.remote = remote
        self.was_resumed = False
        self.restart()

    def restart(self) -> None:
        if self.remote.sha256:
            self.hash = hashlib.sha256()
        else:      # a small file kept in git: its ETag is the sha1 of the git blob
            self.hash = hashlib.sha1(b"blob %d\0" % (self.remote.size or 0))

    def update(self, data) -> None:
        self.hash.update(data)

    def hexdigest(self) -> str:
        return self.hash.hexdigest()


class PartWriter:
    """Appends pieces to the part and hashes them in a thread of its own: hashlib lets go of the GIL, so
    the next piece is received while this one is hashed (in turn, hashing cost a third of the speed on
    a fast line). The queue keeps the order and holds at most QUEUED pieces. Use it in a `with`."""

    QUEUED = 16

    def __init__(self, f, digest: Digest):
        self.f, self.digest = f, digest
        self.start()

    def start(self) -> None:
        self.pieces: queue.Queue = queue.Queue(maxsize=self.QUEUED)
        self.thread = threading.Thread(target=self.hash_pieces, name="download sha256", daemon=True)
        self.thread.start()

    def hash_pieces(self) -> None:
        while (piece := self.pieces.get()) is not None:
            self.digest.update(piece)

    def write(self, piece: bytes) -> None:
        self.f.write(piece)
        self.pieces.put(piece)

    def start_over(self) -> None:
        """Empty the part: the server sent the whole file where the rest was asked for."""
        self.finish()
        self.f.seek(0)
        self.f.truncate(0)
        self.digest.restart()
        self.start()

    def finish(self) -> None:
        self.pieces.put(None)
        self.thread.join()

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.finish()


def expected(remote: RemoteFile) -> str:
    return remote.sha256 or remote.git_sha1 or ""


def resume_point(f, remote: RemoteFile, cancel: threading.Event) -> tuple[Digest, int]:
    """The checksum and length of what an earlier run left in the part open as `f` (appending): the
    finished bytes are re-hashed from disk, not fetched again."""
    digest, done = Digest(remote), 0
    f.seek(0)
    while block := f.read(CHUNK):
        if cancel.is_set():
            raise cancelled()
        digest.update(block)
        done += len(block)
    if remote.size is not None and done > remote.size:      # longer than the file: not ours to trust
        f.truncate(0)
        digest, done = Digest(remote), 0
    digest.was_resumed = done > 0
    return digest, done


def digest_of(path: Path, remote: RemoteFile, cancel: threading.Event) -> str:
    """The checksum of a finished file, to reuse it instead of downloading it again."""
    if remote.size is not None and path.stat().st_size != remote.size:
        return ""
    digest = Digest(remote)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            if cancel.is_set():
                raise cancelled()
            digest.update(block)
    return digest.hexdigest()


def info_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def read_info(part: Path) -> PartInfo | None:
    try:
        return PartInfo(**json.loads(info_path(part).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def write_info(part: Path, info: PartInfo) -> None:
    tmp = part.with_name(part.name + ".json.tmp")
    tmp.write_text(json.dumps(asdict(info)), encoding="utf-8")
    os.replace(tmp, info_path(part))


def discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    info_path(part).unlink(missing_ok=True)


def sync_folder(folder: Path) -> None:
    """The rename itself survives a power cut (POSIX; Windows cannot open a folder for fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def locked(part: Path):
    """One download per file at a time: the window and the command line must not write one part together."""
    try:
        import fcntl
    except ImportError:     # Windows: the rename still keeps half files out of the models folder
        yield
        return
    with open(part.with_name(part.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DownloadError("refused", f"{part.name[1:-5]} is being downloaded by another Latent Desk "
                                           "already") from None
        try:
            yield
        finally:
            Path(lock.name).unlink(missing_ok=True)


