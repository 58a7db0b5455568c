"""
The failover lab: two load balancer nodes, the cloud, a client and backends,
each a host of its own on this machine, and the formula applied to the nodes
by a salt-master in the lab (or masterless).

Hosts (network namespaces named ``<name>-<host>``):

    client  10.240.1.100 ──┐                         ┌── be1 10.241.0.21 (HTTP :8080, lines :8081)
                           │  cloud: router,          ├── be2 10.241.0.22
    lb1 eth0 10.240.1.x ───┤  emulator :8080,         │
    lb2 eth0 10.240.1.y ───┤  metadata 169.254.169.254├── lb1 ens10 10.241.0.11
                           │  salt-master :4505/4506  └── lb2 ens10 10.241.0.12
                      public 10.240.1.0/24      private network 10.241.0.0/16

Like Hetzner, every link is a point-to-point /32 to the cloud, which routes:
each floating IP (10.240.100.0/24) goes to the server the emulator says holds
it, and each alias IP to its holder's private address, changed by the
emulator's --on-change hook the moment an assignment completes. Nothing is
routed out of the lab: the namespaces have no link to this machine's network.

The load balancer nodes are hosts to the formula (nodeinit.py): their own
/etc, /var, /run, /tmp, /dev, PIDs and hostname, so Debian's haproxy and
keepalived run under their init scripts, with real VRRP between the nodes
over the private network. Everything the lab makes lives in ``workdir`` and
the namespaces; ``down()`` removes all of it, also after a failed ``up()``.
"""

import contextlib
import json
import os
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
CLIENT_IP = "10.240.1.100"
SERVER_POOL = "10.240.1.16/28"
FLOATING_POOL = "10.240.100.0/24"
PRIVATE_RANGE = "10.241.0.0/16"
PRIVATE_SUBNET = "10.241.0.0/24"
PRIVATE_GATEWAY = "10.241.0.1"
ALIAS_IP = "10.241.0.100"
METADATA_IP = "169.254.169.254"
API_PORT = 8080
# High priorities on both: a backup waits (256 - priority) / 256 of an advert
# interval (its skew time) before it takes over from a master that gave up.
NODES = {
    "lb1": {"private": "10.241.0.11", "priority": 254},
    "lb2": {"private": "10.241.0.12", "priority": 250},
}
BACKENDS = {"be1": "10.241.0.21", "be2": "10.241.0.22"}
HTTP_PORT, LINE_PORT = 8080, 8081
ACTION_DURATION = 0.5


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


