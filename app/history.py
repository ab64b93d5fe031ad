"""The image history: every saved image, read back from the output folder on start so it survives
restarts, and every image that is *not* saved yet (its save failed, or Live mode made it), kept
until the user saves or discards it. The session owns an `ImageHistory`; the history strip
(`app/widgets/history_strip.py`) shows it.

    list_outputs(folder) -> [Path]          the newest PNGs first, capped
    read_thumbnails(paths) -> [Thumb]       blocking; the session runs it off the GUI thread
    ImageHistory                            the entries, newest first, and signals for the strip
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtGui import QImage, QImageReader

from app.jobs import Draft, Finished, Unsaved
from core.errors import LatentDeskError
from core.metadata.png_files import is_mask_file, mask_beside, read_parameters

if TYPE_CHECKING:   # the window imports this module before torch has loaded
    from core.attention_maps import AttentionMaps

HISTORY_THUMB_SIZE = 88     # px, the longest side of a thumbnail in the history strip
MAX_ITEMS = 300             # saved images shown at most; unsaved ones are never dropped
MAX_DRAFTS = 32             # draft latents kept for "Final", app-wide: 32 x 256 KB (SDXL, 1024 px) is 8 MB
# Word maps kept, app-wide, newest first: a word's map is 16 KB at 512 px (SD1), 64 KB at 1024 px (SDXL), so 30
# words of an SDXL image are 2 MB and this keeps the maps of the newest 60 or so; older images lose only their maps.
MAX_MAP_BYTES = 128 * 2**20


def list_outputs(folder: Path, cap: int = MAX_ITEMS) -> list[Path]:
    """PNGs in `folder`, newest first (by modification time, then name); save_png's hidden
    temporary files and the masks saved beside inpainted images are skipped."""
    if not folder.is_dir():
        return []
    entries = []
    for path in folder.iterdir():
        if path.suffix.lower() == ".png" and not path.name.startswith(".") and not is_mask_file(path):
            try:
                entries.append((path.stat().st_mtime_ns, path.name, path))
            except OSError:
                continue
    entries.sort(reverse=True)
    return [path for *_, path in entries[:cap]]


def read_thumbnail(path: Path, size: int = HISTORY_THUMB_SIZE) -> QImage:
    """A small QImage of `path`, decoded at reduced size where the format allows; null if unreadable."""
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)
    original = reader.size()
    if original.isValid() and max(original.width(), original.height()) > size:
        reader.setScaledSize(original.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio))
    return reader.read()


def thumbnail(image: QImage) -> QImage:
    """`image` at the history's thumbnail size."""
    return image.scaled(HISTORY_THUMB_SIZE, HISTORY_THUMB_SIZE, Qt.AspectRatioMode.KeepAspectRatio,
                        Qt.TransformationMode.SmoothTransformation)


class Thumb(NamedTuple):
    path: Path
    image: QImage
    caption: str        # the file name and the first line of its prompt
    mask: Path | None = None    # an inpainting's mask, saved beside the image ("00042-mask.png")


def read_thumbnails(paths: list[Path]) -> list[Thumb]:
    """Blocking (decodes and reads metadata); the session awaits it in a worker thread."""
    return [Thumb(path, image, caption(path), mask_beside(path)) for path in paths
            if not (image := read_thumbnail(path)).isNull()]


def caption(path: Path) -> str:
    try:
        text = read_parameters(path) or ""
    except LatentDeskError:
        text = ""
    first = text.split("\n", 1)[0][:120]
    return f"{path.name}\n{first}" if first else path.name


@dataclass(eq=False)        # an entry is itself, not its value: two runs may make the same picture
class HistoryEntry:
    """One image in the history: on disk at `path`, or held in memory as `unsaved` until it is saved."""

    thumb: QImage
    caption: str                     # a saved image's file name and prompt; an unsaved one's prompt
    path: Path | None = None
    unsaved: Unsaved | None = None
    live: bool = False               # the newest Live result (only one is kept)
    mask: Path | None = None         # a saved inpainting's mask file (an unsaved one holds it in `unsaved.mask`)
    draft: Draft | None = None       # a draft's latents, for "Final"; only the newest MAX_DRAFTS keep theirs
    attention: AttentionMaps | None = None   # its word maps (in memory only), within MAX_MAP_BYTES, newest first


