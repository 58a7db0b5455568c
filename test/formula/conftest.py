"""
Fixtures for the formula tests: a masterless Salt config applying the formula
from this repository, and, for the applied tests, two network namespaces this
test creates (the node and its VRRP peer) so VRRP and haproxy's traffic stay
inside them, with python http.server backends in the node's namespace.
"""

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import REPO, SALT_CALL, wait_for

NODE_ID = "lb-master"
FORMULA_PATHS = [
    "/etc/keepalived/keepalived.conf",
    "/etc/keepalived/scripts",
    "/etc/hcloud_lb",
    "/var/cache/hcloud_lb",
    "/run/hcloud_lb",
    "/etc/network/interfaces.d/60-hcloud-lb-floating-ips.cfg",
]


class FormulaNode:
    """A masterless node: salt-call --local with file_roots = the repo and a pillar of our own."""

    def __init__(self, root, netns=None, grains=None):
        self.root = Path(root)
        self.netns = netns
        (self.root / "pillar").mkdir(parents=True, exist_ok=True)
        minion = {
            "id": NODE_ID,
            "file_client": "local",
            "file_roots": {"base": [str(REPO)]},
            "pillar_roots": {"base": [str(self.root / "pillar")]},
            "module_dirs": [str(REPO)],
            "root_dir": str(self.root / "salt"),
            # This VM has systemctl but no systemd as PID 1: Salt's systemd
            # module would claim "offline mode"; the sysvinit scripts do the work.
            "disable_modules": ["systemd_service"],
        }
        if grains:
            minion["grains"] = grains
        (self.root / "minion").write_text(yaml.safe_dump(minion))
        (self.root / "pillar" / "top.sls").write_text("base:\n  '*': [hcloud_lb]\n")

    def set_pillar(self, pillar):
        path = self.root / "pillar" / "hcloud_lb.sls"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(pillar, sort_keys=False))

    def salt_call(self, *args, timeout=300):
        argv = [str(SALT_CALL), "-c", str(self.root), "--local", "--out=json"]
        argv += ["--retcode-passthrough", *args]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        try:
            proc.data = yaml.safe_load(proc.stdout)["local"]
        except (yaml.YAMLError, TypeError, KeyError):
            proc.data = None
        return proc

    def apply(self, *sls, test=False):
        args = ["state.apply", ",".join(sls or ["hcloud_lb"])]
        if test:
            args.append("test=True")
        return self.salt_call(*args)


def states(ret):
    """The states of a state.apply return, keyed by state ID."""
    assert isinstance(ret.data, dict), ret.stdout + ret.stderr
    assert all("__id__" in s for s in ret.data.values()), ret.stdout + ret.stderr
    return {state["__id__"]: state for state in ret.data.values()}


def changed(ret):
    return {sid: s["changes"] for sid, s in states(ret).items() if s["changes"]}


def in_netns(netns, *argv, timeout=30, check=False):
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


def http_get(netns, url, timeout=5):
    """(status, body) of a GET from inside the namespace; (None, error) when it fails."""
    code = (
        "import sys, urllib.request\n"
        "try:\n"
        f"    r = urllib.request.urlopen({url!r}, timeout={timeout})\n"
        "    print(r.status); print(r.read().decode().strip())\n"
        "except Exception as exc:\n"
        "    print('None'); print(exc)\n"
    )
    out = in_netns(netns, "python3", "-c", code, timeout=timeout + 10).stdout.split("\n", 1)
    status = None if out[0] == "None" else int(out[0])
    return status, out[1].strip() if len(out) > 1 else ""


def pid_of(pidfile):
    with contextlib.suppress(OSError, ValueError):
        pid = int(Path(pidfile).read_text().split()[0])
        os.kill(pid, 0)
        return pid
    return None


