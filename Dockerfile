# syntax=docker/dockerfile:1
# mtls-gateway container image. Build from the repository root:
#   docker build -t mtls-gateway:0.1.0 .
# Linted by tests/ops (hadolint, no ignores needed).

# Build stage: the same toolchain and system packages that `make run` installs
# (pingora's zlib-ng build needs cmake; the rust image already carries a C compiler).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake=3.25.* \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --locked --release --bin mtls-gateway

# Runtime stage: distroless (glibc, libgcc, CA roots, /etc/passwd with `nonroot`; no shell,
# no package manager). Runs as uid/gid 65532 and needs nothing writable in the image: the
# only paths it writes are lifecycle.runtime_dir (pid file, upgrade socket) and, for the
# embedded store, store.path, and both are meant to be mounted volumes (emptyDir /
# PersistentVolume), so the root filesystem can be mounted read-only.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mtls-gateway /usr/local/bin/mtls-gateway
# A fallback configuration for `docker run`: embedded store under /var/lib/mtls-gateway,
# runtime dir /run/mtls-gateway, both listeners on loopback. The Helm chart mounts its own
# configuration over /etc/mtls-gateway.
COPY deploy/container/config.yaml /etc/mtls-gateway/config.yaml
VOLUME ["/run/mtls-gateway", "/var/lib/mtls-gateway"]
USER 65532:65532
# 8080: the proxy listener (proxy.listen); 9090: the admin listener (admin.listen) with
# /healthz, /readyz and /metrics.
EXPOSE 8080 9090
# No Docker HEALTHCHECK: the image has no shell, curl or wget to call /healthz with, and
# `mtls-gateway check` validates a configuration, not a running process. Kubernetes ignores
# HEALTHCHECK anyway; the Helm chart's liveness (/healthz) and readiness (/readyz) probes on
# the admin port are the health check.
HEALTHCHECK NONE
ENTRYPOINT ["/usr/local/bin/mtls-gateway"]
CMD ["run", "--config", "/etc/mtls-gateway/config.yaml"]
