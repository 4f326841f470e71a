#!/usr/bin/env bash
# Runs every test on a fresh Debian/Ubuntu machine (as root): installs FUSE and Ceph RGW
# if missing, starts a throwaway S3 server on 127.0.0.1, checks formatting and lints, runs
# the unit and integration tests (real FUSE mounts against the real server), stops the server.
#
#   scripts/test.sh [extra cargo test args]
#
# Environment: TEST_RGW_PORT / TEST_RGW_MON_PORT (default 17480 / 17789).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }

command -v cargo >/dev/null || { log "error: cargo not found; install Rust (https://rustup.rs)"; exit 1; }
[[ -e /dev/fuse ]] || { log "error: /dev/fuse is missing; the FUSE tests need it (modprobe fuse, or --device /dev/fuse)"; exit 1; }

scripts/rgw.sh install

state=$(mktemp -u /tmp/s3om-test-rgw.XXXXXX)
cleanup() { scripts/rgw.sh stop "$state" || true; }
trap cleanup EXIT
RGW_PORT=${TEST_RGW_PORT:-17480} RGW_MON_PORT=${TEST_RGW_MON_PORT:-17789} scripts/rgw.sh start "$state" >/dev/null
# shellcheck disable=SC1091
source "$state/env"
export S3_ENDPOINT AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION
# The daemon must not probe the EC2 instance-metadata address for credentials in tests.
export AWS_EC2_METADATA_DISABLED=true

log "cargo fmt --check"
cargo fmt --check
log "cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
log "cargo test"
cargo test --locked --all-targets "$@"
log "all tests passed"