class ImageHistory(QObject):
    added = Signal(object, bool)     # HistoryEntry, True when it is the newest (else the oldest)
    removed = Signal(object)         # HistoryEntry
    saved = Signal(object)           # HistoryEntry that was unsaved and now has its path
    finalRequested = Signal(object)  # HistoryEntry of a draft to decode with the VAE (app/final_decode.py)
    # The entry the main view shows now, and its whole picture; None when a run's result just went on view (the
    # run view shows it; the message comes before the run's jobDone).
    viewChanged = Signal(object, object)

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.entries: list[HistoryEntry] = []      # newest first
        self._drafts: list[HistoryEntry] = []      # the entries holding draft latents, oldest first
        self._mapped: list[HistoryEntry] = []      # the entries holding word maps, oldest first
        self.viewed: HistoryEntry | None = None    # the entry on the main view (a run's first image, or one clicked)
        self.loaded_spec: Callable[[], str | None] = lambda: None   # the loaded model's spec; the session sets it

    def add_results(self, message: Finished) -> list[HistoryEntry]:
        """A run's images, newest first: saved ones read back from their files, unsaved ones kept in memory.
        Returns their entries, in the order of `message.paths` then `message.unsaved`."""
        every_one_saved = len(message.paths) == len(message.images)
        count = len(message.paths) + len(message.unsaved)
        drafts, maps = message.drafts or (None,) * count, message.attention or (None,) * count
        entries = []
        for i, path in enumerate(message.paths):
            # after a failed save the images no longer line up with the paths: read the file back
            image = message.images[i] if every_one_saved else QImage(str(path))
            entries.append(self.add_saved(Thumb(path, thumbnail(image), caption(path), mask_beside(path)),
                                          draft=drafts[i]))
        for unsaved, draft in zip(message.unsaved, drafts[len(message.paths):], strict=True):
            entries.append(self.add_unsaved(unsaved, live=message.live, draft=draft))
        for entry, word_maps in zip(entries, maps, strict=True):
            self._keep_maps(entry, word_maps)
        return entries

    @staticmethod
    def first_image_entry(message: Finished, entries: list[HistoryEntry]) -> HistoryEntry | None:
        """Of `add_results`' entries, the one of the run's first image (the one the run view shows): the first
        saved one, unless that image was not saved (then it leads the unsaved)."""
        if not entries:
            return None
        first_unsaved = bool(message.unsaved) and message.unsaved[0].preview is message.images[0]
        return entries[len(message.paths)] if first_unsaved else entries[0]

    def add_saved(self, thumb: Thumb, newest: bool = True, draft: Draft | None = None) -> HistoryEntry:
        entry = HistoryEntry(thumb.image, thumb.caption, path=thumb.path, mask=thumb.mask)
        self._insert(entry, newest)
        self._keep_draft(entry, draft)
        for old in [e for e in self.entries if e.unsaved is None][MAX_ITEMS:]:
            self.remove(old)        # the oldest saved go; an unsaved image never does
        return entry

    def add_unsaved(self, unsaved: Unsaved, live: bool = False, draft: Draft | None = None) -> HistoryEntry:
        """An image not on disk; a Live result replaces the previous Live result."""
        if live:
            for old in self.unsaved(live=True):
                self.remove(old)
        entry = HistoryEntry(thumbnail(unsaved.preview), unsaved.infotext.split("\n", 1)[0][:120],
                             unsaved=unsaved, live=live)
        self._insert(entry, newest=True)
        self._keep_draft(entry, draft)
        return entry

    def _keep_draft(self, entry: HistoryEntry, draft: Draft | None) -> None:
        if draft is None:
            return
        entry.draft = draft
        self._drafts.append(entry)
        for oldest in self._drafts[:-MAX_DRAFTS]:
            oldest.draft = None         # its image stays; only "Final" is no longer offered for it
        del self._drafts[:-MAX_DRAFTS]

    def kept_drafts(self) -> int:
        return len(self._drafts)

    def _keep_maps(self, entry: HistoryEntry, maps: AttentionMaps | None) -> None:
        """Word maps stay in memory only: the oldest entries' go first past MAX_MAP_BYTES (the newest always stays)."""
        if maps is None:
            return
        entry.attention = maps
        self._mapped.append(entry)
        total = sum(map_bytes(e.attention) for e in self._mapped)
        while total > MAX_MAP_BYTES and len(self._mapped) > 1:
            oldest = self._mapped.pop(0)
            total -= map_bytes(oldest.attention)
            oldest.attention = None

    def kept_maps(self) -> int:
        return len(self._mapped)

    def view(self, entry: HistoryEntry | None, image: QImage | None = None) -> None:
        """`entry` is on the main view now: `image`, its whole picture, to show; None when already shown."""
        self.viewed = entry
        self.viewChanged.emit(entry, image)

    def final_available(self, entry: HistoryEntry) -> bool:
        """"Final" needs the draft's latents and the model that made them (its VAE is the one they fit)."""
        return entry.draft is not None and entry.draft.model_spec == self.loaded_spec()

    def mark_saved(self, entry: HistoryEntry, path: Path) -> None:
        entry.path, entry.unsaved, entry.live, entry.mask = path, None, False, mask_beside(path)
        entry.caption = caption(path)
        self.saved.emit(entry)

    def remove(self, entry: HistoryEntry) -> None:
        if entry in self:
            self.entries.remove(entry)
            if entry in self._drafts:
                self._drafts.remove(entry)
                entry.draft = None
            if entry in self._mapped:      # the view may still show its picture and maps; only the history forgets
                self._mapped.remove(entry)
            self.removed.emit(entry)

    def remove_path(self, path: Path) -> None:
        for entry in self.entries:
            if entry.path == path:
                self.remove(entry)
                return

    def remove_saved(self) -> None:
        """Every saved image goes (another output folder is shown); unsaved images stay."""
        for entry in [e for e in self.entries if e.unsaved is None]:
            self.remove(entry)

    def paths(self) -> list[Path]:
        return [entry.path for entry in self.entries if entry.unsaved is None]

    def unsaved(self, live: bool | None = None) -> list[HistoryEntry]:
        """Entries not on disk; `live` True/False picks only the Live result or only the others."""
        return [e for e in self.entries if e.unsaved is not None and (live is None or e.live == live)]

    def __contains__(self, entry: HistoryEntry) -> bool:
        return any(e is entry for e in self.entries)

    def _insert(self, entry: HistoryEntry, newest: bool) -> None:
        if newest:
            self.entries.insert(0, entry)
        else:
            self.entries.append(entry)
        self.added.emit(entry, newest)


def map_bytes(maps: AttentionMaps | None) -> int:
    """The memory one image's word maps hold."""
    if maps is None:
        return 0
    return sum(m.map.numel() * m.map.element_size() for m in (*maps.prompt, *maps.negative))
