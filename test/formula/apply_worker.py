"""
Applies the formula (``state.apply hcloud_lb``) once per pillar override in
one Salt process, as ``salt-call --local state.apply hcloud_lb pillar=...``
would, and says for each what the run returned and whether anything on the
host changed meanwhile.

    python apply_worker.py MINION_CONFIG < cases.json > results.json

Each case is a pillar override (merged over the node's pillar, as Salt
merges ``pillar=``); each result is {"states": {id: {"result", "comment",
"changes"}}, "changed": [what differs on the host]}. "The host" is every
file under the formula's paths, the addresses in this network namespace and
the daemons' PIDs. One process applies a hundred pillars in the time a
hundred salt-calls would start.
"""

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import salt.client
import salt.config

WATCHED = [
    "/etc/keepalived",
    "/etc/haproxy",
    "/etc/hcloud_lb",
    # Not the hook's cache and run dirs: the running load balancer's re-assert
    # loop writes its salt-call cache and lock there every few seconds.
    "/etc/network/interfaces.d",
    "/etc/sysctl.d",
]
PIDFILES = ["/run/haproxy.pid", "/run/keepalived.pid"]


def host():
    """What a refused pillar must leave as it is."""
    files = {}
    for top in WATCHED:
        root = Path(top)
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if path.is_file() and path.name != "failover.lock":
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True)
    pids = {name: Path(name).read_text().strip() for name in PIDFILES if Path(name).exists()}
    return {"files": files, "addresses": addresses.stdout, "pids": pids}


def differences(before, after):
    found = [f"{k}: {v}" for k, v in after["pids"].items() if before["pids"].get(k) != v]
    if before["addresses"] != after["addresses"]:
        found.append("addresses changed")
    for path in sorted(set(before["files"]) | set(after["files"])):
        if before["files"].get(path) != after["files"].get(path):
            found.append(path)
    return found


def settled(quiet=3.0, timeout=90.0):
    """
    The host once the load balancer's own start has finished: keepalived
    MASTER, its hook run (addresses added, the hook's first salt-call
    compiling its module), nothing changing for ``quiet`` seconds. Without
    this the first cases would see the start's changes as theirs.
    """
    deadline = time.monotonic() + timeout
    state = Path("/run/hcloud_lb/state")
    while not (state.exists() and state.read_text().strip() == "MASTER"):
        if time.monotonic() > deadline:
            sys.exit("keepalived did not become MASTER")
        time.sleep(0.2)
    last, since = host(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            sys.exit(f"the host kept changing: {differences(last, host())}")
        time.sleep(0.5)
        now = host()
        if differences(last, now):
            last, since = now, time.monotonic()
    return last


def main(config):
    caller = salt.client.Caller(mopts=salt.config.minion_config(config))
    results = []
    settled()
    for override in json.load(sys.stdin):
        before = host()
        ret = caller.sminion.functions["state.apply"]("hcloud_lb", pillar=override)
        after = host()
        if isinstance(ret, dict):
            states = {
                s.get("__id__", key): {k: s.get(k) for k in ("result", "comment", "changes")}
                for key, s in ret.items()
            }
        else:
            states = {"(no states)": {"result": False, "comment": str(ret), "changes": {}}}
        results.append({"states": states, "changed": differences(before, after)})
    json.dump(results, sys.stdout, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
