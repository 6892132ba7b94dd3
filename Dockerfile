# freshen's container image, for people with Docker (or buildah, kaniko).
# `make image` assembles the same image without a Docker engine (see
# e2e/src/ship.rs): a static binary on a static base, non-root, with the OCI
# base annotations freshen reads, so freshen can refresh itself.
#
#   docker build --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(git log -1 --format=%cI) -t freshen .

ARG RUST_VERSION=1.95
ARG BASE=gcr.io/distroless/static-debian12:nonroot
ARG BASE_DIGEST=""

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# A static glibc binary: it runs on distroless/static (no libc there).
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p freshen --target x86_64-unknown-linux-gnu \
 && cp target/x86_64-unknown-linux-gnu/release/freshen /freshen

FROM ${BASE}
ARG BASE
ARG BASE_DIGEST
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="freshen" \
      org.opencontainers.image.description="Keeps running containers fresh: image and container age, base staleness, rebuilds, canaries" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/freshen-dev/freshen" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE}" \
      org.opencontainers.image.base.digest="${BASE_DIGEST}"
COPY --from=build /freshen /usr/local/bin/freshen
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/freshen"]
CMD ["run"]
