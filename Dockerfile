# Builds the three jetcron binaries into one small image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/jetcron-scheduler \
                  /src/target/release/jetcron-worker \
                  /src/target/release/jetcron /usr/local/bin/
COPY examples /examples
ENV NATS_URL=nats://nats:4222
USER nobody
