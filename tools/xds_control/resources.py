"""xDS resource types, the generated Envoy protos, and resources read from YAML.

The Python modules of the Envoy API are generated into build/py by
tools/gen-py-protos.sh (never committed). load_protos() generates them when
they are missing and imports every module so that google.protobuf.Any with
any Envoy @type resolves through the default descriptor pool.

Resources are written as Envoy writes them in YAML: proto3 JSON with `@type`
Anys. Two escapes exist for tests that must send what a converter would refuse:
an Any written as {"@type": URL, "@bytes": BASE64} gets exactly those bytes as
its value (garbage, or a type no descriptor knows), and an Any whose @type is
unknown to the pool gets that type_url with an empty value (an unknown filter).
"""
import base64
import glob
import hashlib
import importlib
import os
import subprocess
import sys

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PY_OUT = os.path.join(REPO, "build", "py")
GEN_SCRIPT = os.path.join(REPO, "tools", "gen-py-protos.sh")

PREFIX = "type.googleapis.com/"
LISTENER = PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = PREFIX + "envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE = PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
CLUSTER = PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
RUNTIME = PREFIX + "envoy.service.runtime.v3.Runtime"
EXTENSION_CONFIG = PREFIX + "envoy.config.core.v3.TypedExtensionConfig"
RESOURCE_WRAPPER = PREFIX + "envoy.service.discovery.v3.Resource"
_BYTES_VALUE = PREFIX + "google.protobuf.BytesValue"

# YAML key -> type URL, in the order a control plane pushes them (Envoy's
# xds_protocol "eventual consistency": CDS, then EDS, then LDS, then RDS).
KINDS = {
    "clusters": CLUSTER,
    "endpoints": ENDPOINT,
    "secrets": SECRET,
    "runtimes": RUNTIME,
    "extension_configs": EXTENSION_CONFIG,
    "listeners": LISTENER,
    "routes": ROUTE,
    "scoped_routes": SCOPED_ROUTE,
}
PUSH_ORDER = list(KINDS.values())
SHORT = {LISTENER: "lds", ROUTE: "rds", SCOPED_ROUTE: "srds", CLUSTER: "cds", ENDPOINT: "eds", SECRET: "sds",
         RUNTIME: "rtds", EXTENSION_CONFIG: "ecds"}

# Types whose empty subscription is a wildcard (xds_protocol "How the client
# specifies what resources to return"): Envoy subscribes to these without names.
WILDCARD_TYPES = {LISTENER, CLUSTER, SCOPED_ROUTE}

# gRPC service -> (type it serves or None for ADS, SotW method, delta method).
SERVICES = {
    "envoy.service.discovery.v3.AggregatedDiscoveryService":
        (None, "StreamAggregatedResources", "DeltaAggregatedResources"),
    "envoy.service.listener.v3.ListenerDiscoveryService": (LISTENER, "StreamListeners", "DeltaListeners"),
    "envoy.service.route.v3.RouteDiscoveryService": (ROUTE, "StreamRoutes", "DeltaRoutes"),
    "envoy.service.route.v3.ScopedRoutesDiscoveryService":
        (SCOPED_ROUTE, "StreamScopedRoutes", "DeltaScopedRoutes"),
    "envoy.service.cluster.v3.ClusterDiscoveryService": (CLUSTER, "StreamClusters", "DeltaClusters"),
    "envoy.service.endpoint.v3.EndpointDiscoveryService": (ENDPOINT, "StreamEndpoints", "DeltaEndpoints"),
    "envoy.service.secret.v3.SecretDiscoveryService": (SECRET, "StreamSecrets", "DeltaSecrets"),
    "envoy.service.runtime.v3.RuntimeDiscoveryService": (RUNTIME, "StreamRuntime", "DeltaRuntime"),
    "envoy.service.extension.v3.ExtensionConfigDiscoveryService":
        (EXTENSION_CONFIG, "StreamExtensionConfigs", "DeltaExtensionConfigs"),
}

_MARKER = b"\x00legate-xds-raw-any:"
_loaded = False


