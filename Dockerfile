# syntax=docker/dockerfile:1
#
# The livequery image: the `livequery` binary and config/default.toml, nothing else.
#
#   docker build -t livequery .
#   docker run --rm -p 1337:1337 -e LIVEQUERY__PARSE__MASTER_KEY=… livequery   # embedded source
#   docker run --rm livequery --check-config                     # effective configuration
#
# Configure it with LIVEQUERY__SECTION__KEY environment variables (config/default.toml lists
# every key), e.g. -e LIVEQUERY__SOURCE__KIND=mongodb -e LIVEQUERY__MONGODB__URL=mongodb://…,
# or mount a TOML file and pass `--config /path/to/file.toml`.
# docker-compose.yml runs it next to MongoDB and parse-server.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
# Build stage. The whole workspace is copied (its members are crates/* and
# examples/rust-client, and Cargo needs every member to load the workspace); .dockerignore
# keeps target/, node_modules and .git out of the context. Only livequery-server is built.
# ---------------------------------------------------------------------------------------------
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies between builds; the
# binary is copied out of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p livequery-server \
    && install -D -m 0755 target/release/livequery /out/livequery

# ---------------------------------------------------------------------------------------------
# Runtime stage.
#
# debian:bookworm-slim rather than gcr.io/distroless/cc-debian12: both carry the glibc and
# libgcc_s the binary links against (the builder is bookworm too, so the glibc versions
# match) and CA certificates (TLS is rustls; its HTTPS client, used for an https
# parse.server_url, verifies against the system's CA store). Distroless has no shell and no HTTP client, so the image could
# not have a HEALTHCHECK; slim plus curl (a few MB more) lets Docker and Compose track
# GET /health, which is 200 only while the change source is connected, and leaves a shell for
# debugging.
# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

# Unpinned on purpose: the image should pick up Debian's security updates when rebuilt.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 livequery \
    && useradd --system --uid 10001 --gid livequery --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin livequery \
    && install -d -o livequery -g livequery -m 0750 /var/lib/livequery

# livequery reads ./config/default.toml relative to its working directory (after the
# defaults compiled into the binary, before --config and the environment).
WORKDIR /opt/livequery
COPY config/default.toml /opt/livequery/config/default.toml
COPY --from=builder /out/livequery /usr/local/bin/livequery

# Listen on every interface of the container (the default, 127.0.0.1, is unreachable from
# outside it). On this address the embedded source's ingest API needs a master key of the
# operator's own: without LIVEQUERY__PARSE__MASTER_KEY (or another source kind) livequery
# refuses to start. The resume token of the MongoDB source lives on the volume below, so a
# restarted container continues where it stopped; other sources ignore the setting.
# (DL3064 flags "TOKEN" in the name: the value is a file path, not a secret.)
# hadolint ignore=DL3064
ENV LIVEQUERY__SERVER__LISTEN=0.0.0.0:1337 \
    LIVEQUERY__MONGODB__RESUME_TOKEN_FILE=/var/lib/livequery/resume-token

# Declared after the directory is created and chowned, so a new named volume starts out
# owned by the runtime user (the resume token is written to a temporary file there, then
# renamed).
VOLUME ["/var/lib/livequery"]

USER 10001:10001
EXPOSE 1337

# GET /health: 200 while the source is connected, 503 otherwise. If you change
# LIVEQUERY__SERVER__LISTEN to another port, override this check (or the compose healthcheck).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:1337/health"]

# SIGTERM (docker stop): livequery stops accepting, closes every socket with 1001 and waits at
# most server.shutdown_grace (10s) — give `docker stop` / compose a longer grace period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/livequery"]
