"""The test and demo xDS control plane: see server.py (XdsServer) and resources.py.

Not named `xds`: the generated protos own that top-level package (xds.annotations...).
"""
from .resources import (CLUSTER, ENDPOINT, EXTENSION_CONFIG, KINDS, LISTENER, ROUTE, RUNTIME,  # noqa: F401
                        SCOPED_ROUTE, SECRET, load_protos, to_any, to_message)
from .server import XdsServer  # noqa: F401
