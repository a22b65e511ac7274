# Multi-stage build: compile in the Rust image, run in a slim Debian as a non-root user.
FROM rust:1-slim-bookworm AS build
# pg_query builds PostgreSQL's own scanner from C and generates its bindings with libclang.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY jobs ./jobs
RUN cargo build --release --locked && strip target/release/backfilld

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin backfilld
COPY --from=build /src/target/release/backfilld /usr/local/bin/backfilld
COPY jobs /jobs
USER 10001
EXPOSE 9780
ENTRYPOINT ["/usr/local/bin/backfilld"]
CMD ["serve", "--listen", "0.0.0.0:9780", "--jobs-dir", "/jobs"]
