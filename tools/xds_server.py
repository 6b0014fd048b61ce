#!/usr/bin/python3
"""A small xDS v3 control plane: serves the resources of a YAML file or directory
over gRPC (ADS and the per-type services, SotW and delta) and pushes a new
version whenever a file changes.

    tools/xds_server.py [--host 127.0.0.1] [--port 18000 | --unix PATH] RESOURCES

RESOURCES is a file, or a directory of *.yaml/*.yml/*.json files, holding
mappings with any of the lists listeners, routes, scoped_routes, clusters,
endpoints, secrets, runtimes, extension_configs (resources in Envoy's YAML
form), and/or `resources` (a list of resources with "@type", as in Envoy's
file-based xDS). Every stream, ACK and NACK is logged on stdout. Ctrl-C stops.

The Envoy protos' Python modules are generated into build/py on first use
(tools/gen-py-protos.sh). Tests import tools/xds_control in process instead.
"""
import argparse
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from xds_control.server import XdsServer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("resources", help="resource file or directory (reloaded when it changes)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18000, help="TCP port (0: pick one and print it)")
    ap.add_argument("--unix", help="listen on this unix socket instead of TCP")
    ap.add_argument("--poll", type=float, default=0.2, help="seconds between checks for file changes")
    args = ap.parse_args()
    if not os.path.exists(args.resources):
        ap.error(f"{args.resources}: no such file or directory")

    def log(line):
        print(time.strftime("%H:%M:%S ") + line, flush=True)

    srv = XdsServer(port=args.port, host=args.host, unix_path=args.unix, path=args.resources,
                    poll_interval=args.poll, log=log)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    srv.start()
    while not done.wait(0.5):
        pass
    srv.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
