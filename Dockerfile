# usermeta container image.
#
#   docker build -t usermeta .
#   docker run --rm -p 50051:50051 -e USERMETA_ZITADEL_URL=https://my-instance.zitadel.cloud \
#     -e USERMETA_SERVICE_PAT_FILE=/run/secrets/usermeta.pat -v "$PWD/usermeta.pat:/run/secrets/usermeta.pat:ro" usermeta
#
# Two stages: a Rust builder (dependencies compiled in their own cached layer) and a distroless runtime that holds
# only the binary. The binary is its own health probe (`usermeta healthcheck`), so the runtime needs no shell,
# curl or grpc_health_probe. The contract is compiled by protox inside build.rs: no protoc in the builder either.

# Any stable Rust at or above Cargo.toml's rust-version; bookworm so the binary's glibc matches the runtime's.
ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS builder
WORKDIR /src

# 1. Dependencies only: the manifests, the build script, the contract and the workspace's other crates (the
#    ZITADEL stand-in, which a production build does not compile: `--no-default-features` leaves out
#    `usermeta dev`), with placeholder sources for usermeta. This layer is rebuilt only when a manifest,
#    Cargo.lock, build.rs or the proto change, not on every source edit.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY crates ./crates
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked -p usermeta --no-default-features \
    && rm -rf src

# 2. The real sources. COPY keeps the files' modification times, which can be older than the placeholder build;
#    touching the crate roots makes cargo rebuild usermeta itself (and only it).
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p usermeta --no-default-features \
    && cp target/release/usermeta /usermeta \
    && /usermeta --version | grep '^usermeta '

FROM ${RUNTIME_IMAGE}
# distroless ships glibc, libgcc and CA certificates (for an https ZITADEL), and no shell.
COPY --from=builder /usermeta /usermeta
# The distroless "nonroot" user, by number so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
ENV USERMETA_LISTEN=0.0.0.0:50051
EXPOSE 50051
# `usermeta healthcheck` asks grpc.health.v1.Health on USERMETA_LISTEN's port over loopback; exit 0 = SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 CMD ["/usermeta", "healthcheck"]
ENTRYPOINT ["/usermeta"]
CMD ["serve"]
