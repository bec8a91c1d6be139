# Multi-stage build: compile with the full toolchain, ship a slim runtime.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY conf ./conf
# Cargo.toml names benches/decision.rs; cargo checks it exists even for --bin.
COPY benches ./benches
RUN cargo build --release --locked --bin tollgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tollgate
COPY --from=build /src/target/release/tollgate /usr/local/bin/tollgate
COPY conf/tollgate.yaml /etc/tollgate/tollgate.yaml
USER tollgate
# 8080: proxy. 9090: admin (/metrics, /health, /ready); the example config
# binds it to 127.0.0.1, so mount a config with 0.0.0.0:9090 to scrape it
# from outside the container.
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9090/health >/dev/null || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["run", "-c", "/etc/tollgate/tollgate.yaml"]
