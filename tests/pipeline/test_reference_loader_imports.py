"""The reference loader is what a user without DALI runs: importing it must not import DALI or the DALI loader."""

import subprocess
import sys


def test_the_reference_loader_imports_neither_dali_nor_the_dali_loader():
    code = ("import sys, pipeline.reference; "
            "print(sorted(m for m in ('nvidia.dali', 'pipeline.loader', 'pipeline.graph') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
