"""The fuzzers of bench/ as tests: `python -m pytest -m fuzz` (excluded from the default run by
pyproject.toml's `-m "not fuzz"`). Counts come from FASTPROXY_FUZZ_STREAMS (listener, default
20,000) and FASTPROXY_FUZZ_CASES (capture reader, default 20,000); the full runs
(1,000,000 streams) are `bench/fuzz_listener.py` itself, see bench/README.md."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(6 * 3600)]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz") / "corpus"
    res = _bench("bench/fuzz_corpus.py", "--out", str(out), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_fuzz_listener(corpus, tmp_path):
    n = int(os.environ.get("FASTPROXY_FUZZ_STREAMS", "20000"))
    report = tmp_path / "listener.json"
    res = _bench("bench/fuzz_listener.py", "--corpus", str(corpus), "--streams", str(n), "--warmup", str(n // 5),
                 "--checkpoint", str(max(1, n // 5)), "--json", str(report), timeout=6 * 3600)
    out = json.loads(report.read_text())
    assert res.returncode == 0 and out["findings"] == [], res.stdout[-4000:]
    assert out["streams"] == n and out["proxy_alive"] and not out["proxy_log_traceback"]
    assert out["canary_queries"] > 0


def test_fuzz_capture_reader(corpus, tmp_path):
    n = int(os.environ.get("FASTPROXY_FUZZ_CASES", "20000"))
    report = tmp_path / "reader.json"
    res = _bench("bench/fuzz_capture_reader.py", "--corpus", str(corpus), "--cases", str(n), "--json", str(report),
                 timeout=6 * 3600)
    out = json.loads(report.read_text())
    assert res.returncode == 0, res.stdout[-4000:]
    c = out["counts"]
    assert c["other exception"] == c["no file named"] == c["file, no offset"] == 0, c
