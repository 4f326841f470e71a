#!/usr/bin/env bash
# Builds the fuzz target of the key -> name and listing rules (fuzz/fuzz_targets/listing.rs)
# and runs it with libFuzzer for a while, starting from the seeds in fuzz/corpus/listing.
# Works on the stable toolchain: coverage instrumentation only, no sanitizer (that needs
# nightly; the code fuzzed is safe Rust, so a bug shows as a panic, which libFuzzer reports).
# With nightly and cargo-fuzz installed, `cd fuzz && cargo fuzz run listing` also works.
#
#   scripts/fuzz.sh [SECONDS]    default 30 (or FUZZ_SECS); new inputs go to a temp dir
#
# A crash leaves its input in fuzz/artifacts/ and exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-${FUZZ_SECS:-30}}
host=$(rustc -vV | sed -n 's/^host: //p')
# What cargo-fuzz passes, less the sanitizer. --target keeps the flags off build scripts.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
cargo build --locked --release --target "$host" --bin listing
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p artifacts
"target/$host/release/listing" -max_total_time="$secs" -max_len=4096 -print_final_stats=1 \
    -artifact_prefix=artifacts/ "$work" corpus/listing
