# Multi-stage build of s3-oidc-mount. Base images are ARGs so a mirror or a locally made
# image with the same name can stand in.
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
    && install -m 0755 target/release/s3-oidc-mount /s3-oidc-mount

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends fuse3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /s3-oidc-mount /usr/local/bin/s3-oidc-mount
ENTRYPOINT ["/usr/local/bin/s3-oidc-mount"]
