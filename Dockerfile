# s3-oidc-mount: mounts s3://BUCKET/PREFIX at /mnt/s3 with keyless (OIDC -> STS) credentials
# and starts the app under it:
#
#   docker run --device /dev/fuse --cap-add SYS_ADMIN \
#     -e S3_OIDC_MOUNT_SOURCE=s3://BUCKET/PREFIX -e S3_OIDC_MOUNT_ROLE_ARN=arn:aws:iam::...:role/R \
#     IMAGE run -- APP [ARGS...]
#
# Every option is an S3_OIDC_MOUNT_* environment variable (see README). The daemon stays
# root to mount; the app runs as the unprivileged user `app` (S3_OIDC_MOUNT_APP_USER).
# Base images are ARGs so a mirror or a locally made image with the same name can stand in.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Registry and target caches make rebuilds after a source change take seconds, not minutes.
# No debug info is generated: the image's binary would be stripped of it anyway.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_DEBUG=0 cargo build --release --locked --bin s3-oidc-mount \
    && mkdir -p /out \
    && strip --strip-debug -o /out/s3-oidc-mount target/release/s3-oidc-mount

FROM ${RUNTIME_IMAGE}
# Unpinned on purpose: Debian stable only moves for security fixes, which should be taken.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --create-home --home-dir /home/app \
        --shell /usr/sbin/nologin app \
    && mkdir -p /mnt/s3
COPY --from=build /out/s3-oidc-mount /usr/local/bin/s3-oidc-mount
ENV S3_OIDC_MOUNT_MOUNTPOINT=/mnt/s3 \
    S3_OIDC_MOUNT_APP_USER=app \
    S3_OIDC_MOUNT_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/s3-oidc-mount"]
CMD ["--help"]
