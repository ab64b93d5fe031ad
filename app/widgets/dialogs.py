"""The window's modal questions and file choosers, each one call that returns the answer (an empty
string when the user cancelled a chooser). Kept apart so the window only decides when to ask."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

IMAGE_FILES = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff *.gif)"


def ask_close(parent: QWidget, unsaved: int, running: bool) -> str:
    """"save", "discard" or "cancel": what to do with unsaved images (and a run) on closing."""
    lost = [f"{unsaved} image{'s are' if unsaved > 1 else ' is'} not saved"] if unsaved else []
    lost += ["an image is being made"] if running else []
    box = QMessageBox(QMessageBox.Icon.Warning, "Quit Latent Desk", f"{' and '.join(lost).capitalize()}.", parent=parent)
    save = box.addButton("Save and quit" if unsaved else "Quit", QMessageBox.ButtonRole.AcceptRole)
    discard = box.addButton("Quit without saving", QMessageBox.ButtonRole.DestructiveRole) if unsaved else None
    box.addButton(QMessageBox.StandardButton.Cancel)
    box.exec()
    clicked = box.clickedButton()
    return "save" if clicked is save else "discard" if clicked is discard else "cancel"


def choose_model_file(parent: QWidget, folder: Path) -> str:
    path, _ = QFileDialog.getOpenFileName(parent, "Open model", str(folder), "Models (*.safetensors);;All files (*)")
    return path


def choose_model_folder(parent: QWidget, folder: Path) -> str:
    return QFileDialog.getExistingDirectory(parent, "Open diffusers model folder", str(folder))


def choose_init_image(parent: QWidget) -> str:
    path, _ = QFileDialog.getOpenFileName(parent, "Start from an image", "", IMAGE_FILES)
    return path


def choose_output_dir(parent: QWidget, folder: Path) -> str:
    return QFileDialog.getExistingDirectory(parent, "Save images to", str(folder))


def choose_shared_models_folder(parent: QWidget) -> str:
    """A folder that holds models already: an A1111 or ComfyUI folder, or any folder of checkpoints."""
    return QFileDialog.getExistingDirectory(parent, "Add a folder with models (A1111, ComfyUI or any)", str(Path.home()))
