"""Runtime disk layers (layered_runtime.layers[].disk_layer) reloaded on a
symbolic link swap, as Envoy's runtime docs describe the deployment:

    ln -s /srv/runtime/v2 new && mv -Tf new current

Envoy watches symlink_root for the move and reads every disk layer again;
editing a file in place below the link is not a reload. Checked through
GET /runtime, the runtime.* stats and a runtime_fraction route whose
runtime_key comes from the disk layer.
"""
import os

from lib import config as cfg
from lib.rawhttp import RawHTTP
from lib.wait import wait_for

KEY = "routing.to_b"


def write_tree(root, version, values):
    """root/<version>/envoy/<key as path> = value."""
    for key, value in values.items():
        path = os.path.join(root, version, "envoy", *key.split("."))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"# comment lines are ignored\n{value}\n")


def swap(root, version):
    """Point root/current at root/<version> with an atomic rename of a new link."""
    tmp = os.path.join(root, "new")
    os.symlink(os.path.join(root, version), tmp)
    os.replace(tmp, os.path.join(root, "current"))


def disk_value(lg, key):
    entry = lg.admin.get("/runtime").json()["entries"].get(key)
    return None if entry is None else entry["layer_values"][0]


def fetch_body(lg):
    with RawHTTP("127.0.0.1", lg.listener_port()) as c:
        c.request("GET", "/", host="example.com")
        return c.read_response().text


def start(legate, ports, root):
    to_b = {"match": {"prefix": "/", "runtime_fraction": {
        "default_value": {"numerator": 0, "denominator": "HUNDRED"}, "runtime_key": KEY}},
        "direct_response": {"status": 200, "body": {"inline_string": "b"}}}
    to_a = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "a"}}}
    boot = cfg.bootstrap(ports(), listeners=[cfg.http_listener("l", ports(), cfg.route_config(
        [cfg.vhost("v", [to_b, to_a])]))])
    boot["layered_runtime"] = {"layers": [
        {"name": "disk", "disk_layer": {"symlink_root": os.path.join(root, "current"), "subdirectory": "envoy"}},
        {"name": "admin", "admin_layer": {}},
    ]}
    return legate(boot)


def test_symlink_swap_reloads_disk_layer(legate, ports, tmp_path):
    root = str(tmp_path / "runtime")
    write_tree(root, "v1", {KEY: "0", "other.flag": "v1-value"})
    write_tree(root, "v2", {KEY: "100", "added.key": "new"})
    swap(root, "v1")
    lg = start(legate, ports, root)
    assert disk_value(lg, "other.flag") == "v1-value"
    assert fetch_body(lg) == "a"
    loads = lg.admin.stat("runtime.load_success")

    swap(root, "v2")
    wait_for(lambda: disk_value(lg, "added.key") == "new", timeout=10, what="the v2 tree after the swap")
    assert disk_value(lg, "other.flag") is None  # keys of the old tree are gone
    assert disk_value(lg, KEY) == "100"
    assert lg.admin.stat("runtime.load_success") > loads
    assert lg.admin.stat("runtime.num_keys") == 2
    wait_for(lambda: fetch_body(lg) == "b", timeout=10, what="routing from the swapped runtime value")

    # an admin override still wins over the disk layer, and survives the next swap
    assert lg.admin.post("/runtime_modify?" + KEY + "=0").status == 200
    wait_for(lambda: fetch_body(lg) == "a", timeout=10, what="the admin override")
    swap(root, "v1")
    wait_for(lambda: disk_value(lg, "other.flag") == "v1-value", timeout=10, what="the v1 tree again")
    assert fetch_body(lg) == "a"


def test_edit_in_place_is_not_a_reload(legate, ports, tmp_path):
    """Only the swap reloads (Envoy watches the link for a move). The edit is seen at the next swap."""
    root = str(tmp_path / "runtime")
    write_tree(root, "v1", {"k": "1"})
    swap(root, "v1")
    lg = start(legate, ports, root)
    write_tree(root, "v1", {"k": "2", "marker": "x"})
    write_tree(root, "v2", {"k": "3"})
    # a swap of another key's tree proves the poller ran after the edit
    swap(root, "v2")
    wait_for(lambda: disk_value(lg, "k") == "3", timeout=10, what="the v2 tree")
    assert disk_value(lg, "marker") is None
    swap(root, "v1")
    wait_for(lambda: disk_value(lg, "k") == "2", timeout=10, what="the edited v1 tree at the next swap")
    assert disk_value(lg, "marker") == "x"


def test_missing_root_then_created(legate, ports, tmp_path):
    """A symlink_root that does not exist yet is an empty layer; creating it is a swap."""
    root = str(tmp_path / "runtime")
    write_tree(root, "v1", {"k": "1"})
    lg = start(legate, ports, root)
    assert disk_value(lg, "k") is None
    assert lg.admin.stat("runtime.override_dir_not_exists") >= 1
    swap(root, "v1")
    wait_for(lambda: disk_value(lg, "k") == "1", timeout=10, what="the tree once the link exists")
    assert lg.admin.stat("runtime.override_dir_exists") >= 1
