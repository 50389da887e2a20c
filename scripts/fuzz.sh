#!/usr/bin/env bash
# Runs every cargo-fuzz target under fuzz/ for a set time and fails when one finds a crash.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]    (default 30)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz passes nightly-only flags to
# rustc (sanitizers); on a stable toolchain RUSTC_BOOTSTRAP=1 lets them through, so the
# script sets it unless the caller did. Corpora grow in fuzz/corpus/<target> (not
# committed), seeded from fuzz/seeds/<target>; a crash leaves its input in
# fuzz/artifacts/<target>/, and `cargo fuzz run <target> <file>` reproduces it.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-30}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is not installed; run: cargo install cargo-fuzz" >&2
    exit 2
fi
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"

cargo fuzz build
mkdir -p logs
failed=()
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    seeds=()
    [ -d "seeds/$target" ] && seeds=("seeds/$target")
    log="logs/$target.log"
    echo "==> $target: ${seconds}s"
    # -timeout: an input running over 10 s is reported as a hang; -rss_limit_mb: a leak
    # or a runaway allocation is reported instead of exhausting the machine.
    if cargo fuzz run "$target" "corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        grep -E '^Done [0-9]+ runs' "$log" || true
    else
        failed+=("$target")
        echo "fuzz: $target FAILED; the end of $log:"
        tail -n 40 "$log"
        ls "artifacts/$target" 2>/dev/null | sed "s|^|    artifacts/$target/|"
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: crashes or hangs in: ${failed[*]}"
    exit 1
fi
echo "fuzz: every target ran ${seconds}s without a crash"
