"""
The formula applied for real by the other two ways: ``state.apply hcloud_lb``
from a salt-master to its salt-minion (way 1), and by salt-ssh from the same
master's config to an sshd (way 2); test/formula/test_apply.py does way 3
(``salt-call --local``). Same pillar (``lab_pillar``), same namespaces
(``netns``: the node and its VRRP peer) and backends as there. Runs as root.

The node is the namespace. The salt-minion (way 1) and the sshd (way 2) run
inside the node's namespace (``ip netns exec``, by salt-factories daemon
classes whose command line starts with it), so whatever they start (the init
scripts, haproxy, keepalived and its hooks) runs there too, and VRRP and
haproxy's traffic stay there. The master, the emulator and salt-factories'
log server stay on the host's loopback, and ``nsbridge.py`` joins the two
loopbacks port by port, with 127.0.0.1 at both ends:

* way 1: the namespace's 127.0.0.1:{master ret port, publish port, log
  server port} to the host's: the minion dials its master as 127.0.0.1;
* way 2: the host's 127.0.0.1:<sshd port> to the namespace's: salt-ssh dials
  the sshd as 127.0.0.1;
* both: the namespace's 127.0.0.1:<emulator port> to the host's, so the
  failover hook that keepalived runs inside the node reaches the emulator.

Every test runs once per way (a module-scoped parametrized fixture: all of
the minion's, then all of salt-ssh's), but the few about salt-ssh only, which
take just that parameter; each way's deployment is undone, also on failure,
by the formula's clean states through that way, then by
``formula_on_this_host``'s fallback (the same as the salt-call tests').

salt-ssh runs from the master set up as README.md tells its users (see
test/ways/conftest.py): the formula's wrapper module synced with ``salt-run
saltutil.sync_wrapper``, so the states' calls of hcloud_lb.validate and
hcloud_lb.node run on the master with the pillar, and the README's
``extra_filerefs``, so the templates find map.jinja on the target. The roster
holds no hcloud option: the token is in the pillar only, as for the minion.
"""

import contextlib
import os
import re
import select
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import attr
import formula.conftest as formula_lab
import pytest
import yaml
from formula.conftest import (
    NODE_ID,
    changed,
    formula_on_this_host,
    in_netns,
    lab_pillar,
    lab_project,
    pid_of,
    states,
)
from formula.test_apply import (
    assert_master_holding_the_alias_ip,
    assert_serving_from_both_backends,
    live_state,
)
from saltfactories.daemons.minion import SaltMinion
from saltfactories.daemons.sshd import Sshd

from helpers import REPO, SALT_CALL, wait_for

from .conftest import (
    README_SALT_SSH_CONFIG,
    SSHD_CONFIG,
    SYSTEM_PATH,
    VENV_BIN,
    MinionWay,
    SshWay,
    _dump,
    _keep_logs_drop_root,
    config_path,
)
from .test_ways import log_records

# test/formula's namespaces (the node and its VRRP peer) and backends, reused:
# pytest registers a fixture under the name it has in the module that holds it.
netns = formula_lab.netns
backends = formula_lab.backends

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="applies the formula: needs root")

LB_MINION_ID = "lb-ways-minion"
LB_SSH_ID = "lb-ways-ssh"
NSBRIDGE = Path(__file__).with_name("nsbridge.py")
VRRP_PASSWORD = "s3cret-x"  # lab_pillar's
# The first apply installs nothing here (tools/bootstrap did) but starts both
# daemons; salt-ssh renders through the sshd. Generous, but a hang must fail.
APPLY_TIMEOUT = 300
# This VM has systemctl but no systemd as PID 1: Salt's systemd module would
# claim "offline mode"; the sysvinit scripts do the work (as FormulaNode).
NODE_OPTS = {"log_level_logfile": "all", "disable_modules": ["systemd_service"]}


# ---------------------------------------------------------------- daemons in the namespace


