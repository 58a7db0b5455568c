"""
The formula applied for real with `salt-call --local state.apply hcloud_lb`
inside a network namespace this test creates: haproxy serves the group's
address, keepalived becomes MASTER over unicast VRRP to the peer namespace,
the hook moves a floating IP on the emulator. Runs as root.
"""

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from helpers import wait_for

from .conftest import (
    agent_pids,
    changed,
    http_get,
    in_netns,
    lab_pillar,
    lab_project,
    pid_of,
    states,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="applies the formula: needs root")

KEEPALIVED_CONF = Path("/etc/keepalived/keepalived.conf")
HAPROXY_CFG = Path("/etc/haproxy/haproxy.cfg")
SCRIPTS = Path("/etc/keepalived/scripts")
HOOK_DIR = Path("/etc/hcloud_lb/salt")
GROUP_URL = "http://10.231.1.10:8080/"


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def live_state():
    """What a failed apply must leave alone: the live files and the daemons' pids."""
    files = [KEEPALIVED_CONF, HAPROXY_CFG, HOOK_DIR / "minion", *sorted(SCRIPTS.iterdir())]
    return {
        "files": {str(path): digest(path) for path in files},
        "haproxy": pid_of("/run/haproxy.pid"),
        "keepalived": pid_of("/run/keepalived.pid"),
    }


def test_first_apply_succeeds_and_both_daemons_run(deployed):
    ret = deployed.first_apply
    failed = {sid: s["comment"] for sid, s in states(ret).items() if s["result"] is not True}
    assert not failed, failed
    assert ret.returncode == 0, ret.stderr
    assert pid_of("/run/haproxy.pid")
    assert pid_of("/run/keepalived.pid")
    for pkg in ("haproxy", "keepalived"):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, check=False
        )
        assert b"ok installed" in out.stdout


def assert_master_holding_the_alias_ip(netns):
    """keepalived is MASTER, holds the alias IP, and its failover agent runs."""
    state = Path("/run/hcloud_lb/state")
    assert wait_for(lambda: state.exists() and state.read_text().strip() == "MASTER", 20)
    addrs = in_netns(netns, "ip", "-o", "addr", "show", "dev", "ens10").stdout
    assert " 10.231.0.100/32 " in addrs
    # keepalived started the agent on its FIFO; the agent recorded MASTER.
    assert wait_for(agent_pids, 5)


def assert_serving_from_both_backends(netns):
    """The group address answers from both backends in turn, and /healthz answers."""
    bodies = set()
    for _ in range(4):
        status, body = http_get(netns, GROUP_URL)
        assert status == 200, body
        bodies.add(body)
    assert bodies == {"a", "b"}  # roundrobin
    assert http_get(netns, "http://127.0.0.1:8404/healthz")[0] == 200


def test_keepalived_becomes_master_and_holds_the_alias_ip(deployed):
    assert_master_holding_the_alias_ip(deployed.netns)


def test_haproxy_serves_the_group_address_from_both_backends(deployed):
    assert_serving_from_both_backends(deployed.netns)
    status, body = http_get(deployed.netns, "http://127.0.0.1:8405/metrics")
    assert status == 200
    assert "haproxy_" in body


def test_floating_ip_is_on_the_public_interface_now_and_after_reboot(deployed):
    addrs = in_netns(deployed.netns, "ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert " 10.231.1.10/32 " in addrs
    persisted = Path("/etc/network/interfaces.d/60-hcloud-lb-floating-ips.cfg").read_text()
    assert "iface eth0:1 inet static" in persisted
    assert "address 10.231.1.10" in persisted


def test_configs_pass_their_checkers(deployed):
    haproxy = subprocess.run(["haproxy", "-c", "-q", "-f", str(HAPROXY_CFG)], check=False)
    assert haproxy.returncode == 0
    ret = in_netns(deployed.netns, "keepalived", "-t", "-f", str(KEEPALIVED_CONF))
    assert ret.returncode == 0, ret.stderr


def test_secrets_stay_in_root_only_files(deployed, fakecloud_process):
    token = fakecloud_process.cloud.token
    conf = KEEPALIVED_CONF.stat()
    assert (conf.st_uid, stat.S_IMODE(conf.st_mode)) == (0, 0o600)
    text = KEEPALIVED_CONF.read_text()
    assert "auth_pass s3cret-x" in text
    assert "enable_script_security" in text
    assert token not in text
    for script in SCRIPTS.iterdir():
        assert token not in script.read_text()
        assert "s3cret-x" not in script.read_text()
        st = script.stat()
        assert st.st_uid == 0
        assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    for path, mode in ((HOOK_DIR, 0o700), (HOOK_DIR / "minion", 0o600)):
        st = path.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, mode), path
    assert token in (HOOK_DIR / "minion").read_text()
    assert (HOOK_DIR / "_modules" / "hcloud_ip.py").exists()
    assert (HOOK_DIR / "_utils" / "hcloud_failover.py").exists()
    # Neither on a command line.
    emulator = fakecloud_process.process.pid  # started with --token by the test harness
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != emulator:
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            assert token.encode() not in cmdline
            assert b"s3cret-x" not in cmdline


