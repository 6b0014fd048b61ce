# Legate container image, built like Envoy's: a build stage with the whole
# toolchain, and a slim Debian bookworm runtime with only the shared libraries
# legate links against.
#
#   docker build -t legate .
#   docker run --rm -p 10000:10000 -p 9901:9901 -v $PWD/envoy.yaml:/etc/legate/envoy.yaml legate
#
# Arguments after the image name replace the default `-c /etc/legate/envoy.yaml`,
# as with Envoy's image.

FROM debian:bookworm AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Only the sources: a host build/ directory never enters the image.
COPY Makefile .clang-format ./
COPY include include
COPY src src
COPY proto proto
COPY tools tools
COPY test test
RUN make deps && make -j2 all

FROM debian:bookworm-slim
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      libh2o-evloop0.13 libnghttp2-14 libprotobuf-c1 libgrpc29 libssl3 libc-ares2 libyaml-0-2 libre2-9 \
      ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/legate /usr/local/bin/legate
# The demo bootstrap, listening on all interfaces inside the container; mount
# your own bootstrap over /etc/legate/envoy.yaml.
COPY tools/demo/envoy-demo.yaml /etc/legate/envoy.yaml
RUN sed -i 's/address: 127.0.0.1, port_value: 10000/address: 0.0.0.0, port_value: 10000/; s/address: 127.0.0.1, port_value: 9901/address: 0.0.0.0, port_value: 9901/' /etc/legate/envoy.yaml
EXPOSE 10000 9901
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/legate"]
CMD ["-c", "/etc/legate/envoy.yaml"]
