# ofe's image: a Rust builder stage, and a runtime stage with nothing but the binary, the
# libraries it links, the loader and the CA bundle, run as a non-root user (65532).
#
#   docker build -t ghcr.io/ofe-dev/ofe:0.1.0 .          # builds everything, in the builder
#   scripts/image.sh                                       # the same runtime stage, from a binary
#                                                          # built on this machine (no pulls)
#
# scripts/image.sh builds the `runtime-prebuilt` target: the same runtime stage, fed by a root
# filesystem assembled from a binary built outside (where no `rust` image can be pulled).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin ofe \
 && scripts/image-rootfs.sh target/release/ofe /rootfs

FROM scratch AS runtime
COPY --from=builder /rootfs/ /
# The data directory, owned by the user (copying /var/lib/'s contents carries the folder
# itself; copying the empty folder's contents would leave it root's).
COPY --from=builder --chown=65532:65532 /rootfs/var/lib/ /var/lib/
USER 65532:65532
WORKDIR /var/lib/ofe
ENV OFE_DATA_DIR=/var/lib/ofe
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/ofe"]
CMD ["--help"]

FROM scratch AS runtime-prebuilt
COPY target/image/rootfs/ /
COPY --chown=65532:65532 target/image/rootfs/var/lib/ /var/lib/
USER 65532:65532
WORKDIR /var/lib/ofe
ENV OFE_DATA_DIR=/var/lib/ofe
EXPOSE 8080 9464
ENTRYPOINT ["/usr/local/bin/ofe"]
CMD ["--help"]
