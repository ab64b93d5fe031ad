"""The "Get models" dialog: the catalogue, one row per model (what it is, its size, its licence, what
it is good for), each with a Download button that becomes a progress bar with Cancel while it runs.

The dialog only shows: the downloads belong to the session's `Downloads` (app/downloads.py), so they
go on with the dialog closed, and a reopened dialog shows them where they are. It is not modal.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from app.widgets.model_folder_list import ModelFolderList
from core.eta import clock
from core.families import FAMILIES

if TYPE_CHECKING:
    from app.downloads import Downloads
    from app.model_folders import ModelFolders
    from core.fetch.catalogue import CatalogueEntry

KINDS = {"checkpoint": "Model", "lora": "LoRA", "vae": "VAE", "taesd": "Preview decoder",
         "embedding": "Embedding"}
BAR_STEPS = 1000        # QProgressBar counts in C ints; a 7 GB file does not fit in one as bytes


def size_text(size: int | None) -> str:
    """2.13 GB, 335 MB, 4.8 MB: the units a download page uses (powers of 1000)."""
    if not size:
        return "size unknown"
    if size >= 1e9:
        return f"{size / 1e9:.2f} GB"
    return f"{size / 1e6:.0f} MB" if size >= 10e6 else f"{size / 1e6:.1f} MB"


def progress_text(progress) -> str:
    """'1.20 GB of 2.13 GB · 35.2 MB/s · 0:25 left' (speed and time once they are known)."""
    parts = [f"{size_text(progress.done)} of {size_text(progress.total)}" if progress.total
             else size_text(progress.done)]
    if progress.rate:
        parts.append(f"{progress.rate / 1e6:.1f} MB/s")
        if progress.seconds_left is not None:
            parts.append(f"{clock(progress.seconds_left)} left")
    return " · ".join(parts)


def settings_text(settings: dict) -> str:
    """The catalogue's recommended settings, for a tooltip: 'Recommended: Euler a, 25 steps, guidance 7,
    512×512'."""
    if not settings:
        return ""
    shown = [str(settings[key]) for key in ("sampler",) if key in settings]
    shown += [f"{settings['steps']} steps"] if "steps" in settings else []
    shown += [f"guidance {settings['guidance']}"] if "guidance" in settings else []
    shown += [f"{settings['width']}×{settings['height']}"] if {"width", "height"} <= settings.keys() else []
    shown += [f"{key} {value}" for key, value in settings.items()
              if key not in ("sampler", "steps", "guidance", "width", "height")]
    return "Recommended: " + ", ".join(shown)


