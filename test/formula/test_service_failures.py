"""
A daemon that fails to start or reload says why in the state run: the
service states are applied for real (``salt-call --local`` in the node's
namespace) while haproxy cannot raise its file descriptor limit, while
another process holds a port haproxy must bind, and while keepalived is given
an option it does not know; each time the state run names the daemon's own
reason, and a load balancer that was running keeps serving. Runs as root.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import SALT_CALL, wait_for

from .conftest import http_get, in_netns, lab_pillar, pid_of, states

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="applies the formula: needs root")

GROUP_URL = "http://10.231.1.10:8080/"
HAPROXY_REASON = "why haproxy failed to start or reload"
KEEPALIVED_REASON = "why keepalived failed to start or reload"


def apply_with_nofile(node, limit, *sls):
    """state.apply in the node's namespace with the open-files limit lowered to ``limit``."""
    argv = ["ip", "netns", "exec", node.netns, "prlimit", f"--nofile={limit}:{limit}"]
    argv += [str(SALT_CALL), "-c", str(node.root), "--local", "--out=json"]
    argv += ["--retcode-passthrough", "state.apply", ",".join(sls)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    proc.data = json.loads(proc.stdout)["local"] if proc.stdout else None
    return proc


def failures(ret):
    """The comments of the states that failed, keyed by state ID."""
    return {sid: s["comment"] for sid, s in states(ret).items() if s["result"] is False}


def stop(netns, service, pidfile):
    in_netns(netns, f"/etc/init.d/{service}", "stop", check=True)
    assert wait_for(lambda: pid_of(pidfile) is None, 10)


@pytest.fixture
def restored(deployed, fakecloud_process):
    """Afterwards the deployment's own pillar is back and the whole formula applied again."""
    yield deployed
    deployed.set_pillar(lab_pillar(fakecloud_process.cloud))
    ret = deployed.apply()
    assert ret.returncode == 0, failures(ret)


def test_haproxy_that_cannot_raise_its_fd_limit_says_so(restored):
    stop(restored.netns, "haproxy", "/run/haproxy.pid")
    # maxconn 2000 needs some 4000 descriptors; the init script's haproxy
    # inherits salt-call's limit of 1024.
    ret = apply_with_nofile(restored, 1024, "hcloud_lb.haproxy")
    assert ret.returncode != 0
    failed = failures(ret)
    assert "haproxy is running" in failed
    assert "Cannot raise FD limit" in failed[HAPROXY_REASON], failed
    assert "limit is 1024" in failed[HAPROXY_REASON]
    assert pid_of("/run/haproxy.pid") is None


def test_test_mode_with_haproxy_stopped_starts_nothing_and_fails_nothing(restored):
    stop(restored.netns, "haproxy", "/run/haproxy.pid")
    ret = restored.apply("hcloud_lb.haproxy", test=True)
    assert ret.returncode == 0, failures(ret)
    result = states(ret)
    assert result["haproxy is running"]["result"] is None
    assert not failures(ret)
    assert all(not s["changes"] for sid, s in result.items() if sid != "haproxy is running")
    assert pid_of("/run/haproxy.pid") is None
    # Applied for real, it starts.
    ret = restored.apply("hcloud_lb.haproxy")
    assert ret.returncode == 0, failures(ret)
    assert pid_of("/run/haproxy.pid")
    assert states(ret)[HAPROXY_REASON]["result"] is True
    assert http_get(restored.netns, GROUP_URL)[0] == 200


def test_a_port_held_by_another_process_is_named_and_haproxy_keeps_serving(
    restored, fakecloud_process
):
    netns = restored.netns
    assert http_get(netns, GROUP_URL)[0] == 200
    old_pid = pid_of("/run/haproxy.pid")
    holder = subprocess.Popen(
        ["ip", "netns", "exec", netns, "python3", "-c", HOLD_PORT, "10.231.1.10", "8090"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "listening"
        pillar = lab_pillar(fakecloud_process.cloud)
        pillar["hcloud_lb"]["groups"]["web"]["balancers"]["busy"] = {
            "mode": "tcp",
            "algorithm": "roundrobin",
            "frontend_port": 8090,
            "backend_servers": {"a": {"host": "127.0.0.1", "port": 18081, "options": "check"}},
        }
        restored.set_pillar(pillar)
        ret = restored.apply("hcloud_lb.haproxy")
        assert ret.returncode != 0
        failed = failures(ret)
        assert "haproxy is running" in failed
        reason = failed[HAPROXY_REASON]
        assert "cannot bind socket (Address already in use)" in reason, failed
        assert "10.231.1.10:8090" in reason
        # The running haproxy is the one from before, and still serves.
        assert pid_of("/run/haproxy.pid") == old_pid
        assert http_get(netns, GROUP_URL)[0] == 200
    finally:
        holder.kill()
        holder.wait()


def test_keepalived_refusing_its_options_says_so(restored):
    # An option this keepalived does not know, as from a defaults file written
    # for another version: the init script's keepalived exits at once.
    netns = restored.netns
    defaults = Path("/etc/default/keepalived")
    saved = defaults.read_bytes()
    stop(netns, "keepalived", "/run/keepalived.pid")
    try:
        defaults.write_text('DAEMON_ARGS="--no-such-option"\n')
        ret = restored.apply("hcloud_lb.keepalived")
        assert ret.returncode != 0
        failed = failures(ret)
        assert "keepalived is running" in failed, failed
        assert "Unknown option --no-such-option" in failed[KEEPALIVED_REASON], failed
        assert "s3cret-x" not in ret.stdout + ret.stderr
        assert pid_of("/run/keepalived.pid") is None
    finally:
        defaults.write_bytes(saved)
    ret = restored.apply("hcloud_lb.keepalived")
    assert ret.returncode == 0, failures(ret)
    assert pid_of("/run/keepalived.pid")


HOLD_PORT = (
    "import socket, sys, time\n"
    "s = socket.socket()\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "s.listen()\n"
    "print('listening', flush=True)\n"
    "time.sleep(600)\n"
)
