#!/usr/bin/env bash
# The benchmarks in one command, measured in release mode on this machine:
#
#   bash scripts/bench.sh            # all five: core, http, memory, fanout, file
#   bash scripts/bench.sh http core  # some of them
#
#   core    criterion: claim, complete, replay and the fingerprint, without HTTP; the
#           orders handler with and without the engine
#   http    durable route against a plain warp route, 64 keep-alive connections
#   memory  bytes per record of the in-memory store for a 200-byte response
#   fanout  time from publish until each of 10,000 WebSocket clients has the event
#   file    the file store: first executions over HTTP and group commit next to the disk's
#           single-fsync rate, replays next to the in-memory store, opening 1,000,000 records
#
# Extra arguments for one benchmark go in BENCH_HTTP_ARGS (default --direct, which adds
# the durable route without the warp adapter), BENCH_MEMORY_ARGS, BENCH_FANOUT_ARGS and
# BENCH_CORE_ARGS. Each one's output is also kept in target/bench/<name>.txt. Nothing
# here runs in CI.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
out="$target_dir/bench"
mkdir -p "$out"

selected=("$@")
if [ ${#selected[@]} -eq 0 ]; then
    selected=(core http memory fanout file)
fi
for name in "${selected[@]}"; do
    case "$name" in
        core | http | memory | fanout | file) ;;
        *)
            echo "unknown benchmark '$name' (core, http, memory, fanout, file)" >&2
            exit 2
            ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }

step "machine"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "free -g:"
    free -g
    echo "rustc: $(rustc --version)"
} | tee "$out/machine.txt"

# 10,000 clients need 20,000 descriptors and more; bench_fanout raises its own limit too.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

run_example() {
    local name="$1"
    shift
    step "$name (cargo run --release --example $name)"
    cargo run --release --quiet --example "$name" -- "$@" | tee "$out/$name.txt"
}

for name in "${selected[@]}"; do
    case "$name" in
        core)
            step "core (cargo bench --bench core)"
            # shellcheck disable=SC2086
            cargo bench --quiet --bench core -- ${BENCH_CORE_ARGS:-} | tee "$out/core.txt"
            step "fingerprint's share of the engine's cost (criterion medians)"
            python3 - "$target_dir/criterion" <<'EOF' | tee "$out/core-summary.txt"
import json, os, sys

root = sys.argv[1]

def median_ns(*parts):
    path = os.path.join(root, *parts, "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except (OSError, KeyError, ValueError):
        return None

def show(ns):
    return "n/a" if ns is None else f"{ns / 1000:.2f} us"

for size in ("orders", "1KiB", "64KiB"):
    fingerprint = median_ns("fingerprint", "json", size)
    for kind in ("first", "replay"):
        engine = median_ns("engine", kind, size)
        share = (f"{100 * fingerprint / engine:.0f}%"
                 if engine and fingerprint is not None else "n/a")
        print(f"engine/{kind}/{size}: {show(engine)} per request; "
              f"fingerprint {show(fingerprint)} = {share} of it")
    raw = median_ns("fingerprint", "raw", size)
    print(f"fingerprint/raw/{size} (same bytes, not JSON): {show(raw)}")
for name in ("claim", "complete/orders", "complete/1KiB", "complete/64KiB",
             "claim_existing/orders",
             "claim_existing/1KiB", "claim_existing/64KiB"):
    print(f"store/{name}: {show(median_ns('store', *name.split('/')))}")
plain = median_ns("orders", "plain")
for kind in ("first", "replay"):
    durable = median_ns("orders", kind)
    rate = f"{plain / durable:.2f}" if plain and durable else "n/a"
    print(f"orders/{kind}: {show(durable)} per request against {show(plain)} for the same "
          f"handler without the engine (orders/plain): durable/plain rate {rate}")
EOF
            ;;
        http)
            # shellcheck disable=SC2086
            run_example bench_http ${BENCH_HTTP_ARGS---direct}
            ;;
        memory)
            # shellcheck disable=SC2086
            run_example bench_memory ${BENCH_MEMORY_ARGS:-}
            ;;
        fanout)
            # shellcheck disable=SC2086
            run_example bench_fanout ${BENCH_FANOUT_ARGS:-}
            ;;
        file)
            step "file store over HTTP (cargo run --release --example bench_http -- --store file --scenario first)"
            cargo run --release --quiet --example bench_http -- --store file --scenario first \
                | tee "$out/file-http.txt"
            for bench in commit_bench replay_bench open_bench; do
                step "file store: $bench (cargo run --release -p cnerium-store-file --example $bench)"
                cargo run --release --quiet -p cnerium-store-file --example "$bench" \
                    | tee "$out/file-$bench.txt"
            done
            ;;
    esac
done

step "done; outputs in $out/"
