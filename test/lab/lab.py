"""
The failover lab: two load balancer nodes, the cloud, a client and backends,
each a host of its own on this machine, and the formula applied to the nodes
by a salt-master in the lab (or masterless), from a whole pillar.

Hosts (network namespaces named ``<name>-<host>``):

    client  eth0 10.240.1.100, 2001:db8:1::100 ┐       ┌── be1 10.241.0.21 (HTTP :8080, lines :8081)
            ens10 10.241.0.30 ─────────────────┤cloud: ├── be2 10.241.0.22
    lb1 eth0 10.240.1.17 ──────────────────────┤router,├── lb1 ens10 10.241.0.11
    lb2 eth0 10.240.1.18 ──────────────────────┤API,   └── lb2 ens10 10.241.0.12
                                               │metadata, salt-master
                public 10.240.1.0/24                      private network 10.241.0.0/16

Like Hetzner, every link is a point-to-point /32 to the cloud (IPv6: the
cloud is fe80::1 on each link), which routes: each floating IP (IPv4 from
10.240.100.0/24, IPv6 /64s from 2001:db8:100::/48) goes to the server the
emulator says holds it, and each alias IP to its holder's private address,
changed by the emulator's --on-change hook the moment an assignment
completes. Nothing is routed out of the lab: the namespaces have no link to
this machine's network.

The pillar is a whole one, as a user writes it (``{"hcloud_lb": {...}}``,
``default_pillar()`` unless given), or a user's pillar tree
(``pillar_files``: ``top.sls`` and SLS files, which Salt's pillar compiler
merges: the lab's view is what it gives lb1, and lb2 must get the same). The
emulated project is built from it: every floating IP a group names (by
name, ID or address, with the address the group binds), the private network
(the one ``alias_ips`` names, by name or ID, else ``lab-private``) and the
servers lb1 and lb2. The pillar root holds the user's pillar as given (one
``hcloud_lb.sls``, or the user's files); the lab adds only what is its own
(``pillar()``), from an external pillar merged over it
(``lab-pillar.yaml``): the ``hcloud:`` token and endpoints (always its own),
and, where the pillar leaves them out, ``lookup:salt_call``, the lookup's
``enable: false`` for haproxy and keepalived, and a VRRP password (unless
``vrrp:authentication`` is false). The nodes and their addresses are the
lab's (``NODES`` in the private network, ``PUBLIC_NODES`` on eth0): a
pillar names them under ``nodes:`` as a user names theirs. Everything the
lab observes (holders, traffic, answers) follows the pillar's groups and
addresses.

The backends serve what the pillar's balancers send them (``services()``):
every port a backend server at a backend's address names, with a PROXY
header where its options say ``send-proxy``/``send-proxy-v2``, and TLS where
the balancer passes TLS through (``tcp`` on port 443, or ``option
ssl-hello-chk``); a backend server on the loopback address (a web server on
the load balancer itself) is served on each node. The client speaks HTTPS
to a TLS balancer, verifying the backends' certificate (the lab's own).

A lab is one load balancer pair. Others join its project as pair 1 (lb3,
lb4) and 2 (lb5, lb6): ``Lab(project=first, pair=N, masterless=True)`` has
its own nodes, servers and links into the first lab's cloud, and shares its
emulator, private network, backends and client. ``crowd`` fills the project
with other servers and floating IPs, as production projects hold. The lab
reads who holds what from the emulator's control API, not the API: watching
must not spend the rate limit the nodes share.

The load balancer nodes are hosts to the formula (nodeinit.py): their own
/etc, /var, /run, /tmp, /dev, PIDs and hostname, so Debian's haproxy and
keepalived run under their init scripts, with real VRRP between the nodes
over the private network. Everything the lab makes lives in ``workdir`` and
the namespaces; ``down()`` removes all of it, also after a failed ``up()``.
"""

import contextlib
import copy
import dataclasses
import ipaddress
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import yaml

from fakecloud.pytest_plugin import FakeCloud
from helpers import wait_for

LAB_DIR = Path(__file__).resolve().parent
TEST_DIR = LAB_DIR.parent
REPO = TEST_DIR.parent
VENV_BIN = REPO / ".venv" / "bin"
OPENAPI = REPO.parent / "shared" / "hcloud-openapi" / "hcloud.json"

GATEWAY = "10.240.1.1"
GATEWAY_IPV6 = "fe80::1"  # the cloud on every link, as Hetzner's IPv6 gateway
CLIENT_IP = "10.240.1.100"
CLIENT_IPV6 = "2001:db8:1::100"
SERVER_POOL = "10.240.1.16/28"
FLOATING_POOL = "10.240.100.0/24"
IPV6_POOL = "2001:db8:100::/48"  # /64s: IPv6 floating IPs (created first), then the servers'
PRIVATE_RANGE = "10.241.0.0/16"
PRIVATE_SUBNET = "10.241.0.0/24"
PRIVATE_GATEWAY = "10.241.0.1"
PRIVATE_NETWORK = "lab-private"  # the private network's name when alias_ips names none
METADATA_IP = "169.254.169.254"
API_PORT = 8080
# The load balancer nodes (minion ids and server names) and their private addresses.
NODES = {"lb1": "10.241.0.11", "lb2": "10.241.0.12"}
# The pairs one project holds: a lab is pair 0 (NODES) unless it joins
# another's project as pair 1 or 2 (``Lab(project=..., pair=...)``).
PAIRS = (
    NODES,
    {"lb3": "10.241.0.13", "lb4": "10.241.0.14"},
    {"lb5": "10.241.0.15", "lb6": "10.241.0.16"},
)
# Their public addresses (eth0): the emulator hands out its pool's lowest free
# address, and the lab creates lb1, then lb2, and the joining pairs after
# them in order (it checks that they got these).
PUBLIC_NODES = dict(
    zip(
        [role for pair in PAIRS for role in pair],
        map(str, ipaddress.ip_network(SERVER_POOL).hosts()),
        strict=False,
    )
)
BACKENDS = {"be1": "10.241.0.21", "be2": "10.241.0.22"}
# The client's leg in the private network, to reach internal load balancers (alias IPs).
CLIENT_PRIVATE_IP = "10.241.0.30"
HTTP_PORT, LINE_PORT = 8080, 8081
LOOPBACK = ("127.0.0.1",)  # a backend server there is on the load balancer itself
ACTION_DURATION = 0.5


# ---- pillars ---------------------------------------------------------------------------


def web_balancer(port=80):
    """A balancer in front of the backends' HTTP service: the client's requests go there."""
    servers = {
        role: {"host": address, "port": HTTP_PORT, "options": "check inter 1s"}
        for role, address in BACKENDS.items()
    }
    return {
        "mode": "http",
        "algorithm": "roundrobin",
        "frontend_port": port,
        "backend_servers": servers,
    }


def line_balancer(port=80):
    """A TCP balancer in front of the backends' line echo: the client's held connection."""
    servers = {
        role: {"host": address, "port": LINE_PORT, "options": "check inter 1s"}
        for role, address in BACKENDS.items()
    }
    return {
        "mode": "tcp",
        "algorithm": "leastconn",
        "frontend_port": port,
        "backend_servers": servers,
    }