def test_second_apply_and_test_mode_change_nothing(deployed):
    before = live_state()
    ret = deployed.apply()
    assert ret.returncode == 0, ret.stdout
    assert changed(ret) == {}
    ret = deployed.apply(test=True)
    assert ret.returncode == 0, ret.stdout
    assert changed(ret) == {}
    assert all(s["result"] is True for s in states(ret).values())
    assert live_state() == before


def test_the_applied_hook_moves_the_floating_ip_here(deployed, cloud):
    master, _, fip = lab_project(cloud)
    # Run from the host's namespace, where the emulator listens on loopback.
    ret = subprocess.run(
        [str(SCRIPTS / "failover"), "test"], capture_output=True, text=True, timeout=60, check=False
    )
    assert ret.returncode == 0, ret.stderr
    assert cloud.client().floating_ips.get_by_id(fip["id"]).server.id == master["id"]
    server = cloud.client().servers.get_by_id(master["id"])
    assert server.private_net[0].alias_ips == ["10.231.0.100"]
    # The output went to the log (and stderr), never the token.
    assert "failover (test) exited with 0" in ret.stderr
    assert cloud.token not in ret.stderr + ret.stdout


def test_a_config_haproxy_rejects_leaves_haproxy_serving(deployed, fakecloud_process):
    before = live_state()
    pillar = lab_pillar(fakecloud_process.cloud)
    # Validation takes any well-formed user name; haproxy -c refuses one the node lacks.
    pillar["hcloud_lb"]["lookup"]["haproxy"] = {"user": "no-such-haproxy-user"}
    deployed.set_pillar(pillar)
    try:
        ret = deployed.apply()
        assert ret.returncode != 0
        result = states(ret)["haproxy's config is managed"]
        assert result["result"] is False
        assert live_state() == before
        assert http_get(deployed.netns, GROUP_URL)[0] == 200
    finally:
        deployed.set_pillar(lab_pillar(fakecloud_process.cloud))


def test_a_changed_hook_config_gives_keepalived_a_new_agent_and_keeps_its_state(
    deployed, fakecloud_process
):
    # The agent reads its config once, when keepalived starts it: a changed
    # hook config (here its deadline) reloads keepalived, which starts a new
    # agent; keepalived itself and its MASTER state stay.
    assert_master_holding_the_alias_ip(deployed.netns)
    (agent,) = agent_pids()
    keepalived = pid_of("/run/keepalived.pid")
    pillar = lab_pillar(fakecloud_process.cloud)
    pillar["hcloud_lb"]["hook"] = {"deadline": 25}
    deployed.set_pillar(pillar)
    try:
        ret = deployed.apply()
        assert ret.returncode == 0, ret.stdout[-3000:]
        assert wait_for(lambda: len(agent_pids()) == 1 and agent_pids() != [agent], 20), (
            agent_pids()
        )
        assert pid_of("/run/keepalived.pid") == keepalived
        assert Path("/run/hcloud_lb/state").read_text().strip() == "MASTER"
    finally:
        deployed.set_pillar(lab_pillar(fakecloud_process.cloud))
        deployed.apply()


