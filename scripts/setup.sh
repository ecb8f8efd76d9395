#!/usr/bin/env bash
# Everything fastproxy needs on a fresh Debian machine: MariaDB server and client, the client
# library headers (mysqlclient), pkg-config, sysbench, HAProxy (benchmarks), xxhash headers (result
# fingerprints), OpenSSL headers (the data plane's TLS), lz4 headers (the capture writer's frames),
# Chromium and its driver (the HTML report's browser test), then a virtualenv (.venv) with
# fastproxy, its test extras and its Cython extensions built.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need+=(mariadb-client)
command -v sysbench >/dev/null 2>&1 || need+=(sysbench)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
[ -e /usr/include/mariadb/mysql.h ] || need+=(libmariadb-dev)
[ -e /usr/include/xxhash.h ] || need+=(libxxhash-dev)
[ -e /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
[ -e /usr/include/lz4frame.h ] || need+=(liblz4-dev)
[ -e /usr/include/liburing.h ] || need+=(liburing-dev)  # bench/c_replay_floor.c on io_uring
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v gcc >/dev/null 2>&1 || need+=(build-essential)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel Cython
.venv/bin/python -m pip install -q -e '.[test]'
# editable installs build the extensions into the tree; make sure they are current
.venv/bin/python setup.py -q build_ext --inplace >/dev/null
echo "setup: ready ($(.venv/bin/python --version), $(.venv/bin/fastproxy --version))"
