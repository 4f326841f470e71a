#!/usr/bin/env bash
# Runs every test on a fresh Debian/Ubuntu machine (as root): installs FUSE and Ceph RGW
# if missing, starts a throwaway S3 server on 127.0.0.1, checks formatting and lints, runs
# the unit and integration tests (real FUSE mounts against the real server), then the
# container tests: lints the Dockerfiles, starts a local Docker engine, builds the image and
# the example app image, and runs them against the same server. Stops what it started.
#
#   scripts/test.sh [extra cargo test args]
#
# Environment: TEST_RGW_PORT / TEST_RGW_MON_PORT (default 17480 / 17789);
# S3OM_SKIP_CONTAINER=1 skips the container tests (they are also skipped, with a message,
# when the Docker engine cannot start on this machine); FUZZ_SECS (fuzzing time, default
# 20); SOAK_SECS, NAMESPACE_OBJECTS (longer reliability runs, see README).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }

command -v cargo >/dev/null || { log "error: cargo not found; install Rust (https://rustup.rs)"; exit 1; }
[[ -e /dev/fuse ]] || { log "error: /dev/fuse is missing; the FUSE tests need it (modprobe fuse, or --device /dev/fuse)"; exit 1; }

scripts/rgw.sh install

state=$(mktemp -u /tmp/s3om-test-rgw.XXXXXX)
docker_state=$(mktemp -u /tmp/s3om-test-docker.XXXXXX)
cleanup() {
    scripts/container.sh engine-stop "$docker_state" || true
    scripts/rgw.sh stop "$state" || true
}
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
log "fuzz the name/listing rules (${FUZZ_SECS:-20} s)"
scripts/fuzz.sh "${FUZZ_SECS:-20}"

container_tests() {
    if [[ ${S3OM_SKIP_CONTAINER:-} == 1 ]]; then
        log "SKIPPED the container tests (S3OM_SKIP_CONTAINER=1)"
        return 0
    fi
    log "container tests: hadolint, Docker engine, images"
    scripts/container.sh install
    scripts/container.sh lint
    if ! scripts/container.sh engine-start "$docker_state"; then
        log "SKIPPED the container tests: the Docker engine cannot start on this machine"
        return 0
    fi
    scripts/container.sh base-images
    BUILD_LOG=$docker_state/build.log scripts/container.sh build s3-oidc-mount:test
    DOCKER_BUILDKIT=1 /usr/bin/docker build -q --network host -t s3-oidc-mount-app:test \
        --build-arg MOUNT_IMAGE=s3-oidc-mount:test docs/app-image >/dev/null
    S3OM_TEST_IMAGE=s3-oidc-mount:test S3OM_TEST_APP_IMAGE=s3-oidc-mount-app:test \
        cargo test --locked --test it container:: -- --ignored --nocapture
}
container_tests
log "all tests passed"
