# syntax=docker/dockerfile:1
#
# Cuttle worker-agent image. Build from the repository root (the build context):
#
#   docker build -f deploy/docker/worker-agent.Dockerfile -t cuttle-worker-agent:dev .
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
# bash: scripts run with `sh` or `bash`; ca-certificates: amqps:// and rediss:// (rustls with the
# system roots); tini: PID 1 that reaps the orphans of scripts that background processes (the
# agent kills each script's process group, but a daemonised grandchild re-parents to PID 1) and
# forwards SIGTERM to the agent, which then drains. Scripts that need more tools: extend this image.
# Debian's versions are not pinned (hadolint DL3008): a pinned version disappears from the archive
# with the next security update and breaks the build; rebuild to pick up fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends bash ca-certificates tini \
 && rm -rf /var/lib/apt/lists/*

# Fixed UID/GID 10001: the Kubernetes securityContext (runAsUser/runAsGroup/fsGroup) names them.
RUN groupadd --system --gid 10001 cuttle \
 && useradd --system --uid 10001 --gid 10001 --home-dir /work --shell /usr/sbin/nologin cuttle \
 && install -d -o 10001 -g 10001 -m 0750 /work

COPY --from=build /out/worker-agent /usr/local/bin/worker-agent

ENV CUTTLE_WORK_DIR=/work \
    RUST_LOG=info
USER 10001:10001
WORKDIR /work
# /readyz and /livez when started with --health-addr 0.0.0.0:8080 (as the Kubernetes manifests do).
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/worker-agent"]
CMD ["run", "--health-addr", "0.0.0.0:8080"]
