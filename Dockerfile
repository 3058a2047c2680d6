# syntax=docker/dockerfile:1
# Builds the three jetcron binaries into one small image.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Downloaded and compiled dependencies live in BuildKit cache mounts, kept
# from one build to the next: a change to jetcron's code recompiles jetcron,
# not its dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p jetcron-scheduler -p jetcron-worker -p jetcron-cli \
    && mkdir -p /out \
    && cp target/release/jetcron-scheduler target/release/jetcron-worker target/release/jetcron /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY examples /examples
ENV NATS_URL=nats://nats:4222
USER nobody
