#!/usr/bin/env bash
# The whole test suite (README's test command; .ci/run calls it): the workspace's tests, then
# the integration suite and the browser test again with every node's data in PostgreSQL. The
# storage unit tests and the binary's crash, replica, backup and audit tests run on both
# backends in the first pass already.
#
# It sets up what the tests need on a fresh machine first: Debian's PostgreSQL server binaries
# (the tests' throwaway clusters), Chromium (the console's browser test), SoftHSM2 (a real
# PKCS#11 token for the KEK-in-an-HSM test, with softhsm2-util), Node.js and npm, and the
# browser test's npm packages (playwright-core, pinned in tests/browser/package-lock.json).
# Run as root it installs the missing Debian packages; otherwise it names them and stops.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
{ [ -e /usr/lib/softhsm/libsofthsm2.so ] && command -v softhsm2-util >/dev/null; } || missing+=(softhsm2)
command -v npm >/dev/null || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "tests/all.sh: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "tests/all.sh: the tests need these Debian packages: ${missing[*]}" >&2
    echo "  install them (sudo apt-get install ${missing[*]}) and run this again" >&2
    exit 1
  fi
fi
(cd tests/browser && npm ci --no-audit --no-fund --silent)

cargo test --locked --workspace "$@"
export DOMICILE_FEDERATION_STORAGE=postgres
cargo test --locked -p domicile-tests "$@"
cargo test --locked -p domicile --test console_browser "$@"
