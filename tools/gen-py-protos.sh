#!/bin/sh
# Generates the Python modules (protoc --python_out) of the Envoy API that the
# test control plane (tools/xds_server.py) needs, into $1 (default build/py).
#
# The .proto files come from the npm package that tools/gen-protos.sh unpacks
# (and patches) into build/gen/.src: run `make build/gen/files.txt` first.
# The roots are the discovery services, every xDS resource type and the
# extension types found inside resources, plus every root of
# proto/envoy-protos.txt so that anything Legate can decode the server can
# encode. google/protobuf/*.proto come with python3-protobuf and are not
# generated. Nothing here is committed; build/py/.stamp marks a complete run.
set -eu
out=${1:-build/py}
top=$(cd "$(dirname "$0")/.." && pwd)
d="$top/build/gen/.src/package/deps"
if [ ! -d "$d/envoy-api" ]; then
    echo "gen-py-protos: $d not found; run 'make build/gen/files.txt' first" >&2
    exit 1
fi
inc="-I$d/envoy-api -I$d/xds -I$d/protoc-gen-validate -I$d/googleapis -I/usr/include"
roots="
envoy/service/discovery/v3/ads.proto
envoy/service/discovery/v3/discovery.proto
envoy/service/listener/v3/lds.proto
envoy/service/route/v3/rds.proto
envoy/service/route/v3/srds.proto
envoy/service/cluster/v3/cds.proto
envoy/service/endpoint/v3/eds.proto
envoy/service/secret/v3/sds.proto
envoy/service/runtime/v3/rtds.proto
envoy/service/extension/v3/config_discovery.proto
envoy/config/listener/v3/listener.proto
envoy/config/route/v3/route.proto
envoy/config/route/v3/scoped_route.proto
envoy/config/cluster/v3/cluster.proto
envoy/config/endpoint/v3/endpoint.proto
envoy/config/core/v3/extension.proto
envoy/extensions/transport_sockets/tls/v3/secret.proto
envoy/extensions/transport_sockets/tls/v3/tls.proto
envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto
envoy/extensions/filters/http/router/v3/router.proto
envoy/extensions/upstreams/http/v3/http_protocol_options.proto
$(grep -v '^#' "$top/proto/envoy-protos.txt" | grep .)"
mkdir -p "$out"
rm -f "$out/.stamp"
tmp="$out/.all.pb"
# shellcheck disable=SC2086
protoc $inc --include_imports --descriptor_set_out="$tmp" $roots
files=$(protoc -I/usr/include --decode=google.protobuf.FileDescriptorSet google/protobuf/descriptor.proto <"$tmp" |
        sed -n 's/^  name: "\(.*\)"$/\1/p' | grep -v '^google/protobuf/')
rm -f "$tmp"
# shellcheck disable=SC2086
protoc $inc --python_out="$out" $files
echo "$files" >"$out/files.txt"
touch "$out/.stamp"