def default_pillar(*, profile="default", floating_ips=2, pair=0):
    """
    The lab's usual pillar: groups ``http`` (floating IP lab-http, 10.240.100.1)
    and ``ws`` (lab-ws, .2, long-lived connections), then ``extra1``... for more
    floating IPs, the alias IP 10.241.0.100 in lab-private, VRRP over the
    private network, priorities 254 and 250 (high on both: a backup waits
    (256 - priority) / 256 of an advert interval before it takes over from a
    master that gave up).

    ``pair``: the same for another pair of the project (``PAIRS``), with its
    own names, addresses and VRRP router: pair 1 is ``lab1`` with floating
    IPs lab1-http (10.240.100.17), lab1-ws (.18)..., alias IP 10.241.0.101
    and virtual router 52, on lb3 and lb4.
    """
    names = ["http", "ws"] + [f"extra{n}" for n in range(1, 15)]
    prefix = f"lab{pair}" if pair else "lab"
    addresses = list(ipaddress.ip_network(FLOATING_POOL).hosts())[16 * pair :]
    groups = {}
    for name, address in zip(names[:floating_ips], addresses, strict=False):
        groups[name] = {
            "floating_ip": f"{prefix}-{name}",
            "address": str(address),
            "balancers": {"lines": line_balancer()} if name == "ws" else {"web": web_balancer()},
        }
    (first, first_address), (second, second_address) = PAIRS[pair].items()
    alias_ip = str(ipaddress.ip_address("10.241.0.100") + pair)
    return {
        "hcloud_lb": {
            "name": prefix,
            "max_connections": 2000,
            "public_interface": "eth0",
            "vrrp": {"interface": "ens10", "virtual_router_id": 51 + pair, "profile": profile},
            "nodes": {
                first: {"priority": 254, "address": first_address},
                second: {"priority": 250, "address": second_address},
            },
            "groups": groups,
            "alias_ips": {PRIVATE_NETWORK: {"interface": "ens10", "ips": [alias_ip]}},
            "hook": {"deadline": 20, "reassert_interval": 5},
        }
    }


def run(argv, check=True, timeout=120, **kwargs):
    return subprocess.run(
        argv, check=check, capture_output=True, text=True, timeout=timeout, **kwargs
    )


class LabError(RuntimeError):
    """Something in the lab did not come up as it should; the message says what."""


class Host:
    """A network namespace of the lab; commands run in it with ``ip netns exec``."""

    def __init__(self, lab, role):
        self.lab, self.role, self.netns = lab, role, f"{lab.name}-{role}"

    def prefix(self):
        return ["ip", "netns", "exec", self.netns]

    def run(self, *argv, check=False, timeout=120, **kwargs):
        return run([*self.prefix(), *argv], check=check, timeout=timeout, **kwargs)

    def popen(self, *argv, log=None, **kwargs):
        handle = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            return subprocess.Popen(
                [*self.prefix(), *argv],
                stdout=handle,
                stderr=handle,
                stdin=subprocess.DEVNULL,
                **kwargs,
            )
        finally:
            if log:
                handle.close()


class Node(Host):
    """A load balancer node: its own host, entered with nsenter through its init."""

    def __init__(self, lab, role):
        super().__init__(lab, role)
        self.root = lab.workdir / role
        self.init_pid = None

    def prefix(self):
        return ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-p", "-n", "-i", "--wd=/"]

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "ready").unlink(missing_ok=True)
        argv = [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--mount",
            "--pid",
            "--uts",
            "--ipc",
            "--fork",
            "--propagation",
            "private",
            "/usr/bin/python3",
            str(LAB_DIR / "nodeinit.py"),
            str(self.root),
            self.role,
        ]
        with open(self.root / "init.log", "ab") as log:
            unshare = subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + 20
        while not (self.root / "ready").exists():
            if unshare.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{self.role} did not start: see {self.root / 'init.log'}")
            time.sleep(0.05)
        children = Path(f"/proc/{unshare.pid}/task/{unshare.pid}/children").read_text().split()
        self.init_pid = int(children[0])
        (self.root / "ready").write_text(f"1 {self.init_pid}")

    def pids(self):
        """This machine's PIDs of every process on the node (its PID namespace)."""
        own = os.readlink(f"/proc/{self.init_pid}/ns/pid")
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if os.readlink(entry / "ns/pid") == own:
                        found.append(int(entry.name))
        return found

    def signal_all(self, signum):
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def read(self, path):
        result = self.run("cat", path)
        return result.stdout if result.returncode == 0 else None

    def vrrp_state(self):
        return (self.read("/run/hcloud_lb/state") or "").strip() or None

    def syslog(self):
        return self.read("/var/log/syslog") or ""


@dataclasses.dataclass
class Group:
    """A group of the pillar as the client sees it."""

    name: str
    address: str | None  # where the client reaches it
    moves: str | None  # the address the API moves for it: its floating IP or alias IP
    urls: list  # HTTP balancers in front of the backends' web service
    holds: list  # "host:port" of TCP balancers in front of the line echo
    balancer_urls: dict = dataclasses.field(default_factory=dict)  # balancer name -> its URL


@dataclasses.dataclass(frozen=True)
class Service:
    """What a backend port speaks: ``http`` or ``lines``, after a PROXY header (v1, v2), TLS."""

    port: int
    kind: str
    proxy: str | None = None
    tls: bool = False

    def spec(self):
        """As backend.py takes it: ``PORT=KIND[+proxy-v2][+tls]``."""
        proxy = f"+proxy-{self.proxy}" if self.proxy else ""
        return f"{self.port}={self.kind}{proxy}{'+tls' if self.tls else ''}"


@dataclasses.dataclass
class WantedIp:
    """A floating IP a group names (by name, ID or address), with the address it binds."""

    group: str
    name: str | None = None
    id: int | None = None
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    @property
    def type(self):
        return "ipv6" if self.address is not None and self.address.version == 6 else "ipv4"

    @property
    def api_ip(self):
        """The floating IP's address as the API writes it (IPv6: its /64), if the pillar says."""
        if self.address is None:
            return None
        if self.address.version == 6:
            return str(ipaddress.ip_network(f"{self.address}/64", strict=False))
        return str(self.address)

    def matches(self, fip):
        if self.name is not None:
            return fip["name"] == self.name
        if self.id is not None:
            return fip["id"] == self.id
        return fip["ip"] == self.api_ip

    def describe(self):
        reference = self.name or self.id or self.address
        return f"groups:{self.group}:floating_ip ({reference})"


