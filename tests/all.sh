#!/usr/bin/env bash
# The whole test suite (README's test command; .ci/run calls it): the workspace's tests, then
# the integration suite and the browser test again with every node's data in PostgreSQL. The
# storage unit tests and the binary's crash, replica, backup and audit tests run on both
# backends in the first pass already.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --workspace "$@"
export DOMICILE_FEDERATION_STORAGE=postgres
cargo test --locked -p domicile-tests "$@"
cargo test --locked -p domicile --test console_browser "$@"
