#!/usr/bin/env bash
# The core crate must stay runtime-free: no async runtime anywhere in its dependency tree.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=$(cargo tree -p cnerium-core --edges normal,build --prefix none --locked)
found=$(echo "$tree" | grep -E '^(tokio|async-std|smol|async-global-executor|async-executor|glommio|actix-rt) ' || true)
if [ -n "$found" ]; then
    echo "cnerium-core depends on an async runtime:"
    echo "$found"
    exit 1
fi
echo "cnerium-core: $(echo "$tree" | sort -u | wc -l) crates in its tree, no async runtime"
