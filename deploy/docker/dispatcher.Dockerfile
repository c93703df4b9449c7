# syntax=docker/dockerfile:1
#
# Cuttle dispatcher image (the CLI that submits scripts and follows them). Build from the
# repository root (the build context):
#
#   docker build -f deploy/docker/dispatcher.Dockerfile -t cuttle-dispatcher:dev .
#
# Needs BuildKit (the default builder since Docker 23) for the cache mounts below: cargo's
# registry, git checkouts and target/ survive between builds, so a source change recompiles only
# the workspace crates, not the ~250 dependencies.

# Rust >= 1.90, the workspace's rust-version (Cargo.lock pins redb 4.6.0, which needs it): older
# builders fail with --locked. 1.95 is the toolchain the project is built and tested with.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

############################## build ##############################
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Only what cargo needs (.dockerignore keeps target/, .git/ and deploy/ out of the context).
COPY . .
# The binaries leave the cache-mounted target/ in the same RUN, or they would not be in the layer.
# This stage is word for word the same in both Dockerfiles here, so building both images compiles
# once: the second build takes the whole stage from the layer cache.
RUN --mount=type=cache,id=cuttle-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=cuttle-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=cuttle-target,target=/src/target \
    cargo build --release --locked --bins -p worker-agent -p dispatcher \
 && install -D -m 0755 -t /out target/release/worker-agent target/release/dispatcher

############################## runtime ##############################
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: amqps:// (rustls with the system roots). The dispatcher runs no scripts itself,
# so no shell beyond the base image's dash is needed.
# Debian's versions are not pinned (hadolint DL3008): a pinned version disappears from the archive
# with the next security update and breaks the build; rebuild to pick up fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Same fixed UID/GID 10001 as the agent image.
RUN groupadd --system --gid 10001 cuttle \
 && useradd --system --uid 10001 --gid 10001 --home-dir /work --shell /usr/sbin/nologin cuttle \
 && install -d -o 10001 -g 10001 -m 0750 /work

COPY --from=build /out/dispatcher /usr/local/bin/dispatcher

# CUTTLE_AMQP_URL (with credentials) comes from the environment at run time, never the image.
# Machine policies: mount a TOML file and point CUTTLE_CONFIG at it, e.g.
#   -v "$PWD/policies.toml:/etc/cuttle/policies.toml:ro" -e CUTTLE_CONFIG=/etc/cuttle/policies.toml
ENV RUST_LOG=warn
USER 10001:10001
# Scripts to submit with --script FILE: mount them here (docker run -v "$PWD:/work:ro" ...).
WORKDIR /work
# `docker stop` (and the kubelet, through containerd) then sends what Ctrl-C sends: the dispatcher
# cancels the script on the agent, waits until it has stopped, and exits 106. A second signal (or
# the runtime's SIGKILL after the grace period) leaves at once.
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/dispatcher"]
CMD ["--help"]
