#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what it needs, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
# the tests that start a proxy, once more with four data-plane workers in each proxy
FASTPROXY_TEST_WORKERS=4 exec .venv/bin/python -m pytest -q -p no:cacheprovider -m "proxy and not fuzz" "$@"
