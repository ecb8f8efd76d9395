#!/usr/bin/env bash
# The whole story on an embedded default: scratch MariaDB servers, fastproxy in front, a workload,
# capture, replay, the report. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fastproxy demo "$@"