class Lab:
    def __init__(
        self,
        name="hlab",
        *,
        workdir=None,
        pillar=None,
        pillar_files=None,
        masterless=False,
        action_duration=ACTION_DURATION,
        project=None,
        pair=0,
        crowd=None,
        say=print,
    ):
        self.name = name
        self.workdir = Path(workdir or REPO / ".lab" / name)
        self.masterless = masterless
        self.action_duration = action_duration
        # Another pair in a lab already up: its cloud, project, client and
        # backends; masterless, as the lab's salt-master serves its own pair.
        self.project = project
        if project is not None and (not masterless or not pair):
            raise LabError("a pair that joins another lab's project is masterless, pair 1 or 2")
        self.node_addresses = PAIRS[pair]
        # {"servers": n, "floating_ips": m}: the project's other servers and floating IPs.
        self.crowd = crowd
        if pillar is not None and pillar_files is not None:
            raise LabError("the lab takes a whole pillar or pillar files, not both")
        # A pillar tree is compiled when the lab is brought up: its view until then is none.
        self.pillar_files = None if pillar_files is None else _pillar_files(pillar_files)
        self.user_pillar = None
        if self.pillar_files is None:
            self.user_pillar = _whole_pillar(default_pillar() if pillar is None else pillar)
        self.vrrp_password = secrets.token_hex(4)
        self.say = say
        owner = project or self
        self.cloud = owner.cloud if project else Host(self, "cloud")
        self.client = owner.client if project else Host(self, "client")
        self.backends = owner.backends if project else {r: Host(self, r) for r in BACKENDS}
        # Where the cloud keeps its files: the route log, the backends' certificate.
        self.cloud_dir = owner.workdir
        self.nodes = {role: Node(self, role) for role in self.node_addresses}
        self.token = None
        self.api = None
        self.servers = {}
        self.floating_ips = {}  # name -> address (as the API writes it) of the pillar's
        self.floating_ip_addresses = {}  # address (as the API writes it) -> ID
        self.alias_ips = []
        self.groups = {}
        self.processes = {}

    @property
    def settings(self):
        """The pillar's hcloud_lb part, as given."""
        return self.user_pillar["hcloud_lb"]

    # ---- the whole lab ---------------------------------------------------------------

    def hosts(self):
        return [self.cloud, self.client, *self.backends.values(), *self.nodes.values()]

    def own_hosts(self):
        """The hosts this lab made, and removes: a joining pair's are its nodes."""
        return list(self.nodes.values()) if self.project else self.hosts()

    def up(self):
        """Build everything and apply the formula; on any failure, tear down and raise."""
        self.down(quiet=True)
        try:
            # Root only: the lab's token, pillar, logs and the nodes' files live here.
            self.workdir.mkdir(parents=True, mode=0o700)
            if self.pillar_files is not None:
                self._write_pillar_files()
            if self.project:
                self._join_cloud()
            else:
                self._wire()
                self._start_cloud()
                self._populate()
            self._build_project()
            if not self.project:
                self._start_backends()
            for node in self.nodes.values():
                node.start()
            self._start_local_backends()
            self._start_salt()
            self.provision()
            self.wait_steady()
        except BaseException:
            if not os.environ.get("LAB_KEEP_ON_FAILURE"):
                self.down(quiet=True)
            raise
        return self

    def attach(self):
        """Take over a lab another process brought up (``lab up``), to look and act on it."""
        self.token = (self.workdir / "token").read_text()
        port = (self.workdir / "api_port").read_text()
        self.api = FakeCloud(f"http://127.0.0.1:{port}", self.token)
        for node in self.nodes.values():
            node.init_pid = int((node.root / "ready").read_text().split()[1])
        self.user_pillar = yaml.safe_load((self.workdir / "user-pillar.yaml").read_text())
        servers = self._list("servers")
        self.servers = {s["name"]: s for s in servers if s["name"] in self.nodes}
        self._resolve()
        return self

    def down(self, quiet=False):
        """Remove every process, namespace and file of the lab (by its name, also a crashed one)."""
        for node in self.nodes.values():
            self._kill_node(node)
        for host in self.own_hosts():
            self._kill_netns_processes(host.netns)
            run(["ip", "netns", "del", host.netns], check=False)
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError, OSError):
                process.kill()
                process.wait(5)
        self.processes = {}
        if self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)
        if not quiet:
            self.say(f"lab {self.name}: torn down")

    def _kill_node(self, node):
        """SIGKILL to the node's init ends its PID namespace: every process of the node."""
        self._kill_matching([str(LAB_DIR / "nodeinit.py"), str(node.root), node.role])

    @staticmethod
    def _kill_netns_processes(netns):
        if not Path(f"/run/netns/{netns}").exists():
            return
        for _ in range(50):
            pids = run(["ip", "netns", "pids", netns], check=False).stdout.split()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            time.sleep(0.1)

    # ---- network ---------------------------------------------------------------------

    def _wire(self):
        for host in self.own_hosts():
            run(["ip", "netns", "add", host.netns])
            run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
        cloud = self.cloud.netns
        self.cloud.run("sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
        self.cloud.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", check=True)
        for key in ("all", "default"):
            self.cloud.run("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0", check=True)
        for address in (GATEWAY, PRIVATE_GATEWAY, METADATA_IP):
            run(["ip", "-n", cloud, "addr", "add", f"{address}/32", "dev", "lo"])
        # Floating IPs nobody holds go nowhere, as on Hetzner.
        run(["ip", "-n", cloud, "route", "add", "unreachable", FLOATING_POOL])
        run(["ip", "-n", cloud, "-6", "route", "add", "unreachable", IPV6_POOL])
        self._link(
            self.client, "eth0", f"pub-{self.client.role}", CLIENT_IP, GATEWAY, ipv6=CLIENT_IPV6
        )
        # The client's leg in the private network: an internal load balancer's
        # address (an alias IP) is reachable only from there.
        self._link(
            self.client,
            "ens10",
            f"prv-{self.client.role}",
            CLIENT_PRIVATE_IP,
            PRIVATE_GATEWAY,
            routes=[PRIVATE_RANGE],
        )
        for role, address in BACKENDS.items():
            self._link(
                self.backends[role],
                "ens10",
                f"prv-{role}",
                address,
                PRIVATE_GATEWAY,
                routes=[PRIVATE_RANGE],
            )

    def _link(
        self, host, device, cloud_device, address, gateway, *, routes=("default",), ipv6=None
    ):
        """
        A point-to-point link host:device <-> cloud:cloud_device, host at address/32.

        ``ipv6``: the link carries IPv6 too, the cloud at fe80::1 and the host's
        default route through it (Hetzner's way); a string is the host's own
        IPv6 address (/128), routed to it by the cloud.
        """
        ns, cloud = host.netns, self.cloud.netns
        run(
            [
                "ip",
                "-n",
                ns,
                "link",
                "add",
                device,
                "type",
                "veth",
                "peer",
                cloud_device,
                "netns",
                cloud,
            ]
        )
        run(["ip", "-n", ns, "addr", "add", f"{address}/32", "dev", device])
        run(["ip", "-n", ns, "link", "set", device, "up"])
        run(["ip", "-n", cloud, "link", "set", cloud_device, "up"])
        run(["ip", "-n", ns, "route", "add", gateway, "dev", device])
        for route in routes:
            run(
                [
                    "ip",
                    "-n",
                    ns,
                    "route",
                    "add",
                    route,
                    "via",
                    gateway,
                    "dev",
                    device,
                    "src",
                    address,
                ]
            )
        # src: the cloud's ARP requests come from the gateway, which the host can answer.
        run(
            [
                "ip",
                "-n",
                cloud,
                "route",
                "add",
                f"{address}/32",
                "dev",
                cloud_device,
                "src",
                gateway,
            ]
        )
        if ipv6:
            default6 = ["default", "via", GATEWAY_IPV6, "dev", device]
            gateway6 = [f"{GATEWAY_IPV6}/64", "dev", cloud_device, "nodad"]
            run(["ip", "-n", cloud, "addr", "add", *gateway6])
            run(["ip", "-n", ns, "-6", "route", "add", *default6])
            if isinstance(ipv6, str):
                run(["ip", "-n", ns, "addr", "add", f"{ipv6}/128", "dev", device, "nodad"])
                run(["ip", "-n", cloud, "-6", "route", "add", f"{ipv6}/128", "dev", cloud_device])

    # ---- the cloud -------------------------------------------------------------------

    def _start_cloud(self):
        self.token = secrets.token_hex(32)
        token_file = self.workdir / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(self.token)
        # The emulator runs this in the cloud namespace each time an address
        # changes holder: the route follows the API state at once.
        hook = self.workdir / "route-hook"
        hook.write_text(ROUTE_HOOK.format(events=self.cloud_dir / "routes.log"))
        argv = [
            str(VENV_BIN / "python"),
            str(TEST_DIR / "fakecloud"),
            "--listen",
            f"0.0.0.0:{API_PORT}",
            "--token-file",
            str(token_file),
            "--metadata-listen",
            f"{METADATA_IP}:80",
            "--server-ipv4-pool",
            SERVER_POOL,
            "--floating-ipv4-pool",
            FLOATING_POOL,
            "--ipv6-pool",
            IPV6_POOL,
            "--action-duration",
            str(self.action_duration),
            "--on-change",
            f"/bin/sh {hook}",
        ]
        if OPENAPI.exists():
            argv += ["--openapi", str(OPENAPI)]
        self.processes["emulator"] = self.cloud.popen(*argv, log=self.workdir / "emulator.log")
        # The operator (this machine: tests, demo, benchmark) reaches the
        # emulator through a loopback bridge into the cloud namespace.
        port = _free_port()
        bridge = [
            str(VENV_BIN / "python"),
            str(TEST_DIR / "ways" / "nsbridge.py"),
            f"host:{port}>{self.cloud.netns}:{API_PORT}",
        ]
        self.processes["bridge"] = subprocess.Popen(
            bridge, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.processes["bridge"].stdout.readline()
        self.api = FakeCloud(f"http://127.0.0.1:{port}", self.token)
        _wait(lambda: _responds(self.api), 20, "the emulator did not answer")
        (self.workdir / "api_port").write_text(str(port))

    def _join_cloud(self):
        """The project's cloud, for a pair that joins it: its token, API and namespaces."""
        for node in self.nodes.values():
            run(["ip", "netns", "add", node.netns])
            run(["ip", "-n", node.netns, "link", "set", "lo", "up"])
        self.token, self.api = self.project.token, self.project.api
        token_file = self.workdir / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(self.token)
        (self.workdir / "api_port").write_text((self.project.workdir / "api_port").read_text())

    def _populate(self):
        """The crowd beside the load balancer, as a real project holds."""
        if self.crowd:
            self.api.populate(**self.crowd)

    def _call(self, method, path, body=None):
        """One API request; a LabError saying what the API answered unless it succeeded."""
        response = self.api.api(method, path, body)
        if not response.ok:
            raise LabError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else {}

    def _list(self, kind):
        """Every item of an API collection (all pages)."""
        items, page = [], 1
        while page:
            answer = self._call("GET", f"/{kind}?per_page=50&page={page}")
            items += answer[kind]
            page = answer["meta"]["pagination"]["next_page"]
        return items

    # ---- the project, from the pillar -------------------------------------------------

    def _build_project(self):
        """The project the pillar describes: its floating IPs, the private network, the nodes."""
        self._create_floating_ips()
        network = self._find_network() if self.project else self._create_network()
        for role, private in self.node_addresses.items():
            self.servers[role] = self.api.create_server(role)
            self.api.attach_server(self.servers[role]["id"], network["id"], ip=private)
            public = self.servers[role]["public_net"]["ipv4"]["ip"]
            if public != PUBLIC_NODES[role]:
                raise LabError(f"the emulator gave {role} {public}, not {PUBLIC_NODES[role]}")
            self._link(self.nodes[role], "eth0", f"pub-{role}", public, GATEWAY, ipv6=True)
            self._link(
                self.nodes[role],
                "ens10",
                f"prv-{role}",
                private,
                PRIVATE_GATEWAY,
                routes=[PRIVATE_RANGE],
            )
        self._resolve()

    def _create_floating_ips(self):
        """
        Every floating IP a group names that the project lacks, with the address
        the group binds (and the ID, when named by ID).

        The emulator hands out the lowest free address of its pool and the next
        ID, so the lab creates floating IPs until one is the wanted address
        (keeping those below it until the end) and ID (deleting those before it).
        """
        wanted = _wanted_floating_ips(self.settings)
        # IDs count up: the lowest first; then addresses, the lowest first.
        wanted.sort(key=lambda w: (w.id is None, w.id or 0, w.type, int(w.address or 0)))
        fillers = []
        try:
            for want in wanted:
                self._create_floating_ip(want, fillers)
        finally:
            for filler in fillers:
                self._call("DELETE", f"/floating_ips/{filler['id']}")

    def _create_floating_ip(self, want, fillers):
        ours = {filler["id"] for filler in fillers}
        fips = [fip for fip in self._list("floating_ips") if fip["id"] not in ours]
        found = next((fip for fip in fips if want.matches(fip)), None)
        if found:
            if want.api_ip and found["ip"] != want.api_ip:
                raise LabError(
                    f"{want.describe()}: the project's floating IP is {found['ip']}, "
                    f"the group binds {want.address}"
                )
            return found
        target = want.api_ip
        if target:
            self._check_floating_address(want, fips)
            holder = next((fip for fip in fillers if fip["ip"] == target), None)
            if holder and want.id in (None, holder["id"]):
                fillers.remove(holder)
                return self._name_floating_ip(holder, want)
        for _ in range(1000):
            fip = self.api.create_floating_ip(f"lab-new-{secrets.token_hex(4)}", type=want.type)
            if target and fip["ip"] != target:
                fillers.append(fip)  # the lowest free address, below the target
                continue
            if want.id is not None and fip["id"] != want.id:
                self._call("DELETE", f"/floating_ips/{fip['id']}")
                if fip["id"] > want.id:
                    raise LabError(
                        f"{want.describe()}: the lab cannot create floating IP {want.id}, its "
                        f"IDs are past it (they count up from 2, floating IPs first)"
                    )
                continue
            return self._name_floating_ip(fip, want)
        raise LabError(f"{want.describe()}: no floating IP {want.id or target} after 1000 tries")

    def _check_floating_address(self, want, fips):
        """The wanted address is in the lab's pool and nobody else's."""
        target = want.api_ip
        if want.type == "ipv4":
            pool = ipaddress.ip_network(FLOATING_POOL)
            usable = want.address in pool and want.address not in (
                pool.network_address,
                pool.broadcast_address,
            )
        else:
            pool = ipaddress.ip_network(IPV6_POOL)
            usable = want.address in pool and ipaddress.ip_network(target) != next(
                pool.subnets(new_prefix=64)
            )
        if not usable:
            raise LabError(
                f"{want.describe()}: {want.address} is not a floating IP the lab can create "
                f"(IPv4 from {FLOATING_POOL}, IPv6 from {IPV6_POOL} but its first /64)"
            )
        taken = [fip for fip in fips if fip["ip"] == target]
        servers = [s for s in self._list("servers") if s["public_net"]["ipv6"]["ip"] == target]
        if taken or servers:
            owner = taken[0]["name"] if taken else f"server {servers[0]['name']}"
            raise LabError(f"{want.describe()}: {target} is already {owner}'s")

    def _name_floating_ip(self, fip, want):
        name = want.name or f"floating-ip-{fip['id']}"
        return self._call("PUT", f"/floating_ips/{fip['id']}", {"name": name})["floating_ip"]

    def _create_network(self):
        """The private network: the one alias_ips names (by name or ID), else lab-private."""
        networks = list(self.settings.get("alias_ips") or {}) if self._alias_mapping() else []
        if len(networks) > 1:
            raise LabError(
                f"alias_ips names {len(networks)} networks; the lab has one private "
                f"network ({PRIVATE_RANGE} on ens10)"
            )
        name = str(networks[0]) if networks else PRIVATE_NETWORK
        if not name.isdigit():
            return self.api.create_network(name, ip_range=PRIVATE_RANGE, subnet=PRIVATE_SUBNET)
        wanted = int(name)
        with self._unmetered():
            self._spend_ids(until=wanted - 1)
            network = self.api.create_network(
                f"lab-new-{secrets.token_hex(4)}", ip_range=PRIVATE_RANGE, subnet=PRIVATE_SUBNET
            )
        if network["id"] != wanted:
            self._call("DELETE", f"/networks/{network['id']}")
            raise LabError(
                f"alias_ips:{name}: the lab cannot create a network with that ID (the "
                f"emulator's IDs count up from 2, one counter for everything; it gave "
                f"{network['id']})"
            )
        return self._call("PUT", f"/networks/{wanted}", {"name": PRIVATE_NETWORK})["network"]

    def _find_network(self):
        """The joined project's private network, which this pair's alias IPs are in."""
        names = list(self.settings.get("alias_ips") or {}) if self._alias_mapping() else []
        name = str(names[0]) if names else PRIVATE_NETWORK
        found = [n for n in self._list("networks") if name in (n["name"], str(n["id"]))]
        if not found:
            raise LabError(f"the project has no network {name} for this pair to join")
        return found[0]

    @contextlib.contextmanager
    def _unmetered(self):
        """
        Instant actions and no rate limit for the lab's own requests in the
        block; afterwards the project's rate limit is where it was, as if
        they had not been made.
        """
        response = self.api.api("GET", "/networks")
        remaining = int(response.headers["RateLimit-Remaining"])
        limit = self.api.configure()["rate_limit"]
        self.api.configure(action_duration=0, rate_limit=10**9, rate_remaining=10**9)
        try:
            yield
        finally:
            self.api.configure(
                action_duration=self.action_duration, rate_limit=limit, rate_remaining=remaining
            )

    def _spend_ids(self, until):
        """
        Use up the emulator's IDs (one counter for servers, networks, floating
        IPs and actions) until the last one handed out is ``until``: a server
        created and deleted spends several at once while far from it, a
        network created and deleted spends one. From the cloud host, beside
        the emulator: through the operator's bridge each request costs ~25 ms.
        """
        argv = ["/usr/bin/python3", "-c", SPEND_IDS, str(self.workdir / "token"), str(until)]
        result = self.cloud.run(*argv, timeout=600)
        if result.returncode != 0:
            raise LabError(
                f"the lab cannot spend the emulator's IDs up to {until}: {result.stderr}"
            )

    def _alias_mapping(self):
        return isinstance(self.settings.get("alias_ips"), dict)

    def _resolve(self):
        """What the lab observes, from the pillar and the project: addresses and groups."""
        settings = self.settings if isinstance(self.settings, dict) else {}
        fips = self._list("floating_ips")
        self.floating_ips, self.floating_ip_addresses = {}, {}
        for want in _wanted_floating_ips(settings):
            fip = next((f for f in fips if want.matches(f)), None)
            if fip:
                self.floating_ips[fip["name"]] = fip["ip"]
                self.floating_ip_addresses[fip["ip"]] = fip["id"]
        self.alias_ips = []
        for entry in (settings.get("alias_ips") or {}).values() if self._alias_mapping() else ():
            ips = entry.get("ips") if isinstance(entry, dict) else None
            self.alias_ips += [str(ip) for ip in ips if _ip(ip)] if isinstance(ips, list) else []
        self.groups = {}
        groups = settings.get("groups")
        for name, entry in groups.items() if isinstance(groups, dict) else ():
            if isinstance(entry, dict):
                self.groups[name] = self._group(name, entry, fips)

    def _group(self, name, entry, fips):
        reference = entry.get("floating_ip")
        address = _ip(entry.get("address")) or _ip(reference)
        moves = None
        if reference not in (None, "") and not isinstance(reference, bool):
            want = next((w for w in _wanted_floating_ips({"groups": {name: entry}})), None)
            fip = next((f for f in fips if want and want.matches(f)), None)
            if fip:
                moves = fip["ip"]
                if address is None:  # a name without the address: the formula says so
                    address = ipaddress.ip_network(fip["ip"]).network_address + (
                        1 if ":" in fip["ip"] else 0
                    )
        elif address is not None and str(address) in self.alias_ips:
            moves = str(address)
        urls, holds, balancer_urls = [], [], {}
        balancers = entry.get("balancers")
        for bname, balancer in balancers.items() if isinstance(balancers, dict) else ():
            served = _served(balancer)
            if not served or address is None:
                continue
            (_where, service, passes_tls), *_ = served
            host = f"[{address}]" if address.version == 6 else str(address)
            port = str(balancer.get("frontend_port"))
            if service.kind == "lines":
                holds.append(f"{host}:{port}")
                continue
            scheme, default_port = ("https", "443") if passes_tls else ("http", "80")
            url = f"{scheme}://{host}/" if port == default_port else f"{scheme}://{host}:{port}/"
            urls.append(url)
            balancer_urls[bname] = url
        return Group(name, str(address) if address else None, moves, urls, holds, balancer_urls)

    # ---- backends, client ---------------------------------------------------------

    def _start_backends(self):
        """be1 and be2: the lab's HTTP and line services, and what the pillar's balancers need."""
        served = services(self.settings)
        default = {HTTP_PORT: Service(HTTP_PORT, "http"), LINE_PORT: Service(LINE_PORT, "lines")}
        specs = [service.spec() for service in {**default, **served["backends"]}.values()]
        tls = self._certificate() if any(s.tls for v in served.values() for s in v.values()) else []
        for role, host in self.backends.items():
            log = self.workdir / f"{role}.log"
            self.processes[role] = host.popen(
                "/usr/bin/python3", str(LAB_DIR / "backend.py"), role, *tls, *specs, log=log
            )
        for role in self.backends:
            self._wait_backend(role, self.workdir / f"{role}.log")

    def _start_local_backends(self):
        """What the pillar's backend servers on the loopback address need, on each node."""
        served = services(self.settings)["local"]
        if not served:
            return
        tls = self._certificate() if any(s.tls for s in served.values()) else []
        specs = [service.spec() for service in served.values()]
        for role, node in self.nodes.items():
            log = self.workdir / f"{role}-local-backend.log"
            self.processes[f"{role}-local"] = node.popen(
                "/usr/bin/python3",
                str(LAB_DIR / "backend.py"),
                role,  # its answers name the node: the client sees which one served it
                "--address",
                "127.0.0.1",
                *tls,
                *specs,
                log=log,
            )
            self._wait_backend(f"{role}'s local backend", log)

    def _wait_backend(self, what, log):
        _wait(
            lambda: log.exists() and "backend: ready" in log.read_text(),
            20,
            lambda: f"{what} did not start: " + (log.read_text() if log.exists() else "no log"),
        )

    @property
    def certificate(self):
        """The backends' self-signed certificate, which the client trusts."""
        return self.cloud_dir / "backend-cert.pem"

    def _certificate(self):
        """backend.py's options for TLS, made once: the certificate and its key."""
        key = self.cloud_dir / "backend-key.pem"
        if not self.certificate.exists():
            run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=lab-backend",
                    "-keyout",
                    str(key),
                    "-out",
                    str(self.certificate),
                ]
            )
        return ["--cert", str(self.certificate), "--key", str(key)]

    def http(self, role, url, timeout=3):
        """(ok, answer) of one GET from a lab host."""
        host = self._host(role)
        # HTTPS: the backends' certificate is the lab's own, trusted as such
        # (the name is not checked: it is for no address in particular).
        context = "None"
        if url.startswith("https:"):
            context = f"ssl.create_default_context(cafile={str(self.certificate)!r})"
        code = (
            "import ssl, urllib.request\n"
            "try:\n"
            f"    context = {context}\n"
            "    if context:\n"
            "        context.check_hostname = False\n"
            f"    answer = urllib.request.urlopen({url!r}, timeout={timeout}, context=context)\n"
            "    print(answer.read().decode().strip())\n"
            "except Exception as exc:\n"
            "    print('ERROR', exc)\n"
        )
        out = host.run("/usr/bin/python3", "-c", code, timeout=timeout + 10).stdout.strip()
        return (not out.startswith("ERROR") and bool(out)), out

    def _host(self, role):
        return {h.role: h for h in self.hosts()}[role]

    # ---- Salt --------------------------------------------------------------------------

    def pillar(self):
        """
        The pillar the nodes get: the given one, and what is the lab's.

        Always the lab's: ``hcloud:token``, ``api_endpoint`` and
        ``metadata_endpoint`` (nothing leaves the lab). Where the pillar has
        none: ``lookup:salt_call`` (the venv's), ``lookup:{haproxy,keepalived}:
        enable: false`` (no boot links in the lab's Debian), ``vrrp:password``
        unless ``vrrp:authentication`` is false, and ``max_connections`` when
        this machine's file limit is below what haproxy needs for the
        formula's default (its processes cannot raise it: no CAP_SYS_RESOURCE).
        """
        pillar = copy.deepcopy(self.user_pillar)
        hcloud = pillar.get("hcloud") if isinstance(pillar.get("hcloud"), dict) else {}
        pillar["hcloud"] = {
            **hcloud,
            "token": self.token,
            "api_endpoint": f"http://{GATEWAY}:{API_PORT}/v1",
            "metadata_endpoint": f"http://{METADATA_IP}/hetzner/v1/metadata",
        }
        settings = pillar["hcloud_lb"]
        lookup = settings.setdefault("lookup", {})
        if isinstance(lookup, dict):
            lookup.setdefault("salt_call", str(VENV_BIN / "salt-call"))
            for service in ("haproxy", "keepalived"):
                entry = lookup.setdefault(service, {})
                if isinstance(entry, dict):
                    entry.setdefault("enable", False)
        vrrp = settings.setdefault("vrrp", {})
        if (
            isinstance(vrrp, dict)
            and "password" not in vrrp
            and vrrp.get("authentication") is not False
        ):
            vrrp["password"] = self.vrrp_password
        if "max_connections" not in settings and _fd_limit() < _haproxy_fds(
            _formula_default("max_connections")
        ):
            # haproxy raises its file limit to what maxconn needs; this
            # machine's processes may not raise theirs (no CAP_SYS_RESOURCE).
            settings["max_connections"] = max_connections_here(_formula_default("max_connections"))
        return pillar

    def write_pillar(self, pillar=None, *, files=None):
        """
        Give the nodes ``pillar`` (a whole one) or ``files`` (a pillar tree,
        ``{path: text}`` with a ``top.sls``; default: what the lab has); apply
        it with ``provision()``. The pillar root gets the user's pillar as
        given, the lab's own part (``pillar()`` less the user's) goes to the
        external pillar merged over it. The project gets the floating IPs the
        pillar names that it lacks, as a user creates them before naming them.
        """
        if pillar is not None and files is not None:
            raise LabError("the lab takes a whole pillar or pillar files, not both")
        if pillar is not None:
            self.pillar_files, self.user_pillar = None, _whole_pillar(pillar)
        if files is not None:
            self.pillar_files = _pillar_files(files)
        if self.pillar_files is not None:
            self._write_pillar_files()
        else:
            self._write_pillar_root({"top.sls": "base:\n  '*': [hcloud_lb]\n"})
            path = self.workdir / "pillar" / "hcloud_lb.sls"
            path.touch(mode=0o600)
            path.write_text(yaml.safe_dump(self.user_pillar, sort_keys=False))
        if self.api is not None:
            self._create_floating_ips()
            self._resolve()
        (self.workdir / "user-pillar.yaml").write_text(yaml.safe_dump(self.user_pillar))
        path = self.workdir / "lab-pillar.yaml"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(_additions(self.pillar(), self.user_pillar)))

    def _write_pillar_root(self, files):
        """The pillar root with nothing but ``files`` ({path: text}), each root-only."""
        root = self.workdir / "pillar"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(mode=0o700)
        for path, text in files.items():
            target = root / path
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            target.touch(mode=0o600)
            target.write_text(text)

    def _write_pillar_files(self):
        """The user's pillar tree in the pillar root, and the lab's view of it: Salt's pillar."""
        self._write_pillar_root(self.pillar_files)
        self.user_pillar = self._compile_pillar()

    def _compile_pillar(self):
        """
        What Salt's pillar compiler makes of the pillar root (the top file and
        its SLS, merged as a master merges them) for lb1 and for lb2, with
        each one's minion id (and no other grains): one pillar, the same for
        both (the lab observes one), without the lab's own part.
        """
        config = self.workdir / "pillar-compiler"
        config.mkdir(mode=0o700, exist_ok=True)
        minion = {
            "file_client": "local",
            "pillar_roots": {"base": [str(self.workdir / "pillar")]},
            "root_dir": str(config),
            "log_file": str(config / "log"),
        }
        (config / "minion").write_text(yaml.safe_dump(minion))
        argv = [str(VENV_BIN / "python"), "-c", COMPILE_PILLAR, str(config / "minion"), *self.nodes]
        compiled = json.loads(run(argv).stdout)
        for role, pillar in compiled.items():
            if pillar.get("_errors"):
                raise LabError(f"the pillar files do not compile for {role}: {pillar['_errors']}")
        first, *others = compiled.values()
        if any(other != first for other in others):
            raise LabError(f"the pillar files give the nodes different pillars: {compiled}")
        if not isinstance(first.get("hcloud_lb"), dict):
            raise LabError(
                f"the pillar files give {next(iter(self.nodes))} no hcloud_lb mapping: does "
                f"the top file target the lab's nodes ({', '.join(self.nodes)})? It got {first}"
            )
        return _whole_pillar(first)

    def _start_salt(self):
        self.write_pillar()
        states = self.workdir / "states"
        states.mkdir(exist_ok=True)
        (states / "top.sls").write_text("base:\n  '*': [hcloud_lb]\n")
        file_roots = {"base": [str(states), str(REPO)]}
        if not self.masterless:
            self._start_master(file_roots)
        for role, node in self.nodes.items():
            minion = {
                "id": role,
                "log_level_logfile": "info",
                "enable_fqdns_grains": False,
                # no systemd in the lab's hosts: Debian's init scripts do the work
                "disable_modules": ["systemd_service"],
            }
            if self.masterless:
                minion.update(
                    file_client="local",
                    file_roots=file_roots,
                    pillar_roots={"base": [str(self.workdir / "pillar")]},
                    ext_pillar=self._ext_pillar(),
                )
            else:
                minion.update(master=GATEWAY, acceptance_wait_time=1, random_reauth_delay=0)
            node.run("mkdir", "-p", "/etc/salt", check=True)
            node.run(
                "sh",
                "-c",
                "umask 077; cat > /etc/salt/minion",
                input=yaml.safe_dump(minion),
                check=True,
            )
            if not self.masterless:
                node.run(str(VENV_BIN / "salt-minion"), "-d", check=True)
        if not self.masterless:
            _wait(
                lambda: self.salt("*", "test.ping", timeout=10).get("ok"),
                120,
                "the minions did not answer the master",
            )

    def _ext_pillar(self):
        """The lab's own part of the pillar, merged over the user's (as a secret store's is)."""
        return [{"cmd_yaml": f"cat {self.workdir / 'lab-pillar.yaml'}"}]

    def _start_master(self, file_roots):
        config_dir = self.workdir / "master"
        config_dir.mkdir(exist_ok=True)
        master = {
            "root_dir": str(config_dir / "root"),
            "interface": "0.0.0.0",
            "auto_accept": True,  # a lab of throwaway keys; production accepts keys by hand
            "file_roots": file_roots,
            "pillar_roots": {"base": [str(self.workdir / "pillar")]},
            "ext_pillar": self._ext_pillar(),
            "log_file": "master.log",  # under root_dir
            "log_level_logfile": "info",
            "worker_threads": 2,
            "user": "root",
        }
        (config_dir / "master").write_text(yaml.safe_dump(master))
        self.processes["master"] = self.cloud.popen(
            str(VENV_BIN / "salt-master"), "-c", str(config_dir), log=config_dir / "stderr.log"
        )

    def salt(self, target, *args, timeout=300):
        """A command through the lab's salt-master: {"ok", "returns", "output"}."""
        argv = [
            str(VENV_BIN / "salt"),
            "-c",
            str(self.workdir / "master"),
            "--out=json",
            "--static",
            f"--timeout={timeout}",
            target,
            *args,
        ]
        # The salt CLI reaches the master's request port, so it runs beside it.
        result = self.cloud.run(*argv, timeout=timeout + 60)
        try:
            returns = json.loads(result.stdout) if result.stdout.strip() else {}
        except json.JSONDecodeError:
            returns = {}
        expected = set(self.nodes) if target == "*" else {target}
        ok = result.returncode == 0 and expected <= set(returns)
        return {"ok": ok, "returns": returns, "output": result.stdout + result.stderr}

    def salt_call(self, role, *args, timeout=300):
        """salt-call on a node (masterless: --local with the lab's file and pillar roots)."""
        argv = [str(VENV_BIN / "salt-call"), "--out=json", "--retcode-passthrough"]
        if self.masterless:
            argv.append("--local")
        result = self.nodes[role].run(*argv, *args, timeout=timeout)
        try:
            data = json.loads(result.stdout)["local"]
        except (json.JSONDecodeError, KeyError):
            data = None
        return {"ok": result.returncode == 0, "data": data, "output": result.stdout + result.stderr}

    def provision(self, sls=None):
        """Apply the formula to both nodes (highstate), by the master or masterless."""
        args = ["state.apply", *([sls] if sls else [])]
        if self.masterless:
            for role in self.nodes:
                result = self.salt_call(role, *args)
                if not result["ok"] or _failed_states(result["data"]):
                    raise LabError(f"applying the formula on {role} failed:\n{result['output']}")
            return
        result = self.salt("*", *args)
        failed = {role: _failed_states(result["returns"].get(role)) for role in self.nodes}
        if not result["ok"] or any(failed.values()):
            raise LabError(f"applying the formula failed: {failed}\n{result['output'][-4000:]}")

    # ---- observing --------------------------------------------------------------------

    def master_node(self):
        """The role of the node keepalived made MASTER, if exactly one is."""
        masters = [role for role, node in self.nodes.items() if node.vrrp_state() == "MASTER"]
        return masters[0] if len(masters) == 1 else None

    def addresses(self, alias=True):
        """Every address the pillar moves, as the API writes it: floating IPs, alias IPs."""
        return [*self.floating_ips.values(), *(self.alias_ips if alias else ())]

    def holders(self, alias=True):
        """
        Where the API says each address of the pillar is: {address: role or None}.

        Floating IPs as the API writes them (an IPv6 one as its /64); with
        ``alias``, the alias IPs too.
        """
        by_id = {server["id"]: role for role, server in self.servers.items()}
        # The emulator's own view: the lab watching must not spend the
        # project's rate limit, which the nodes' failovers share.
        holders = self.api.holders()
        found = {}
        for address, fip_id in self.floating_ip_addresses.items():
            found[address] = by_id.get(holders["floating_ips"].get(str(fip_id)))
        for ip in self.alias_ips if alias else ():
            found[ip] = by_id.get(holders["alias_ips"].get(ip))
        return found

    def all_on(self, role):
        """Every address of the pillar is on ``role`` (false for a pillar with none)."""
        return set(self.holders().values()) == {role}

    def urls(self, groups=None):
        """The client's URLs of the groups' web balancers (default: every group's)."""
        names = self.groups if groups is None else groups
        return [url for name in names for url in self.groups[name].urls]

    def answers(self, group=None):
        """(ok, answer) of one request from the client to a group's (default: the first) URL."""
        urls = self.urls(None if group is None else [group])
        if not urls:
            raise LabError(f"no web balancer in {group or 'any group'} to ask")
        return self.http("client", urls[0])

    def wait_steady(self, timeout=90):
        """One MASTER, every address on it, and every group's URL answered through it."""

        def steady():
            master = self.master_node()
            if not master or not self.all_on(master):
                return None
            for url in self.urls():
                ok, answer = self.http("client", url)
                if not ok or self.node_of(answer) != master:
                    return None
            return master

        return _wait(steady, timeout, lambda: "the lab did not settle: " + self.describe(logs=20))

    def describe(self, logs=0):
        """VRRP states and holders; with ``logs``, that many last syslog lines of each node."""
        states = {role: node.vrrp_state() for role, node in self.nodes.items()}
        text = f"VRRP states {states}, holders {self.holders()}"
        for role, node in self.nodes.items() if logs else ():
            tail = "\n  ".join(node.syslog().splitlines()[-logs:])
            text += f"\n{role} syslog:\n  {tail}"
        return text

    # ---- faults --------------------------------------------------------------------

    def kill_haproxy(self, role):
        """kill -9 every haproxy process of the node (its own PID namespace: only its own)."""
        self.nodes[role].run("pkill", "-KILL", "-x", "haproxy", check=True)

    def start_haproxy(self, role):
        self.nodes[role].run("/etc/init.d/haproxy", "start", check=True)

    def freeze(self, role):
        """Stop every process of the node, as a paused VM: keepalived sends nothing more."""
        self.nodes[role].signal_all(signal.SIGSTOP)

    def resume(self, role):
        self.nodes[role].signal_all(signal.SIGCONT)

    def stop_salt_master(self):
        process = self.processes.pop("master")
        process.terminate()
        process.wait(30)
        self._kill_matching(["salt-master", "-c", str(self.workdir / "master")])

    def start_salt_master(self):
        self.processes["master"] = self.cloud.popen(
            str(VENV_BIN / "salt-master"),
            "-c",
            str(self.workdir / "master"),
            log=self.workdir / "master" / "stderr.log",
        )
        _wait(
            lambda: self.salt("*", "test.ping", timeout=10)["ok"],
            120,
            "the minions did not come back to the restarted master",
        )

    def cut_vrrp(self):
        """The cloud drops everything between the nodes' private addresses (both ways)."""
        a, b = self.node_addresses.values()
        for source, target in ((a, b), (b, a)):
            self.cloud.run(
                "ip", "rule", "add", "from", source, "to", target, "prohibit", check=True
            )

    def heal_vrrp(self):
        a, b = self.node_addresses.values()
        for source, target in ((a, b), (b, a)):
            self.cloud.run("ip", "rule", "del", "from", source, "to", target, "prohibit")

    @staticmethod
    def _kill_matching(fragments):
        wanted = " ".join(fragments)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    if wanted in cmdline:
                        os.kill(int(entry.name), signal.SIGKILL)

    # ---- traffic ----------------------------------------------------------------

    def start_traffic(self, groups=None, interval=0.02, timeout=1.0, hold=False):
        """
        Steady requests from the client to the groups' URLs (default: every
        group's); ``hold``: also a long-lived connection through a group's line
        balancer (True: the first group with one). Returns a Traffic.
        """
        out = self.workdir / f"traffic-{time.time():.6f}.jsonl"
        argv = [
            "/usr/bin/python3",
            str(LAB_DIR / "traffic.py"),
            "--out",
            str(out),
            "--interval",
            str(interval),
            "--timeout",
            str(timeout),
        ]
        urls = self.urls(groups)
        if not urls:
            raise LabError(f"no web balancer in {groups or 'any group'} to send requests to")
        for url in urls:
            argv += ["--url", url]
        if any(url.startswith("https:") for url in urls):
            argv += ["--cafile", str(self.certificate)]
        if hold:
            names = self.groups if hold is True else [hold]
            targets = [target for name in names for target in self.groups[name].holds]
            if not targets:
                raise LabError(f"no line balancer in {hold} for a held connection")
            argv += ["--hold", targets[0]]
        process = self.client.popen(*argv, log=self.workdir / "traffic.log")
        _wait(out.exists, 10, "the traffic generator did not start")
        return Traffic(process, out)

    def answers_through(self, records, role, since, url=None):
        """
        The client's answered requests (to ``url``, default any), started at or
        after ``since``, that went through ``role``.
        """
        return [
            r
            for r in records
            if r["kind"] == "request"
            and r["ok"]
            and r["start"] >= since
            and url in (None, r["url"])
            and self.node_of(r.get("answer")) == role
        ]

    def switched_to(self, traffic, role, since):
        """Everything routed to ``role``, and each URL of the traffic answered through it since."""
        if not self.all_on(role):
            return False
        records = traffic.records()
        urls = {r["url"] for r in records if r["kind"] == "request"}
        return bool(urls) and all(self.answers_through(records, role, since, url) for url in urls)

    def node_of(self, answer):
        """
        The node a backend's answer came through: "be1 via 10.241.0.12 ..." ->
        lb2, and "lb1 via 127.0.0.1" (a backend on the node itself) -> lb1.
        """
        words = answer.split() if isinstance(answer, str) else []
        if len(words) < 3 or words[1] != "via":
            return None
        if words[0] in self.nodes and words[2] in LOOPBACK:
            return words[0]
        addresses = self.node_addresses.items()
        return next((role for role, private in addresses if words[2] == private), None)

    def api_events(self, since_time=0.0):
        return [e for e in self.api.events()["events"] if e["time"] >= since_time]

    def route_events(self, since_time=0.0):
        """
        Each route change in the cloud since ``since_time``: {time, ip, role}.

        Stamped once the route is in place, a few milliseconds after the API
        event that caused it: the moment traffic can follow.
        """
        log = self.cloud_dir / "routes.log"
        events = []
        for line in log.read_text().splitlines() if log.exists() else []:
            stamp, _kind, ip, *via = line.split()
            if float(stamp) >= since_time:
                role = self.role_at(via[0]) if via else None
                events.append({"time": float(stamp), "ip": ip, "role": role})
        return events

    def role_at(self, address):
        """The node whose public or private address ``address`` is, if any."""
        for role, server in self.servers.items():
            if address in (server["public_net"]["ipv4"]["ip"], self.node_addresses[role]):
                return role
        return None

    def server_role(self, server_id):
        return next((r for r, s in self.servers.items() if s["id"] == server_id), None)