def generate_protos(force=False):
    """Runs tools/gen-py-protos.sh unless build/py is complete and newer than the script and
    than proto/envoy-protos.txt (whose roots it also generates)."""
    stamp = os.path.join(PY_OUT, ".stamp")
    inputs = (GEN_SCRIPT, os.path.join(REPO, "proto", "envoy-protos.txt"))
    if not force and os.path.exists(stamp) and all(os.path.getmtime(stamp) >= os.path.getmtime(p) for p in inputs):
        return
    if not os.path.isdir(os.path.join(REPO, "build", "gen", ".src", "package", "deps", "envoy-api")):
        subprocess.run(["make", "-C", REPO, "build/gen/files.txt"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["sh", GEN_SCRIPT, PY_OUT], check=True, cwd=REPO)


def load_protos():
    """Generates (when needed) and imports every generated module; idempotent."""
    global _loaded
    if _loaded:
        return
    generate_protos()
    if PY_OUT not in sys.path:
        sys.path.insert(0, PY_OUT)
    with open(os.path.join(PY_OUT, "files.txt")) as f:
        for line in f:
            line = line.strip()
            if line:
                importlib.import_module(line[:-len(".proto")].replace("/", ".") + "_pb2")
    _loaded = True


def pb():
    """The modules the server uses, after load_protos(): (discovery_pb2, any_pb2, json_format)."""
    load_protos()
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import any_pb2, json_format

    return discovery_pb2, any_pb2, json_format


def message_class(type_url):
    """The generated class for a type URL, or None when no descriptor knows it."""
    from google.protobuf import descriptor_pool, symbol_database

    load_protos()
    name = type_url.rsplit("/", 1)[-1]
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return None
    return symbol_database.Default().GetPrototype(desc)


def resource_name(msg):
    """The name xDS keys a resource by: cluster_name for ClusterLoadAssignment, else name."""
    if msg.DESCRIPTOR.full_name == "envoy.config.endpoint.v3.ClusterLoadAssignment":
        return msg.cluster_name
    return msg.name


def to_any(resource, type_url=None):
    """A resource (dict in Envoy's YAML form, message, or Any) -> packed google.protobuf.Any.

    A dict's type comes from type_url or its own "@type".
    """
    _, any_pb2, _ = pb()
    if isinstance(resource, any_pb2.Any):
        return resource
    if not isinstance(resource, dict):
        a = any_pb2.Any()
        a.Pack(resource)
        return a
    d = dict(resource)
    url = d.pop("@type", None) or type_url
    if url is None:
        raise ValueError(f"resource without a type: {resource!r}")
    if "@bytes" in d:
        return any_pb2.Any(type_url=url, value=base64.b64decode(d["@bytes"]))
    return any_pb2.Any(type_url=url, value=to_message(url, d).SerializeToString())


def to_message(type_url, d):
    """A dict in proto3 JSON (with @type Anys and the escapes above) -> message of type_url."""
    _, _, json_format = pb()
    cls = message_class(type_url)
    if cls is None:
        raise ValueError(f"no descriptor for {type_url}")
    raws = []
    msg = json_format.ParseDict(_replace_raw_anys(d, raws), cls())
    if raws:
        _restore_raw_anys(msg, raws)
    return msg


def _replace_raw_anys(obj, raws):
    """Copies obj with every Any the pool cannot build replaced by a marked BytesValue."""
    if isinstance(obj, list):
        return [_replace_raw_anys(v, raws) for v in obj]
    if not isinstance(obj, dict):
        return obj
    url = obj.get("@type")
    if isinstance(url, str) and ("@bytes" in obj or message_class(url) is None):
        raws.append((url, base64.b64decode(obj["@bytes"]) if "@bytes" in obj else b""))
        marker = _MARKER + str(len(raws) - 1).encode()
        return {"@type": _BYTES_VALUE, "value": base64.b64encode(marker).decode()}
    return {k: _replace_raw_anys(v, raws) for k, v in obj.items()}


def _restore_raw_anys(msg, raws):
    """Puts the raw Anys back in place of their markers; returns True when msg changed."""
    from google.protobuf import wrappers_pb2

    changed = False
    if msg.DESCRIPTOR.full_name == "google.protobuf.Any":
        if msg.type_url == _BYTES_VALUE:
            v = wrappers_pb2.BytesValue.FromString(msg.value).value
            if v.startswith(_MARKER):
                url, raw = raws[int(v[len(_MARKER):])]
                msg.type_url, msg.value = url, raw
                return True
            return False
        cls = message_class(msg.type_url)
        if cls is None:
            return False
        inner = cls.FromString(msg.value)
        if _restore_raw_anys(inner, raws):
            msg.value = inner.SerializeToString()
            return True
        return False
    for fd, val in msg.ListFields():
        if fd.type != fd.TYPE_MESSAGE:
            continue
        if fd.label != fd.LABEL_REPEATED:
            changed |= _restore_raw_anys(val, raws)
        elif fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            if vfd.type == vfd.TYPE_MESSAGE:
                for v in val.values():
                    changed |= _restore_raw_anys(v, raws)
        else:
            for v in val:
                changed |= _restore_raw_anys(v, raws)
    return changed


def any_name(a):
    """The resource name inside a packed Any (None when it cannot be decoded)."""
    cls = message_class(a.type_url)
    if cls is None:
        return None
    try:
        return resource_name(cls.FromString(a.value))
    except Exception:  # noqa: BLE001 - garbage bytes have no name
        return None


def content_version(a):
    """A per-resource version derived from the content: equal bytes, equal version."""
    return hashlib.sha256(a.type_url.encode() + b"\0" + a.value).hexdigest()[:16]


def parse_documents(docs):
    """YAML documents -> {type_url: [Any]}.

    Each document is a mapping with any of the KINDS keys (lists of resources
    of that type) and/or `resources` (a list of @type resources, the shape of
    Envoy's file-based xDS). Only types that appear are in the result.
    """
    out = {}
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise ValueError("an xDS resource file must hold a mapping")
        for key, value in doc.items():
            if key in KINDS:
                out.setdefault(KINDS[key], []).extend(to_any(r, KINDS[key]) for r in value or [])
            elif key == "resources":
                for r in value or []:
                    a = to_any(r)
                    out.setdefault(a.type_url, []).append(a)
            elif key != "version_info":
                raise ValueError(f"unknown key {key!r} in an xDS resource file (expected {', '.join(KINDS)})")
    return out


def resource_files(path):
    """The files a path names: itself, or a directory's *.yaml, *.yml and *.json, sorted."""
    if os.path.isdir(path):
        return sorted(f for ext in ("yaml", "yml", "json") for f in glob.glob(os.path.join(path, "*." + ext)))
    return [path]


def load_path(path):
    """Reads a resource file or directory -> {type_url: [Any]}."""
    docs = []
    for f in resource_files(path):
        with open(f) as fh:
            docs.extend(yaml.safe_load_all(fh))
    return parse_documents(docs)
