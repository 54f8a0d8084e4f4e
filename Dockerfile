# syntax=docker/dockerfile:1
# Build stage: the same toolchain and system packages that `make run` installs.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake=3.25.* \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --locked --release --bin mtls-gateway

# Runtime stage: no shell tools beyond what the base image carries, non-root, read-only root.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mtls-gateway /usr/local/bin/mtls-gateway
COPY config/example.yaml /etc/mtls-gateway/config.yaml
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/mtls-gateway"]
CMD ["run", "--config", "/etc/mtls-gateway/config.yaml"]