class Traffic:
    """A running traffic generator; ``stop()`` returns its records."""

    def __init__(self, process, path):
        self.process, self.path = process, path

    def records(self):
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        return [json.loads(line) for line in lines if line.strip()]

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        return self.records()


# Run by the emulator (--on-change) in the cloud namespace whenever an address
# changes holder: the route follows at once. An IPv6 floating IP is a /64,
# routed on-link through the holder's link (found by its IPv4 address).
ROUTE_HOOK = """\
via="$FAKECLOUD_NEW_SERVER_IPV4"
[ "$FAKECLOUD_KIND" = floating_ip ] || via="$FAKECLOUD_NEW_SERVER_PRIVATE_IP"
case "$FAKECLOUD_IP" in
*:*)
    if [ -n "$via" ]; then
        dev=$(ip -o route get "$via" | sed -n 's/.* dev \\([^ ]*\\).*/\\1/p')
        ip -6 route replace "$FAKECLOUD_IP" dev "$dev"
    else
        ip -6 route replace unreachable "$FAKECLOUD_IP"
    fi ;;
*)
    if [ -n "$via" ]; then
        ip route replace "$FAKECLOUD_IP/32" via "$via"
    else
        ip route replace unreachable "$FAKECLOUD_IP/32"
    fi ;;
esac
echo "$(date +%s.%N) $FAKECLOUD_KIND $FAKECLOUD_IP $via" >> {events}
"""