def _processes_mentioning(*fragments):
    """Our own leftovers: pids whose command line names the formula's hook paths."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if any(fragment in cmdline for fragment in fragments):
                pids.append(int(entry.name))
    return pids


def agent_pids():
    """The failover agent's salt-call processes (keepalived's FIFO script runs one)."""
    return [pid for pid in _processes_mentioning("hcloud_ip.agent") if pid_of_salt_call(pid)]


def pid_of_salt_call(pid):
    with contextlib.suppress(OSError):
        return b"salt-call" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


@pytest.fixture(scope="module")
def netns():
    """Two namespaces: the node (ens10 for VRRP, eth0 public) and its peer."""
    node, peer = f"hlbt{os.getpid()}n", f"hlbt{os.getpid()}p"
    commands = [
        ["ip", "netns", "add", node],
        ["ip", "netns", "add", peer],
        ["ip", "-n", node, "link", "add", "ens10", "type", "veth", "peer", "ens10", "netns", peer],
        ["ip", "-n", node, "link", "add", "eth0", "type", "veth", "peer", "pub0", "netns", peer],
        ["ip", "-n", node, "addr", "add", "10.231.0.2/24", "dev", "ens10"],
        ["ip", "-n", peer, "addr", "add", "10.231.0.3/24", "dev", "ens10"],
    ]
    commands += [["ip", "-n", node, "link", "set", dev, "up"] for dev in ("lo", "ens10", "eth0")]
    commands += [["ip", "-n", peer, "link", "set", dev, "up"] for dev in ("lo", "ens10", "pub0")]
    try:
        for argv in commands:
            subprocess.run(argv, check=True, capture_output=True)
        yield node
    finally:
        for name in (node, peer):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture(scope="module")
def backends(netns, tmp_path_factory):
    """Two HTTP backends in the node's namespace, answering 'a' and 'b'."""
    procs = []
    try:
        for name, port in (("a", 18081), ("b", 18082)):
            root = tmp_path_factory.mktemp(f"backend-{name}")
            (root / "index.html").write_text(name)
            argv = ["python3", "-m", "http.server", "-b", "127.0.0.1", str(port), "-d", str(root)]
            procs.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", netns, *argv],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in (18081, 18082):
            assert wait_for(lambda p=port: http_get(netns, f"http://127.0.0.1:{p}/")[0] == 200)
        yield {"a": 18081, "b": 18082}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def lab_pillar(cloud, **overrides):
    """The applied tests' pillar: one group on 10.231.1.10, VRRP to the peer namespace."""
    pillar = {
        "hcloud": {
            "token": cloud.token,
            "api_endpoint": cloud.api_url,
            "metadata_endpoint": cloud.metadata_url,
            "server": NODE_ID,
        },
        "hcloud_lb": {
            "lookup": {
                "salt_call": str(SALT_CALL),
                # This VM has no insserv (Salt's sysvinit enable): leave boot links alone.
                "haproxy": {"enable": False},
                "keepalived": {"enable": False},
            },
            "max_connections": 2000,  # this VM's hard file limit is 20000
            "public_interface": "eth0",
            "vrrp": {"interface": "ens10", "virtual_router_id": 51, "password": "s3cret-x"},
            "nodes": {
                "lb-master": {"priority": 200, "address": "10.231.0.2"},
                "lb-backup": {"priority": 100, "address": "10.231.0.3"},
            },
            "groups": {
                "web": {
                    "floating_ip": "lb-web",
                    "address": "10.231.1.10",
                    "balancers": {
                        "http": {
                            "mode": "http",
                            "algorithm": "roundrobin",
                            "frontend_port": 8080,
                            "options": ["forwardfor"],
                            "backend_servers": {
                                "a": {"host": "127.0.0.1", "port": 18081, "options": "check"},
                                "b": {"host": "127.0.0.1", "port": 18082, "options": "check"},
                            },
                        },
                        "raw": {
                            "mode": "tcp",
                            "algorithm": "leastconn",
                            "frontend_port": 8081,
                            "backend_servers": {
                                "a": {"host": "127.0.0.1", "port": 18081, "options": "check"},
                            },
                        },
                    },
                }
            },
            "alias_ips": {"lb-private": {"interface": "ens10", "ips": ["10.231.0.100"]}},
            "haproxy": {"prometheus": {"enabled": True}},
            "hook": {"deadline": 5, "reassert_interval": 2},
        },
    }
    for key, value in overrides.items():
        pillar["hcloud_lb"][key] = value
    return pillar


