"""core/ is the engine: importing all of it must never pull in Qt or the app."""

import subprocess
import sys
import textwrap


def test_every_core_module_imports_without_pyside6():
    script = textwrap.dedent("""
        import importlib, pkgutil, sys

        class NoQt:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("PySide6", "shiboken6", "app"):
                    raise ImportError(f"core must not import {name}")

        sys.meta_path.insert(0, NoQt())
        import core
        names = [m.name for m in pkgutil.walk_packages(core.__path__, "core.")]
        for name in names:
            importlib.import_module(name)
        assert not any(m.split(".")[0] in ("PySide6", "shiboken6", "app") for m in sys.modules)
        print(len(names))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 8  # every engine module was really imported