def _whole_pillar(pillar):
    """A copy of a whole pillar ({"hcloud_lb": {...}, "hcloud": {...}?}); LabError if it is not."""
    if not isinstance(pillar, dict) or not isinstance(pillar.get("hcloud_lb"), dict):
        raise LabError("the lab takes a whole pillar: a mapping with an hcloud_lb mapping")
    return copy.deepcopy(pillar)


def _pillar_files(files):
    """A copy of a pillar tree ({path: text}, with top.sls); LabError if it is not one."""
    if not isinstance(files, dict) or "top.sls" not in files:
        raise LabError("pillar files: a mapping {path: text} with a top.sls")
    for path, text in files.items():
        if Path(path).is_absolute() or ".." in Path(path).parts or not isinstance(text, str):
            raise LabError(f"pillar files: {path!r} is not a relative path with a text")
    return dict(files)


def _additions(full, given):
    """What ``full`` has that ``given`` lacks or has otherwise, mappings compared key by key."""
    added = {}
    for key, value in full.items():
        if isinstance(value, dict) and isinstance(given.get(key), dict):
            if inner := _additions(value, given[key]):
                added[key] = inner
        elif key not in given or given[key] != value:
            added[key] = value
    return added


# Salt's pillar compiler, run with the lab's venv: argv is a minion config and the minion ids.
COMPILE_PILLAR = """
import json, sys
import salt.config, salt.pillar
opts = salt.config.minion_config(sys.argv[1])
compiled = {}
for minion in sys.argv[2:]:
    opts["id"] = minion
    compiled[minion] = salt.pillar.get_pillar(opts, {"id": minion}, minion).compile_pillar()
print(json.dumps(compiled))
"""


