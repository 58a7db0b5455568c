"""
The option space the formula's users live in, and the daemons' own checkers.

``pillar(...)`` builds a whole pillar (as a user writes it, no lookup) for
one point of the space; ``Renderer`` renders many pillars for a node in one
Salt process inside a private network namespace that has the interfaces the
pillars name (keepalived -t refuses an interface the host lacks); ``check``
runs ``haproxy -c`` and ``keepalived -t`` on what it rendered.
"""

import contextlib
import json
import os
import subprocess
from pathlib import Path

import yaml

from helpers import REPO, SALT_CALL

WORKER = Path(__file__).with_name("render_worker.py")
PYTHON = REPO / ".venv" / "bin" / "python"
NODES = {"lb-a": "10.0.0.2", "lb-b": "10.0.0.3"}
INTERFACES = ("eth0", "ens10")
SCRIPTS = ("check_haproxy", "notify", "failover")


def pillar(*, profile, addresses, preemption, family, groups, weight):
    """
    One point of the space: ``addresses`` "floating", "alias" or "both";
    ``preemption`` "preempt", "nopreempt" or "preempt_delay"; ``family``
    "ipv4", "ipv6" or "both" (of the floating IPs and the backends: alias IPs
    are IPv4 only); ``groups`` how many; ``weight`` the check's weight.
    """
    vrrp = {
        "interface": "ens10",
        "virtual_router_id": 42,
        "password": "p4ss-w0r",
        "profile": profile,
        "preempt": preemption != "nopreempt",
        "check": {"weight": weight},
    }
    if preemption == "preempt_delay":
        vrrp["preempt_delay"] = 5
    settings = {
        "vrrp": vrrp,
        "nodes": {
            name: {"priority": 254 - 4 * index, "address": address}
            for index, (name, address) in enumerate(NODES.items())
        },
        "groups": {},
    }
    alias_ips = []
    for index in range(groups):
        v6 = family == "ipv6" or (family == "both" and index % 2)
        backend = f"2001:db8:b::{index + 1}" if v6 else f"10.0.2.{index + 1}"
        if addresses == "alias" or (addresses == "both" and index == groups - 1):
            address = f"10.0.1.{index + 1}"
            alias_ips.append(address)
            group = {"address": address}
        elif v6:
            group = {"floating_ip": f"lb-v6-{index}", "address": f"2001:db8:{index + 1}::1"}
        else:
            group = {"floating_ip": f"203.0.113.{index + 10}"}  # the address names it
        group["balancers"] = {
            "web": {
                "mode": "http",
                "algorithm": "roundrobin",
                "frontend_port": 80,
                "options": ["forwardfor"],
                "check_backends": index == 0,
                "backend_servers": {
                    "one": {"host": backend, "port": 8080, "options": "check inter 2s"},
                    "two": {"host": f"web{index}.example.internal", "port": 8080},
                },
            },
            "tls": {
                "mode": "tcp",
                "algorithm": "leastconn",
                "frontend_port": "443",
                "options": ["ssl-hello-chk"],
                "backend_servers": {"one": {"host": backend, "port": 8443, "options": "check"}},
            },
        }
        settings["groups"][f"g{index}"] = group
    if addresses == "both" and groups == 1:
        alias_ips.append("10.0.1.200")  # one group on a floating IP, an alias IP beside it
    if alias_ips:
        settings["alias_ips"] = {"lb-private": {"interface": "ens10", "ips": alias_ips}}
    return {"hcloud": {"token": "space-test-token"}, "hcloud_lb": settings}


class Renderer:
    """Renders pillars for a node with the formula, in one Salt process in a namespace."""

    def __init__(self, root):
        self.root = Path(root)
        self.netns = f"hlbs{os.getpid()}"
        # keepalived's script security: the scripts and every directory above
        # them root's and not writable by others, so not under /tmp.
        self.scripts = Path("/run") / self.netns / "scripts"
        self.worker = None

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.netns], check=True)
        self._ip("link", "add", INTERFACES[0], "type", "veth", "peer", INTERFACES[1])
        for device in ("lo", *INTERFACES):
            self._ip("link", "set", device, "up")
        self.scripts.mkdir(parents=True, mode=0o755)
        self.scripts.parent.chmod(0o755)
        for name in SCRIPTS:
            path = self.scripts / name
            path.write_text("#!/bin/sh\nexit 0\n")
            path.chmod(0o755)
        minion = {
            "id": "lb-a",
            "file_client": "local",
            "file_roots": {"base": [str(REPO)]},
            "pillar_roots": {"base": []},
            "module_dirs": [str(REPO)],
            "root_dir": str(self.root / "salt"),
            "disable_modules": ["systemd_service"],
            "log_level": "quiet",
        }
        (self.root / "minion").write_text(yaml.safe_dump(minion))
        return self

    def __exit__(self, *exc):
        if self.worker is not None:
            self.worker.stdin.close()
            self.worker.wait(30)
        subprocess.run(["ip", "netns", "del", self.netns], check=False)
        with contextlib.suppress(OSError):
            for name in SCRIPTS:
                (self.scripts / name).unlink()
            self.scripts.rmdir()
            self.scripts.parent.rmdir()

    def _ip(self, *argv):
        subprocess.run(["ip", "-n", self.netns, *argv], check=True)

    def lookup(self):
        """What a node's lookup would say, pointed at this machine's salt-call and our scripts."""
        return {"salt_call": str(SALT_CALL), "keepalived": {"scripts_dir": str(self.scripts)}}

    def render(self, cases):
        """[{"id": minion id, "pillar": pillar}] -> the worker's results, in order."""
        for case in cases:
            settings = case["pillar"].setdefault("hcloud_lb", {})
            if isinstance(settings, dict) and "lookup" not in settings:
                settings["lookup"] = self.lookup()
        if self.worker is None:
            argv = [str(PYTHON), str(WORKER), str(self.root / "minion")]
            self.worker = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, *argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=(self.root / "worker.log").open("w"),
                text=True,
            )
        self.worker.stdin.write(json.dumps(cases) + "\n")
        self.worker.stdin.flush()
        line = self.worker.stdout.readline()
        assert line, (self.root / "worker.log").read_text()[-3000:]
        return json.loads(line)

    def check(self, result, name):
        """haproxy -c and keepalived -t on one rendered result: {daemon: (ok, output)}."""
        verdicts = {}
        for daemon, argv in (
            ("haproxy", ["haproxy", "-c", "-q", "-f"]),
            ("keepalived", ["keepalived", "-t", "-f"]),
        ):
            path = self.root / f"{name}.{daemon}.cfg"
            path.write_text(result[daemon])
            path.chmod(0o600)
            proc = subprocess.run(
                ["ip", "netns", "exec", self.netns, *argv, str(path)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            verdicts[daemon] = (proc.returncode == 0, proc.stdout + proc.stderr)
        return verdicts
