#!/usr/bin/env bash
# The test command of the README: every crate, every feature, the examples run as real
# processes over real sockets.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo test --workspace --all-features --locked "$@"