# Spends the emulator's IDs up to argv[2] (see Lab._spend_ids); argv[1] is the token file.
SPEND_IDS = f"""
import http.client, json, secrets, sys, time
token, until = open(sys.argv[1]).read().strip(), int(sys.argv[2])
api = http.client.HTTPConnection("127.0.0.1", {API_PORT}, timeout=30)
def call(method, path, body=None):
    headers = {{"Authorization": "Bearer " + token, "Content-Type": "application/json"}}
    api.request(method, "/v1" + path, json.dumps(body) if body else None, headers)
    response = api.getresponse()
    answer = response.read()
    return response.status, json.loads(answer) if answer else {{}}
def network():
    status, answer = call("POST", "/networks", {{"name": "lab-id-" + secrets.token_hex(4),
                                               "ip_range": "{PRIVATE_RANGE}"}})
    assert status == 201, answer
    call("DELETE", "/networks/%d" % answer["network"]["id"])
    return answer["network"]["id"]
def server():
    status, answer = call("POST", "/servers", {{"name": "lab-id-" + secrets.token_hex(4),
                                              "server_type": "cx22", "image": "debian-12"}})
    assert status == 201, answer
    for _ in range(100):
        status, deleted = call("DELETE", "/servers/%d" % answer["server"]["id"])
        if status != 423:  # locked: its create action is still running
            break
        time.sleep(0.01)
    assert status == 200, deleted
    return deleted["action"]["id"]
last = network()
while until - last > 10:
    spent = server()
    assert spent > last, (last, spent)
    last = spent
while last < until:
    last = network()
assert last == until, last
"""