def test_a_changed_config_reloads_haproxy_without_dropping_connections(deployed, fakecloud_process):
    # A TCP connection established before the reload, its request half sent,
    # completes after it: the old process finishes it while the new one
    # takes the listeners.
    code = (
        "import socket, sys\n"
        "s = socket.create_connection(('10.231.1.10', 8081), timeout=20)\n"
        "s.sendall(b'GET / HTTP/1.0\\r\\n')\n"
        "print('connected', flush=True)\n"
        "sys.stdin.readline()\n"
        "s.sendall(b'\\r\\n')\n"
        "data = b''\n"
        "while chunk := s.recv(4096):\n"
        "    data += chunk\n"
        "print(data.split(b'\\r\\n', 1)[0].decode(), flush=True)\n"
    )
    client = subprocess.Popen(
        ["ip", "netns", "exec", deployed.netns, "python3", "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pillar = lab_pillar(fakecloud_process.cloud)
    pillar["hcloud_lb"]["haproxy"]["timeouts"] = {"client": "40s"}
    old_pid = pid_of("/run/haproxy.pid")
    try:
        assert client.stdout.readline().strip() == "connected"
        deployed.set_pillar(pillar)
        ret = deployed.apply("hcloud_lb.haproxy")
        assert ret.returncode == 0, ret.stdout
        assert states(ret)["haproxy is running"]["changes"]
        assert "timeout client 40s" in HAPROXY_CFG.read_text()
        assert wait_for(lambda: pid_of("/run/haproxy.pid") not in (None, old_pid))
        client.stdin.write("\n")
        client.stdin.flush()
        out, err = client.communicate(timeout=30)
        assert out.strip().startswith("HTTP/1.0 200"), err
    finally:
        client.kill()
        client.wait()
        deployed.set_pillar(lab_pillar(fakecloud_process.cloud))
        deployed.apply("hcloud_lb.haproxy")


def _set(pillar, path, value):
    *parents, last = path.split(":")
    node = pillar["hcloud_lb"]
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value


BAD_PILLARS = {
    "hcloud_lb:vrrp:password": ("vrrp:password", "longer-than-8"),
    "hcloud_lb:nodes": ("nodes:lb-master", None),
    "hcloud_lb:groups:web:address": ("groups:web:address", "not-an-address"),
    "hcloud_lb:groups:web:balancers:http:frontend_port": (
        "groups:web:balancers:http:frontend_port",
        70000,
    ),
    "hcloud_lb:groups:web:balancers:http:mode": ("groups:web:balancers:http:mode", "udp"),
    "hcloud_lb:vrrp:virtual_router_id": ("vrrp:virtual_router_id", 300),
    # Two frontends on one address and port: raw moves onto http's 8080.
    "hcloud_lb:groups:web:balancers:raw:frontend_port": (
        "groups:web:balancers:raw:frontend_port",
        8080,
    ),
    "hcloud_lb:groups:web:balancers:http:algorithm": (
        "groups:web:balancers:http:algorithm",
        "fastest",
    ),
    "hcloud_lb:groups:web:balancers:http:backend_servers:a:host": (
        "groups:web:balancers:http:backend_servers:a:host",
        None,
    ),
    # nopreempt with a check that only lowers the master's priority never fails over.
    "hcloud_lb:vrrp:check:weight": (
        "vrrp",
        {
            "interface": "ens10",
            "virtual_router_id": 51,
            "password": "s3cret-x",
            "preempt": False,
            "check": {"weight": -50},
        },
    ),
}


@pytest.mark.parametrize("key", BAD_PILLARS)
def test_an_invalid_pillar_changes_nothing_and_names_the_key(deployed, fakecloud_process, key):
    before = live_state()
    pillar = lab_pillar(fakecloud_process.cloud)
    _set(pillar, *BAD_PILLARS[key])
    deployed.set_pillar(pillar)
    try:
        ret = deployed.apply()
        assert ret.returncode != 0
        result = states(ret)
        assert list(result) == ["hcloud_lb pillar is invalid, nothing was changed"]
        assert key in result["hcloud_lb pillar is invalid, nothing was changed"]["comment"]
        assert live_state() == before
    finally:
        deployed.set_pillar(lab_pillar(fakecloud_process.cloud))


def test_a_missing_token_changes_nothing(deployed, fakecloud_process):
    before = live_state()
    pillar = lab_pillar(fakecloud_process.cloud)
    del pillar["hcloud"]["token"]
    deployed.set_pillar(pillar)
    try:
        ret = deployed.apply("hcloud_lb.hook")
        assert ret.returncode != 0
        assert "hcloud:token" in ret.stdout
        assert live_state() == before
    finally:
        deployed.set_pillar(lab_pillar(fakecloud_process.cloud))