class Lab:
    def __init__(
        self,
        name="hlab",
        *,
        workdir=None,
        profile="default",
        floating_ips=2,
        masterless=False,
        action_duration=ACTION_DURATION,
        pillar=None,
        say=print,
    ):
        self.name = name
        self.workdir = Path(workdir or REPO / ".lab" / name)
        self.profile = profile
        self.floating_ip_count = floating_ips
        self.masterless = masterless
        self.action_duration = action_duration
        self.pillar_overrides = pillar or {}
        self.say = say
        self.cloud = Host(self, "cloud")
        self.client = Host(self, "client")
        self.backends = {role: Host(self, role) for role in BACKENDS}
        self.nodes = {role: Node(self, role) for role in NODES}
        self.token = None
        self.api = None
        self.servers = {}
        self.floating_ips = {}
        self.processes = {}

    # ---- the whole lab ---------------------------------------------------------------

    def hosts(self):
        return [self.cloud, self.client, *self.backends.values(), *self.nodes.values()]

    def up(self):
        """Build everything and apply the formula; on any failure, tear down and raise."""
        self.down(quiet=True)
        try:
            # Root only: the lab's token, pillar, logs and the nodes' files live here.
            self.workdir.mkdir(parents=True, mode=0o700)
            self._wire()
            self._start_cloud()
            self._build_project()
            self._start_backends()
            for node in self.nodes.values():
                node.start()
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
        servers = self.api._api_ok("GET", "/servers")["servers"]
        self.servers = {s["name"]: s for s in servers if s["name"] in self.nodes}
        fips = self.api._api_ok("GET", "/floating_ips")["floating_ips"]
        self.floating_ips = {f["name"]: f["ip"] for f in sorted(fips, key=lambda f: f["id"])}
        return self

    def down(self, quiet=False):
        """Remove every process, namespace and file of the lab (by its name, also a crashed one)."""
        for node in self.nodes.values():
            self._kill_node(node)
        for host in self.hosts():
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
        for host in self.hosts():
            run(["ip", "netns", "add", host.netns])
            run(["ip", "-n", host.netns, "link", "set", "lo", "up"])
        cloud = self.cloud.netns
        self.cloud.run("sysctl", "-qw", "net.ipv4.ip_forward=1", check=True)
        for key in ("all", "default"):
            self.cloud.run("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0", check=True)
        for address in (GATEWAY, PRIVATE_GATEWAY, METADATA_IP):
            run(["ip", "-n", cloud, "addr", "add", f"{address}/32", "dev", "lo"])
        # Floating IPs nobody holds go nowhere, as on Hetzner.
        run(["ip", "-n", cloud, "route", "add", "unreachable", FLOATING_POOL])
        self._link(self.client, "eth0", f"pub-{self.client.role}", CLIENT_IP, GATEWAY)
        for role, address in BACKENDS.items():
            self._link(
                self.backends[role],
                "ens10",
                f"prv-{role}",
                address,
                PRIVATE_GATEWAY,
                routes=[PRIVATE_RANGE],
            )

    def _link(self, host, device, cloud_device, address, gateway, *, routes=("default",)):
        """A point-to-point link host:device <-> cloud:cloud_device, host at address/32."""
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

    # ---- the cloud -------------------------------------------------------------------

    def _start_cloud(self):
        self.token = secrets.token_hex(32)
        token_file = self.workdir / "token"
        token_file.touch(mode=0o600)
        token_file.write_text(self.token)
        events = self.workdir / "routes.log"
        # The emulator runs this in the cloud namespace each time an address
        # changes holder: the route follows the API state at once.
        hook = (
            'via="$FAKECLOUD_NEW_SERVER_IPV4"; '
            '[ "$FAKECLOUD_KIND" = floating_ip ] || via="$FAKECLOUD_NEW_SERVER_PRIVATE_IP"; '
            'if [ -n "$via" ]; then ip route replace "$FAKECLOUD_IP/32" via "$via"; '
            'else ip route replace unreachable "$FAKECLOUD_IP/32"; fi; '
            f'echo "$(date +%s.%N) $FAKECLOUD_KIND $FAKECLOUD_IP $via" >> {events}'
        )
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
            "--action-duration",
            str(self.action_duration),
            "--on-change",
            hook,
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

    def _build_project(self):
        api = self.api
        for role in NODES:
            self.servers[role] = api.create_server(role)
        network = api.create_network("lab-private", ip_range=PRIVATE_RANGE, subnet=PRIVATE_SUBNET)
        for role, spec in NODES.items():
            api.attach_server(self.servers[role]["id"], network["id"], ip=spec["private"])
            public = self.servers[role]["public_net"]["ipv4"]["ip"]
            self._link(self.nodes[role], "eth0", f"pub-{role}", public, GATEWAY)
            self._link(
                self.nodes[role],
                "ens10",
                f"prv-{role}",
                spec["private"],
                PRIVATE_GATEWAY,
                routes=[PRIVATE_RANGE],
            )
        names = ["lab-http", "lab-ws"] + [f"lab-extra{n}" for n in range(1, 16)]
        for name in names[: self.floating_ip_count]:
            self.floating_ips[name] = api.create_floating_ip(name)["ip"]
        self.network_id = network["id"]

    # ---- backends, client ---------------------------------------------------------

    def _start_backends(self):
        for role, host in self.backends.items():
            self.processes[role] = host.popen(
                "/usr/bin/python3",
                str(LAB_DIR / "backend.py"),
                role,
                str(HTTP_PORT),
                str(LINE_PORT),
                log=self.workdir / f"{role}.log",
            )
        for role, address in BACKENDS.items():
            _wait(
                lambda a=address: self.http("cloud", f"http://{a}:{HTTP_PORT}/")[0],
                20,
                f"backend {role} did not answer",
            )

    def http(self, role, url, timeout=3):
        """(ok, answer) of one GET from a lab host."""
        host = self._host(role)
        code = (
            "import urllib.request\n"
            "try:\n"
            f"    answer = urllib.request.urlopen({url!r}, timeout={timeout})\n"
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
        nodes = {
            role: {"priority": spec["priority"], "address": spec["private"]}
            for role, spec in NODES.items()
        }
        servers = {
            role: {"host": address, "port": HTTP_PORT, "options": "check inter 1s"}
            for role, address in BACKENDS.items()
        }
        lines = {
            role: {"host": address, "port": LINE_PORT, "options": "check inter 1s"}
            for role, address in BACKENDS.items()
        }
        groups = {}
        for name, address in self.floating_ips.items():
            ws = name == "lab-ws"
            groups[name.removeprefix("lab-")] = {
                "floating_ip": name,
                "address": address,
                "balancers": {
                    "lines" if ws else "web": {
                        "mode": "tcp" if ws else "http",
                        "algorithm": "leastconn" if ws else "roundrobin",
                        "frontend_port": 80,
                        "backend_servers": lines if ws else servers,
                    }
                },
            }
        settings = {
            "lookup": {
                "salt_call": str(VENV_BIN / "salt-call"),
                # No insserv in the lab's Debian: boot links stay as they are.
                "haproxy": {"enable": False},
                "keepalived": {"enable": False},
            },
            "name": "lab",
            "max_connections": 2000,
            "public_interface": "eth0",
            "vrrp": {
                "interface": "ens10",
                "virtual_router_id": 51,
                "password": self._vrrp_password(),
                "profile": self.profile,
            },
            "nodes": nodes,
            "groups": groups,
            "alias_ips": {"lab-private": {"interface": "ens10", "ips": [ALIAS_IP]}},
            "hook": {"deadline": 20, "reassert_interval": 5},
        }
        _merge(settings, self.pillar_overrides)
        return {
            "hcloud": {
                "token": self.token,
                "api_endpoint": f"http://{GATEWAY}:{API_PORT}/v1",
                "metadata_endpoint": f"http://{METADATA_IP}/hetzner/v1/metadata",
            },
            "hcloud_lb": settings,
        }

    def _vrrp_password(self):
        path = self.workdir / "vrrp_password"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_hex(4))
        return path.read_text()

    def write_pillar(self, overrides=None):
        if overrides is not None:
            self.pillar_overrides = overrides
        pillar_dir = self.workdir / "pillar"
        pillar_dir.mkdir(mode=0o700, exist_ok=True)
        (pillar_dir / "top.sls").write_text("base:\n  '*': [hcloud_lb]\n")
        path = pillar_dir / "hcloud_lb.sls"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(self.pillar(), sort_keys=False))

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

    def _start_master(self, file_roots):
        config_dir = self.workdir / "master"
        config_dir.mkdir(exist_ok=True)
        master = {
            "root_dir": str(config_dir / "root"),
            "interface": "0.0.0.0",
            "auto_accept": True,  # a lab of throwaway keys; production accepts keys by hand
            "file_roots": file_roots,
            "pillar_roots": {"base": [str(self.workdir / "pillar")]},
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
        expected = set(NODES) if target == "*" else {target}
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

    def holders(self):
        """Where the API says each floating IP and the alias IP are: {address: role or None}."""
        by_id = {server["id"]: role for role, server in self.servers.items()}
        found = {}
        for fip in self.api._api_ok("GET", "/floating_ips")["floating_ips"]:
            found[fip["ip"]] = by_id.get(fip["server"])
        found[ALIAS_IP] = None
        for role, server in self.servers.items():
            detail = self.api._api_ok("GET", f"/servers/{server['id']}")["server"]
            if any(ALIAS_IP in entry["alias_ips"] for entry in detail["private_net"]):
                found[ALIAS_IP] = role
        return found

    def all_on(self, role):
        return set(self.holders().values()) == {role}

    def answers(self, group="http"):
        """(ok, answer) of one request from the client to a group's floating IP."""
        return self.http("client", f"http://{self.floating_ips['lab-' + group]}/")

    def wait_steady(self, timeout=90):
        """One MASTER, every address on it, and the client served through the floating IP."""

        def steady():
            master = self.master_node()
            return master and self.all_on(master) and self.answers()[0] and master

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
        a, b = (spec["private"] for spec in NODES.values())
        for source, target in ((a, b), (b, a)):
            self.cloud.run(
                "ip", "rule", "add", "from", source, "to", target, "prohibit", check=True
            )

    def heal_vrrp(self):
        a, b = (spec["private"] for spec in NODES.values())
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

    def start_traffic(self, groups=("http",), interval=0.02, timeout=1.0, hold=False):
        """Steady requests from the client to the groups' floating IPs; returns a Traffic."""
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
        for group in groups:
            argv += ["--url", f"http://{self.floating_ips['lab-' + group]}/"]
        if hold:
            argv += ["--hold", f"{self.floating_ips['lab-ws']}:80"]
        process = self.client.popen(*argv, log=self.workdir / "traffic.log")
        _wait(out.exists, 10, "the traffic generator did not start")
        return Traffic(process, out)

    def answers_through(self, records, role, since):
        """The client's answered requests, started at or after ``since``, that went through role."""
        return [
            r
            for r in records
            if r["kind"] == "request"
            and r["ok"]
            and r["start"] >= since
            and self.node_of(r.get("answer")) == role
        ]

    def switched_to(self, traffic, role, since):
        """Everything routed to ``role``, and the client served through it since ``since``."""
        return self.all_on(role) and bool(self.answers_through(traffic.records(), role, since))

    def node_of(self, answer):
        """The node a backend's answer came through ("be1 via 10.241.0.12" -> lb2)."""
        for role, spec in NODES.items():
            if answer and answer.endswith(f"via {spec['private']}"):
                return role
        return None

    def api_events(self, since_time=0.0):
        return [e for e in self.api.events()["events"] if e["time"] >= since_time]

    def route_events(self, since_time=0.0):
        """
        Each route change in the cloud since ``since_time``: {time, ip, role}.

        Stamped once the route is in place, a few milliseconds after the API
        event that caused it: the moment traffic can follow.
        """
        log = self.workdir / "routes.log"
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
            if address in (server["public_net"]["ipv4"]["ip"], NODES[role]["private"]):
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


def _failed_states(ret):
    """The comments of the states that did not succeed in a state.apply return."""
    if not isinstance(ret, dict):
        return [f"no state results: {ret!r}"[:2000]]
    return [s.get("comment") for s in ret.values() if isinstance(s, dict) and not s.get("result")]


def _merge(base, overrides):
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


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