@attr.s(kw_only=True, slots=True)
class NetnsSaltMinion(SaltMinion):
    """A salt-minion started inside a network namespace."""

    netns = attr.ib()

    def cmdline(self, *args):
        return ["ip", "netns", "exec", self.netns, *SaltMinion.cmdline(self, *args)]


@attr.s(kw_only=True, slots=True)
class NetnsSshd(Sshd):
    """An sshd started inside a network namespace (listening on its loopback)."""

    netns = attr.ib()

    def cmdline(self, *args):
        return ["ip", "netns", "exec", self.netns, *Sshd.cmdline(self, *args)]


def netns_inode(pid=None, name=None):
    """The network namespace of a process, or of a named namespace, as an inode number."""
    path = f"/proc/{pid}/ns/net" if pid else f"/run/netns/{name}"
    return os.stat(path).st_ino


@contextlib.contextmanager
def bridge(*forwards):
    """nsbridge.py with these forwards (``A:PORT>B:PORT``), until the block ends."""
    proc = subprocess.Popen(
        [sys.executable, str(NSBRIDGE), *forwards],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready else ""
        assert line.strip() == "nsbridge: ready", f"nsbridge: {line!r} {proc.poll()}"
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def ssh_banner(port):
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 2) as sock:
        sock.settimeout(5)
        return sock.recv(64).startswith(b"SSH-")
    return False


@contextlib.contextmanager
def minion_way(ns, env):
    """Way 1: a salt-minion in namespace ``ns``, connected to the master through the bridge."""
    master = env.master
    minion = master.salt_minion_daemon(
        LB_MINION_ID,
        factory_class=NetnsSaltMinion,
        netns=ns,
        overrides={"master": "127.0.0.1", **NODE_OPTS},
    )
    # salt-factories' own services the minion reports to: its log server and event listener.
    factories = minion.config["pytest-minion"]
    ports = [master.config["ret_port"], master.config["publish_port"], env.emulator_port]
    ports += [factories["log"]["port"], factories["returner_address"]["port"]]
    try:
        with bridge(*[f"{ns}:{port}>host:{port}" for port in ports]), minion.started():
            way = MinionWay(master, env.pillar, minion)
            way.node_id = LB_MINION_ID
            way.daemon_pid = minion.pid
            ret = way.run("saltutil.sync_all")
            assert ret.returncode == 0 and "modules.hcloud_lb" in ret.data["modules"], ret
            yield way
    finally:
        _keep_logs_drop_root(minion, env.root)


class LbSshWay(SshWay):
    """SshWay, with time for a first apply; ``run`` takes salt-ssh options before the function."""

    def run(self, *argv, timeout=APPLY_TIMEOUT):
        return self.cli(timeout).run(*argv)


@contextlib.contextmanager
def ssh_way(ns, env):
    """Way 2: an sshd in namespace ``ns``, reached by salt-ssh on the host through the bridge."""
    master, emulator_port = env.master, env.emulator_port
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    config_dir = env.root / "lb-sshd"
    config_dir.mkdir(exist_ok=True)
    sshd = env.salt_factories.get_sshd_daemon(
        config_dir=config_dir,
        listen_address="127.0.0.1",
        script_name=shutil.which("sshd") or "/usr/sbin/sshd",
        display_name="lb-ways-sshd",
        sshd_config_dict=dict(SSHD_CONFIG),
        factory_class=NetnsSshd,
        netns=ns,
    )
    port = sshd.listen_port
    # No hcloud option here: the token is in the node's pillar only.
    entry = {
        "host": "127.0.0.1",
        "port": port,
        "user": "root",
        "priv": str(sshd.client_key),
        "thin_dir": str(env.root / "thin-lb"),
        "set_path": f"{VENV_BIN}:{SYSTEM_PATH}",
        "minion_opts": dict(NODE_OPTS),
    }
    roster_file = env.root / "roster-lb"
    _dump(roster_file, {LB_SSH_ID: entry})
    forwards = [f"host:{port}>{ns}:{port}", f"{ns}:{emulator_port}>host:{emulator_port}"]
    try:
        # The bridge answers the port check at once: wait for sshd's banner through it.
        with bridge(*forwards), sshd.started():
            assert wait_for(lambda: ssh_banner(port), 30), "the sshd in the namespace is silent"
            known_hosts = config_path(master, "known_hosts_file")
            with known_hosts.open("a", encoding="utf-8") as fh:
                fh.write("\n".join(sshd.get_host_keys()) + "\n")
            way = LbSshWay(
                master,
                env.pillar,
                sshd=sshd,
                roster_file=roster_file,
                node_id=LB_SSH_ID,
                entry=entry,
            )
            way.daemon_pid = sshd.pid
            yield way
    finally:
        shutil.rmtree(entry["thin_dir"], ignore_errors=True)


