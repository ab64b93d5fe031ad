"""The window opens before the engine loads: its modules must not import torch (issue 6: fast start).

torch and transformers take seconds to import; the window module imports only Qt and light
modules, and the engine is imported by the model-loading and generation threads."""

import subprocess
import sys
import textwrap

ENGINE = ("torch", "transformers", "numpy", "safetensors")


def test_the_window_module_imports_without_the_engine():
    script = textwrap.dedent(f"""
        import sys

        class NoEngine:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {ENGINE!r}:
                    raise ImportError(f"the window must not import {{name}} before it is shown")

        sys.meta_path.insert(0, NoEngine())
        import app.main, app.window, app.worker, app.models, app.jobs, app.history, app.settings
        assert hasattr(app.window, "MainWindow")
        print(sorted(m for m in sys.modules if m.startswith("app.")))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "'app.window'" in result.stdout and "'app.widgets.controls'" in result.stdout
