"""The source itself: no unused imports, undefined names or other pyflakes findings."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pyflakes_clean():
    res = subprocess.run([sys.executable, "-m", "pyflakes", "fastproxy", "tests", "bench"], cwd=ROOT,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