def _fd_limit():
    """How many files the lab's processes (and so the nodes' haproxy) may open at most."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return float("inf") if hard == resource.RLIM_INFINITY else hard


def _haproxy_fds(max_connections):
    """The file limit haproxy sets itself for ``maxconn`` (2 per connection and a few)."""
    return 2 * int(max_connections) + 100


def _formula_default(key):
    defaults = yaml.safe_load((REPO / "hcloud_lb" / "defaults.yaml").read_text())
    return defaults["hcloud_lb"][key]


def _ip(value):
    if value is None or isinstance(value, bool):
        return None
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        return None


def _wanted_floating_ips(settings):
    """The floating IPs the pillar's groups name, each once (a group without one: none)."""
    groups = settings.get("groups") if isinstance(settings, dict) else None
    wanted, seen = [], set()
    for group, entry in groups.items() if isinstance(groups, dict) else ():
        if not isinstance(entry, dict):
            continue
        reference = entry.get("floating_ip")
        if reference in (None, "") or isinstance(reference, bool):
            continue
        address = _ip(entry.get("address"))
        if _ip(reference):
            want = WantedIp(str(group), address=_ip(reference))
            key = want.api_ip
        elif str(reference).strip().isdigit():
            want = WantedIp(str(group), id=int(str(reference).strip()), address=address)
            key = want.id
        else:
            want = WantedIp(str(group), name=str(reference), address=address)
            key = want.name
        if key not in seen:
            seen.add(key)
            wanted.append(want)
    return wanted


