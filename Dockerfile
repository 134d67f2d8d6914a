# herald's container image: built with the Rust toolchain, run from a
# distroless image holding the binary only (glibc and libgcc, no shell), as a
# non-root user. librdkafka, OpenSSL and zlib are linked in statically.
#
#   docker build -t herald .
#   docker run -p 8080:8080 -p 9090:9090 -e HERALD_JWT_SECRET=... herald
#
# Checked by scripts/deploy-check (hadolint, checkov); see deploy/README.md.
# checkov:skip=CKV_DOCKER_2:Kubernetes probes /readyz and /healthz on the admin port (deploy/k8s); the image has no shell or client to run a HEALTHCHECK with

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY loadtest loadtest
RUN cargo build --release --locked --bin herald \
    && cp target/release/herald /herald \
    && strip /herald

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /herald /herald
# The API (streams, publish) and the admin listener (probes, /metrics). A
# non-loopback listener needs a key (HERALD_JWT_SECRET or
# HERALD_JWT_PUBLIC_KEY) or --insecure-no-auth.
ENV HERALD_LISTEN=0.0.0.0:8080 \
    HERALD_ADMIN_LISTEN=0.0.0.0:9090 \
    HERALD_LOG_FORMAT=json
EXPOSE 8080 9090
USER 65532:65532
ENTRYPOINT ["/herald"]