def lab_project(cloud):
    """
    The lab pillar's project in the emulator, as after a failover to lb-backup:
    lb-web and the alias 10.231.0.100 on lb-backup. Returns (master, backup, lb-web).
    """
    master = cloud.create_server(NODE_ID)
    backup = cloud.create_server("lb-backup")
    fip = cloud.create_floating_ip("lb-web", server_id=backup["id"])
    network = cloud.create_network("lb-private", ip_range="10.231.0.0/16", subnet="10.231.0.0/24")
    cloud.attach_server(master["id"], network["id"], ip="10.231.0.2")
    cloud.attach_server(backup["id"], network["id"], ip="10.231.0.3", alias_ips=["10.231.0.100"])
    return master, backup, fip


def _daemons_running():
    return [
        name
        for name, pidfile in (
            ("haproxy", "/run/haproxy.pid"),
            ("keepalived", "/run/keepalived.pid"),
        )
        if pid_of(pidfile)
    ]


def _teardown(node, netns, saved_haproxy_cfg):
    node.apply(
        "hcloud_lb.keepalived.clean",
        "hcloud_lb.haproxy.clean",
        "hcloud_lb.hook.clean",
        "hcloud_lb.floating_ips.clean",
    )
    # Whatever the clean states left (a failed test may have broken them).
    for script in ("/etc/init.d/keepalived", "/etc/init.d/haproxy"):
        in_netns(netns, script, "stop")
    for pidfile in ("/run/keepalived.pid", "/run/haproxy.pid"):
        pid = pid_of(pidfile)
        if pid:
            os.kill(pid, signal.SIGTERM)
    for pid in _processes_mentioning("/etc/keepalived/scripts/", "/etc/hcloud_lb/salt"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for path in FORMULA_PATHS:
        subprocess.run(["rm", "-rf", path], check=False)
    Path("/etc/haproxy/haproxy.cfg").write_bytes(saved_haproxy_cfg)


class _CleanBy:
    """What _teardown needs of a node: ``apply(*sls)``, here by any way of running Salt."""

    def __init__(self, apply):
        self.apply = apply


@contextlib.contextmanager
def formula_on_this_host(netns, clean):
    """
    Around a deployment of the formula on this host, its services in ``netns``,
    by any of the three ways: skips when haproxy or keepalived already run here;
    afterwards, also on failure, ``clean(*sls)`` applies the formula's clean
    states (by the way that deployed it), whatever they left is stopped and
    removed, and /etc/haproxy/haproxy.cfg is as it was.
    """
    if _daemons_running():
        pytest.skip(f"{_daemons_running()} already running on this machine")
    saved = Path("/etc/haproxy/haproxy.cfg").read_bytes()
    created_dirs = [d for d in ("/etc/network", "/etc/hcloud_lb") if not Path(d).exists()]
    try:
        yield
    finally:
        _teardown(_CleanBy(clean), netns, saved)
        for path in created_dirs:
            subprocess.run(["rm", "-rf", path], check=False)


@pytest.fixture(scope="module")
def deployed(netns, backends, fakecloud_process, tmp_path_factory):
    """The formula applied for real inside the node namespace; undone afterwards."""
    if _daemons_running():
        pytest.skip(f"{_daemons_running()} already running on this machine")
    cloud = fakecloud_process.cloud
    node = FormulaNode(tmp_path_factory.mktemp("formula"), netns=netns)
    node.set_pillar(lab_pillar(cloud))
    with formula_on_this_host(netns, node.apply):
        node.first_apply = node.apply()
        yield node
