"""The API process must stay small: importing it must not import torch."""

import subprocess
import sys


def test_importing_the_api_does_not_import_torch() -> None:
    code = "import sys, app.main; bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