def _served(balancer):
    """
    [(where, Service, passes_tls)] for a balancer's backend servers the lab
    serves: ``where`` is "backends" (at a backend's address) or "local" (on
    the loopback address: on each node); ``passes_tls``: the client speaks TLS
    to the balancer, which passes it on (``tcp`` on port 443, or ``option
    ssl-hello-chk``, haproxy's check that a server speaks TLS).
    """
    if not isinstance(balancer, dict) or not isinstance(balancer.get("backend_servers"), dict):
        return []
    options = balancer.get("options") if isinstance(balancer.get("options"), list) else []
    passes_tls = balancer.get("mode", "tcp") == "tcp" and (
        str(balancer.get("frontend_port")) == "443" or "ssl-hello-chk" in options
    )
    found = []
    for server in balancer["backend_servers"].values():
        if not isinstance(server, dict) or not str(server.get("port")).isdigit():
            continue
        host = str(server.get("host"))
        where = "backends" if host in BACKENDS.values() else "local" if host in LOOPBACK else None
        if where is None:
            continue
        words = str(server.get("options") or "").split()
        proxy = "v2" if "send-proxy-v2" in words else "v1" if "send-proxy" in words else None
        port = int(str(server["port"]))
        kind = "lines" if port == LINE_PORT else "http"
        found.append((where, Service(port, kind, proxy, passes_tls or "ssl" in words), passes_tls))
    return found


def services(settings):
    """
    What the pillar's balancers need served: {"backends": {port: Service},
    "local": {port: Service}}, the backends' (both serve every port) and each
    node's own (loopback). LabError if two balancers want different things of
    one port.
    """
    wanted = {"backends": {}, "local": {}}
    groups = settings.get("groups") if isinstance(settings, dict) else None
    for group in groups.values() if isinstance(groups, dict) else ():
        balancers = group.get("balancers") if isinstance(group, dict) else None
        for balancer in balancers.values() if isinstance(balancers, dict) else ():
            for where, service, _passes_tls in _served(balancer):
                known = wanted[where].setdefault(service.port, service)
                if known != service:
                    raise LabError(
                        f"port {service.port} of the {where}: one balancer wants "
                        f"{known.spec()}, another {service.spec()}"
                    )
    return wanted


def max_connections_here(wanted):
    """
    The most of ``wanted`` haproxy can have as ``maxconn`` on this machine:
    it needs 2 files a connection and ~100 more, and the lab's processes
    cannot raise their file limit (no CAP_SYS_RESOURCE).
    """
    return min(int(wanted), (_fd_limit() - 100) // 2)


def _failed_states(ret):
    """The comments of the states that did not succeed in a state.apply return."""
    if not isinstance(ret, dict):
        return [f"no state results: {ret!r}"[:2000]]
    return [s.get("comment") for s in ret.values() if isinstance(s, dict) and not s.get("result")]


def _free_port():
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _responds(api):
    with contextlib.suppress(Exception):
        return api.api("GET", "/servers").ok
    return False


def _wait(predicate, timeout, message):
    """``wait_for``, raising LabError with ``message`` (a text, or a function making one)."""
    value = wait_for(predicate, timeout)
    if not value:
        raise LabError(message() if callable(message) else message)
    return value
