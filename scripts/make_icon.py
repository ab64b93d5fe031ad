"""Write the app icon (app/icon.py draws it) as a PNG, for the bundle and the Linux .desktop entry.

    QT_QPA_PLATFORM=offscreen python scripts/make_icon.py resources/icons/latentdesk.png [--size 256]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    from app.icon import draw_icon

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not draw_icon(args.size).save(str(out), "PNG"):
        print(f"could not write {out}", file=sys.stderr)
        return 1
    del app
    return 0


if __name__ == "__main__":
    sys.exit(main())
