#!/usr/bin/env bash
# Dependency audit with cargo-deny, under the policy in deny.toml.
#
# `bans`, `licenses` and `sources` need nothing from the network and always run. The
# `advisories` check needs the RustSec database, cloned from GitHub: when it cannot be
# fetched, the script says so and skips that check (or, with AUDIT_REQUIRE_ADVISORIES=1,
# fails). A database fetched earlier is used when a new fetch fails, with a warning.
#
# Needs cargo-deny: `cargo install cargo-deny --locked` (about 4 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version >/dev/null 2>&1; then
    echo "audit: cargo-deny is not installed; run: cargo install cargo-deny --locked" >&2
    exit 2
fi

echo "==> cargo deny check bans licenses sources (rerun without --hide-inclusion-graph for the trees)"
cargo deny check --hide-inclusion-graph bans licenses sources

echo "==> cargo deny check advisories"
fetch_log=$(mktemp)
trap 'rm -f "$fetch_log"' EXIT
if cargo deny fetch db >"$fetch_log" 2>&1; then
    cargo deny check advisories
    exit 0
fi

reason=$(grep -m 1 'fatal:' "$fetch_log" || grep -m 1 -E 'ERROR|error' "$fetch_log" || true)
db_dir="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
cached=$(find "$db_dir" -mindepth 2 -maxdepth 2 -name crates -type d 2>/dev/null | head -n 1)
if [ -n "$cached" ]; then
    age_days=$(( ( $(date +%s) - $(stat -c %Y "$cached") ) / 86400 ))
    echo "audit: WARNING: could not update the RustSec advisory database (${reason:-see below});"
    echo "audit: checking against the copy fetched ${age_days} day(s) ago instead"
    cargo deny --offline check advisories
    exit 0
fi

echo "audit: SKIPPED the advisories check: the RustSec advisory database"
echo "audit: (https://github.com/rustsec/advisory-db) could not be fetched from this machine"
echo "audit: and no earlier copy exists: ${reason:-$(tail -n 1 "$fetch_log")}"
echo "audit: bans, licenses and sources were checked; known vulnerabilities were NOT."
if [ "${AUDIT_REQUIRE_ADVISORIES:-0}" = 1 ]; then
    echo "audit: AUDIT_REQUIRE_ADVISORIES=1, so this is a failure" >&2
    exit 1
fi