# ---------------------------------------------------------------- the deployment


class Deployment:
    """The formula applied through one way; every CLI result is kept for the secrets test."""

    def __init__(self, way, node_netns):
        self.way = way
        self.netns = node_netns
        self.returns = []
        self.first_apply = None

    def run(self, function, *args, timeout=APPLY_TIMEOUT):
        ret = self.way.run(function, *args, timeout=timeout)
        self.returns.append(ret)
        return ret

    def apply(self, *sls, test=False):
        args = ["test=True"] if test else []
        return self.run("state.apply", ",".join(sls or ["hcloud_lb"]), *args)

    def __repr__(self):
        return f"<hcloud_lb by {self.way.name}>"


def way_pillar(cloud, node_id):
    """lab_pillar, with this way's node (its minion id) in lab_pillar's lb-master's place."""
    nodes = lab_pillar(cloud)["hcloud_lb"]["nodes"]
    return lab_pillar(cloud, nodes={node_id: nodes[NODE_ID], "lb-backup": nodes["lb-backup"]})


@pytest.fixture(scope="module")
def lab_env(fakecloud_process, salt_factories, ways_master, ways_pillar, ways_root):
    """What both ways' deployments need of the session: the master and its trees, the emulator."""
    cloud = fakecloud_process.cloud
    return SimpleNamespace(
        cloud=cloud,
        emulator_port=urlsplit(cloud.endpoint).port,
        salt_factories=salt_factories,
        master=ways_master,
        pillar=ways_pillar,
        root=ways_root,
    )


@pytest.fixture(scope="module", params=["minion", "salt-ssh"])
def lb(request, netns, backends, lab_env):
    """hcloud_lb applied for real through one way, its services in the node namespace."""
    with contextlib.ExitStack() as stack:
        make = {"minion": minion_way, "salt-ssh": ssh_way}[request.param]
        way = stack.enter_context(make(netns, lab_env))
        stack.callback(lab_env.pillar.unset, way.node_id)
        way.set_pillar(way_pillar(lab_env.cloud, way.node_id))
        deployment = Deployment(way, netns)
        stack.enter_context(formula_on_this_host(netns, deployment.apply))
        deployment.first_apply = deployment.apply()
        yield deployment


# ---------------------------------------------------------------- the tests


