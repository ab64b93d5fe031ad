"""The look: Qt's Fusion style with a dark palette (images read best on a dark surround) and one
accent colour for the action that matters (Generate)."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

BACKGROUND = "#1b1c21"
PANEL = "#23252b"
INPUT = "#2c2e36"
BORDER = "#393c46"
TEXT = "#e7e7ec"
MUTED = "#9a9fab"
ACCENT = "#7c6cf2"
ACCENT_HOVER = "#9184ff"
DANGER = "#e0605a"

STYLE = f"""
QWidget {{ font-size: 10pt; }}
#Controls, #ControlsScroll, #ControlsScroll > QWidget > QWidget {{ background: {PANEL}; }}
#Controls {{ border-right: 1px solid {BORDER}; }}
QLabel#SectionTitle {{ color: {MUTED}; font-size: 8pt; font-weight: 600; letter-spacing: 1px;
                       padding-top: 6px; }}
QLabel#Muted, QLabel#Caption {{ color: {MUTED}; }}
QLabel#GuidanceValue {{ font-weight: 600; min-width: 2.5em; }}
QPlainTextEdit, QLineEdit, QSpinBox, QDoubleSpinBox, QComboBox {{
    background: {INPUT}; border: 1px solid {BORDER}; border-radius: 6px; padding: 4px 6px;
    selection-background-color: {ACCENT}; }}
QPlainTextEdit:focus, QLineEdit:focus, QSpinBox:focus, QComboBox:focus {{ border: 1px solid {ACCENT}; }}
QPushButton, QToolButton {{ background: {INPUT}; border: 1px solid {BORDER}; border-radius: 6px;
                            padding: 5px 10px; }}
QPushButton:hover, QToolButton:hover {{ border-color: {ACCENT}; }}
QPushButton:focus, QToolButton:focus {{ border-color: {ACCENT_HOVER}; }}
QPushButton:disabled {{ color: #666a75; }}
QPushButton#Generate {{ background: {ACCENT}; border: none; color: white; font-weight: 600;
                        padding: 9px 12px; font-size: 11pt; }}
QPushButton#Generate:hover {{ background: {ACCENT_HOVER}; }}
QPushButton#Cancel:enabled {{ color: {DANGER}; }}
QSlider {{ min-height: 22px; }}
QSlider::groove:horizontal {{ height: 4px; margin: 0 2px; background: {BORDER}; border-radius: 2px; }}
QSlider::sub-page:horizontal {{ height: 4px; background: {ACCENT}; border-radius: 2px; }}
QSlider::add-page:horizontal {{ height: 4px; background: {BORDER}; border-radius: 2px; }}
QSlider::sub-page:horizontal:disabled {{ background: {BORDER}; }}
QSlider::handle:horizontal {{ background: {TEXT}; width: 14px; height: 14px; margin: -5px 0;
                              border-radius: 7px; }}
QSlider::handle:horizontal:focus {{ background: {ACCENT_HOVER}; }}
QProgressBar {{ background: {INPUT}; border: none; border-radius: 4px; height: 8px; text-align: center;
                color: transparent; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 4px; }}
#TopBar {{ background: {PANEL}; border-bottom: 1px solid {BORDER}; }}
QLabel#AppTitle {{ font-size: 12pt; font-weight: 700; }}
QScrollBar:vertical {{ background: transparent; width: 8px; margin: 2px; }}
QScrollBar:horizontal {{ background: transparent; height: 8px; margin: 2px; }}
QScrollBar::handle {{ background: {BORDER}; border-radius: 3px; min-height: 24px; min-width: 24px; }}
QScrollBar::handle:hover {{ background: {MUTED}; }}
QScrollBar::add-line, QScrollBar::sub-line {{ width: 0; height: 0; }}
QScrollBar::add-page, QScrollBar::sub-page {{ background: none; }}
QToolButton {{ padding: 4px 7px; }}
#InitWell {{ border: 1px dashed {BORDER}; border-radius: 8px; background: {BACKGROUND}; }}
#InitWell[dragging="true"] {{ border: 1px solid {ACCENT}; }}
#History {{ background: {PANEL}; border: none; border-top: 1px solid {BORDER}; }}
QListWidget#History::item:selected {{ background: {INPUT}; border: 1px solid {ACCENT}; border-radius: 6px; }}
#MessageBar {{ border-radius: 6px; margin: 6px 8px 0 8px; }}
#MessageBar[kind="info"] {{ background: #2a3350; }}
#MessageBar[kind="warning"] {{ background: #4a3b1f; }}
#MessageBar[kind="error"] {{ background: #4d2326; }}
QStatusBar {{ background: {PANEL}; color: {MUTED}; border-top: 1px solid {BORDER}; }}
QToolTip {{ background: {INPUT}; color: {TEXT}; border: 1px solid {BORDER}; }}
"""


def apply_theme(app: QApplication) -> None:
    app.setStyle("Fusion")
    palette = QPalette()
    colors = {
        QPalette.ColorRole.Window: BACKGROUND, QPalette.ColorRole.WindowText: TEXT,
        QPalette.ColorRole.Base: INPUT, QPalette.ColorRole.AlternateBase: PANEL,
        QPalette.ColorRole.Text: TEXT, QPalette.ColorRole.Button: INPUT,
        QPalette.ColorRole.ButtonText: TEXT, QPalette.ColorRole.Highlight: ACCENT,
        QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: INPUT,
        QPalette.ColorRole.ToolTipText: TEXT, QPalette.ColorRole.PlaceholderText: MUTED,
        QPalette.ColorRole.Link: ACCENT_HOVER,
    }
    for role, color in colors.items():
        palette.setColor(role, QColor(color))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor("#666a75"))
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor("#666a75"))
    app.setPalette(palette)
    app.setStyleSheet(STYLE)