class EntryRow(QFrame):
    """One catalogue entry: its description on the left, its download state on the right."""

    downloadRequested = Signal(str)     # the entry's name
    cancelRequested = Signal(str)

    def __init__(self, entry: CatalogueEntry, parent: QWidget | None = None):
        super().__init__(parent, objectName="CatalogueEntry")
        self.entry = entry
        self.setFrameShape(QFrame.Shape.StyledPanel)
        family = FAMILIES[entry.family].title if entry.family in FAMILIES else entry.family
        facts = " · ".join(f for f in (KINDS.get(entry.kind, entry.kind), family, size_text(entry.size_bytes)) if f)
        self.title = QLabel(f"<b>{html.escape(entry.title)}</b> <span>&nbsp;{html.escape(facts)}</span>",
                            wordWrap=True)
        self.about = QLabel(entry.about, wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.licence = QLabel(self._licence_link(), openExternalLinks=True,
                              textInteractionFlags=Qt.TextInteractionFlag.TextBrowserInteraction)
        self.error = QLabel(objectName="Error", wordWrap=True, textFormat=Qt.TextFormat.PlainText)
        self.error.setStyleSheet("color: #d9534f;")
        self.error.hide()
        self.button = QPushButton("Download", accessibleName=f"Download {entry.title}")
        self.bar = QProgressBar(maximum=BAR_STEPS, textVisible=False)
        self.detail = QLabel(objectName="Muted")
        self.cancel_button = QPushButton("Cancel", accessibleName=f"Cancel {entry.title}")
        self.button.clicked.connect(lambda: self.downloadRequested.emit(entry.name))
        self.cancel_button.clicked.connect(lambda: self.cancelRequested.emit(entry.name))
        tip = settings_text(entry.settings)
        self.setToolTip(tip)
        self.about.setToolTip(tip)

        text = QVBoxLayout()
        for label in (self.title, self.about, self.licence, self.error):
            text.addWidget(label)
        state = QGridLayout()
        state.addWidget(self.bar, 0, 0)
        state.addWidget(self.cancel_button, 0, 1)
        state.addWidget(self.button, 0, 0, 1, 2, Qt.AlignmentFlag.AlignRight)
        state.addWidget(self.detail, 1, 0, 1, 2)
        layout = QHBoxLayout(self)
        layout.addLayout(text, 3)
        layout.addLayout(state, 2)

    def _licence_link(self) -> str:
        name = html.escape(self.entry.licence or "licence")
        url = self.entry.licence_url
        if not url:
            return f"Licence: {name}"
        return f'Licence: <a href="{html.escape(QUrl(url).toString(), quote=True)}">{name}</a>'

    # -- states --------------------------------------------------------------------------------

    def show_idle(self, installed: bool, resumable: bool) -> None:
        """Not running: installed, part of it kept (Resume), or not there (Download)."""
        self._running(False)
        self.button.setText("Installed" if installed else "Resume" if resumable else "Download")
        self.button.setEnabled(not installed)
        self.button.setToolTip("" if not resumable or installed else "Go on from where the download stopped")

    def show_running(self, progress=None) -> None:
        self._running(True)
        self.error.hide()
        if progress is None:
            self.bar.setRange(0, 0)         # busy until the size is known
            self.detail.setText("Starting…")
            return
        if progress.total:
            self.bar.setRange(0, BAR_STEPS)
            self.bar.setValue(min(BAR_STEPS, int(BAR_STEPS * progress.done / progress.total)))
        self.detail.setText(progress_text(progress))

    def show_error(self, message: str) -> None:
        self.error.setText(message)
        self.error.setToolTip(message)
        self.error.show()

    def _running(self, running: bool) -> None:
        self.button.setVisible(not running)
        for widget in (self.bar, self.cancel_button, self.detail):
            widget.setVisible(running)


class GetModelsDialog(QDialog):
    addFolderRequested = Signal()

    def __init__(self, downloads: Downloads, entries: list[CatalogueEntry], parent: QWidget | None = None,
                 folders: ModelFolders | None = None):
        super().__init__(parent)
        self.downloads = downloads
        self.setWindowTitle("Get models")
        self.resize(760, 560)
        folder = downloads.models_dir
        intro = QLabel(
            "The built-in model needs nothing more; these models can be downloaded beside it. They are saved "
            f'in <a href="{QUrl.fromLocalFile(str(folder)).toString()}">{html.escape(str(folder))}</a> and '
            "appear in the model list when done. Hover over a model for its recommended settings.",
            wordWrap=True, openExternalLinks=True)
        self.rows: dict[str, EntryRow] = {}
        listing = QWidget()
        rows = QVBoxLayout(listing)
        for entry in entries:
            row = self.rows[entry.name] = EntryRow(entry)
            row.downloadRequested.connect(self._download)
            row.cancelRequested.connect(downloads.cancel)
            rows.addWidget(row)
            self._show_state(entry.name)
        rows.addStretch(1)
        scroll = QScrollArea(widgetResizable=True, frameShape=QFrame.Shape.NoFrame)
        # The rows wrap their text to the width there is: a sideways scroll bar would hide the buttons.
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(listing)
        own = QPushButton("Add model folder…", toolTip="Use models you have already (an A1111 or ComfyUI "
                                                        "folder, or any folder of .safetensors files), without copying them")
        own.clicked.connect(self.addFolderRequested)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        footer = QHBoxLayout()
        footer.addWidget(QLabel("Have models already?"))
        footer.addWidget(own)
        footer.addStretch(1)
        footer.addWidget(buttons)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addWidget(scroll, 1)
        if folders is not None:
            layout.addWidget(ModelFolderList(folders))
        layout.addLayout(footer)

        downloads.started.connect(self._show_state)
        downloads.progress.connect(self._show_progress)
        downloads.finished.connect(self._show_state)
        downloads.cancelled.connect(self._show_state)
        downloads.failed.connect(self._show_failure)

    def row(self, name: str) -> EntryRow:
        return self.rows[name]

    def showEvent(self, event) -> None:
        for name in self.rows:      # reopened: a file may have been deleted or finished meanwhile
            self._show_state(name)
        super().showEvent(event)

    def _download(self, name: str) -> None:
        self.downloads.start(self.rows[name].entry)

    def _show_state(self, name: str, *_) -> None:
        row = self.rows.get(name)
        if row is None:
            return
        if self.downloads.is_running(name):
            row.show_running(self.downloads.last_progress.get(name))
        else:
            row.show_idle(self.downloads.installed(row.entry), self.downloads.resumable(row.entry))
            if error := self.downloads.errors.get(name):
                row.show_error(error)

    def _show_progress(self, name: str, progress) -> None:
        if row := self.rows.get(name):
            row.show_running(progress)

    def _show_failure(self, name: str, message: str) -> None:
        self._show_state(name)
        if row := self.rows.get(name):
            row.show_error(message)
