# syntax=docker/dockerfile:1
#
# Cuttle relay image: websockify from Debian's package (bookworm: websockify 0.10.0), the
# WebSocket-to-TCP relay that agents given a wss:// broker URL connect through
# (kubernetes/components/relay). Nothing is compiled and nothing is copied in, so any directory
# will do as the build context:
#
#   docker build -f deploy/docker/relay.Dockerfile -t cuttle-relay:dev deploy/docker

FROM debian:bookworm-slim
# Debian's versions are not pinned (hadolint DL3008): a pinned version disappears from the archive
# with the next security update and breaks the build; rebuild to pick up fixes.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends websockify \
 && rm -rf /var/lib/apt/lists/*

# Fixed UID/GID 10001, like the other images: the Kubernetes securityContext names them. No home
# directory: websockify writes no file.
RUN groupadd --system --gid 10001 cuttle \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin cuttle

# The root filesystem is read-only in Kubernetes: Python must not try to write bytecode caches.
ENV PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
# The TLS WebSocket port the manifests use; an unprivileged user cannot bind 443.
EXPOSE 8443
# websockify runs as PID 1 without an init: it handles SIGTERM itself and reaps the process it
# forks for each connection. The arguments (--ssl-only, --cert, --key, listen address, target)
# come from the Deployment or `docker run`.
ENTRYPOINT ["/usr/bin/websockify"]
CMD ["--help"]
