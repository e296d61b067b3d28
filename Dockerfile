# ofe's image: a Rust builder stage, and a runtime stage with nothing but the binary, the
# libraries it links, the loader and the CA bundle, run as a non-root user (65532).
#
#   docker build -t ghcr.io/ofe-dev/ofe:0.1.0 .      # builds the binary in the builder stage
#   scripts/image.sh                                   # the same runtime stage, from a binary
#                                                      # built on this machine (no image pulled)
#
# scripts/image.sh passes `--build-arg ROOTFS=prebuilt`: the runtime stage then takes the root
# filesystem assembled from target/image/rootfs, and the builder stage is never built.
ARG ROOTFS=builder

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ofe \
 && scripts/image-rootfs.sh target/release/ofe /rootfs

FROM scratch AS prebuilt
COPY target/image/rootfs/ /rootfs/

FROM ${ROOTFS} AS rootfs

FROM scratch AS runtime
COPY --from=rootfs /rootfs/ /
# The data directory, owned by the user (copying /var/lib/'s contents carries the folder
# itself; copying the empty folder's contents would leave it root's).
COPY --from=rootfs --chown=65532:65532 /rootfs/var/lib/ /var/lib/
USER 65532:65532
WORKDIR /var/lib/ofe
ENV OFE_DATA_DIR=/var/lib/ofe
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/ofe"]
CMD ["--help"]