def test_apply_succeeds_and_the_daemons_run_in_the_node_namespace(lb):
    ret = lb.first_apply
    failed = {sid: s["comment"] for sid, s in states(ret).items() if s["result"] is not True}
    assert not failed, failed
    assert ret.returncode == 0, ret
    node = netns_inode(name=lb.netns)
    assert netns_inode(pid=lb.way.daemon_pid) == node  # the minion or the sshd
    for pidfile in ("/run/haproxy.pid", "/run/keepalived.pid"):
        pid = pid_of(pidfile)
        assert pid, f"{pidfile}: not running"
        assert netns_inode(pid=pid) == node, f"{pidfile}: outside the node namespace"
    # The floating IP the formula put on the public interface is the namespace's.
    addrs = in_netns(lb.netns, "ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert " 10.231.1.10/32 " in addrs


def test_keepalived_becomes_master_and_holds_the_alias_ip(lb):
    assert_master_holding_the_alias_ip(lb.netns)


def test_haproxy_serves_the_group_address_from_both_backends(lb):
    assert_serving_from_both_backends(lb.netns)


def test_second_apply_and_test_mode_change_nothing(lb):
    before = live_state()
    again = lb.apply()
    assert again.returncode == 0, again
    assert changed(again) == {}
    dry = lb.apply(test=True)
    assert dry.returncode == 0, dry
    assert changed(dry) == {}
    assert all(s["result"] is True for s in states(dry).values()), states(dry)
    assert live_state() == before


def holder(cloud, fip_id):
    fip = cloud.client().floating_ips.get_by_id(fip_id)
    return fip.server.name if fip.server else None


def test_the_applied_hook_moves_the_floating_ip_here_from_inside_the_node(lb, cloud):
    master, backup, fip = lab_project(cloud)

    # The hook, run on the node through the way (so in the node's namespace).
    ret = lb.run("cmd.run_all", "/etc/keepalived/scripts/failover test")
    assert ret.returncode == 0, ret
    assert ret.data["retcode"] == 0, ret.data
    assert "failover (test) exited with 0" in ret.data["stderr"]
    assert holder(cloud, fip["id"]) == NODE_ID
    server = cloud.client().servers.get_by_id(master["id"])
    assert server.private_net[0].alias_ips == ["10.231.0.100"]

    # keepalived's own use of it: while MASTER, the re-assert loop runs the
    # hook every 2 s (hook:reassert_interval), so an IP routed elsewhere comes back.
    client = cloud.client()
    elsewhere = client.floating_ips.assign(
        client.floating_ips.get_by_id(fip["id"]), client.servers.get_by_id(backup["id"])
    )
    elsewhere.wait_until_finished()
    assert elsewhere.status == "success"
    assert wait_for(lambda: holder(cloud, fip["id"]) == NODE_ID, 30, 0.5)


# ---------------------------------------------------------------- salt-ssh only

only_salt_ssh = pytest.mark.parametrize("lb", ["salt-ssh"], indirect=True)


def commands_on_the_target(way, start):
    """The salt-call command lines salt-ssh ran on the target since byte ``start`` of its log."""
    ssh_log = config_path(way.master, "ssh_log_file")
    return [r for r in log_records(ssh_log, start) if "SALT_ARGV:" in r]


@only_salt_ssh
def test_salt_ssh_validates_the_pillar_on_the_master_without_a_token_in_the_roster(lb):
    roster = yaml.safe_load(lb.way.roster_file.read_text(encoding="utf-8"))
    assert "hcloud" not in roster[lb.way.node_id]["minion_opts"]
    start = config_path(lb.way.master, "ssh_log_file").stat().st_size
    ret = lb.run("state.show_sls", "hcloud_lb.keepalived.config")
    assert ret.returncode == 0, ret
    assert "hcloud:token: not set" not in ret.stdout, ret.stdout
    assert "keepalived's config is managed" in ret.data, ret  # high data, keyed by ID
    # hcloud_lb.validate and .node ran on the master (the wrapper): the target
    # saw no hcloud_lb call, only the salt_call and interface checks, each
    # with the path alone.
    on_target = commands_on_the_target(lb.way, start)
    assert on_target, "no command line logged: the check would prove nothing"
    assert not [r for r in on_target if "'hcloud_lb." in r], on_target
    checks = [r for r in on_target if "'cmd.retcode'" in r]
    assert checks, on_target
    # lab_pillar's lookup:salt_call and its interfaces
    allowed = [
        f"""'cmd.retcode', '["test", "{flag}", "{path}"]', 'python_shell=false', """
        for flag, path in (
            ("-x", SALT_CALL),
            ("-e", "/sys/class/net/eth0"),
            ("-e", "/sys/class/net/ens10"),
        )
    ]
    assert any(allowed[0] in r for r in checks), checks
    assert all(any(a in r for a in allowed) for r in checks), checks


def template_imports(path, seen=None):
    """The formula files a template imports, transitively (tplroot-relative Jinja imports)."""
    seen = set() if seen is None else seen
    text = path.read_text(encoding="utf-8")
    for name in re.findall(r'(?:import_yaml|import|from|include)\s+tplroot ~ "/([^"]+)"', text):
        if name not in seen:
            seen.add(name)
            template_imports(REPO / "hcloud_lb" / name, seen)
    return seen


@only_salt_ssh
def test_salt_ssh_renders_the_templates_with_the_documented_extra_filerefs(lb):
    documented = README_SALT_SSH_CONFIG["extra_filerefs"]
    assert list(lb.way.master.config["extra_filerefs"]) == documented
    # The README names every file the templates import, and nothing else.
    templates = sorted((REPO / "hcloud_lb").glob("*/files/*.jinja"))
    imported = set().union(*(template_imports(t) for t in templates))
    assert sorted(f"salt://hcloud_lb/{name}" for name in imported) == sorted(documented)
    sls = "hcloud_lb.haproxy.config,hcloud_lb.keepalived.config,hcloud_lb.hook"
    ret = lb.run("state.apply", sls, "test=True")
    managed = {sid: s for sid, s in states(ret).items() if "config is managed" in sid}
    assert len(managed) == 3, states(ret)
    assert all(s["result"] is True for s in managed.values()), managed
    # Salt's behaviour, pinned (why the README asks for the setting): an explicit
    # --extra-filerefs replaces the master's, and without map.jinja on the target
    # the templates do not render.
    ret = lb.run("--extra-filerefs=salt://hcloud_lb/osmap.yaml", "state.apply", sls, "test=True")
    managed = {sid: s for sid, s in states(ret).items() if "config is managed" in sid}
    assert all(s["result"] is False for s in managed.values()), managed
    assert all("TemplateNotFound" in s["comment"] for s in managed.values()), managed


# ---------------------------------------------------------------- secrets


def harness_scrubbed(path):
    """
    A file's text less the emulator's command line: the harness starts it with
    ``--token``, and Salt's service states on the node log ``ps`` output (the
    ``sig`` check), so the node's log shows that command line. Not the formula's doing.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    return re.sub(r"test/fakecloud --token \S+", "test/fakecloud --token <emulator's>", text)


def test_the_token_and_the_vrrp_password_are_in_no_return_job_cache_or_log(
    lb, ways_pillar, fakecloud_process
):
    secrets = {"API token": fakecloud_process.cloud.token, "VRRP password": VRRP_PASSWORD}
    rets = [lb.run("state.apply", "hcloud_lb.keepalived.config"), *lb.returns]
    job_cache = lb.way.job_cache_files()
    node_logs = lb.way.node_log_files()
    assert job_cache, "no job cache written: the check would prove nothing"
    assert node_logs, "no log on the node: the check would prove nothing"
    for what, secret in secrets.items():
        for ret in rets:
            assert secret not in ret.stdout + ret.stderr, f"the {what} is in a return: {ret}"
        leaks = [str(p) for p in job_cache + node_logs if secret in harness_scrubbed(p)]
        assert not leaks, f"the {what} is in {leaks}"
        # The master logs every pillar file it renders, at debug level (salt.template,
        # Salt's own doing): the only place a secret may appear on the master side.
        for path in lb.way.master_log_files():
            for record in log_records(path):
                if secret in record:
                    assert re.match(
                        rf"\[[^]]*\]\[salt\.template +:\d+ *\]\[DEBUG +\]\[[^]]*\] "
                        rf"Rendered data from file: {re.escape(str(ways_pillar.root))}/",
                        record,
                    ), f"the {what} is in {path}:\n{record[:2000]}"
