"""
The failover agent, hcloud_ip.agent, through the real salt-call, the real
hcloud library and real HTTP against the emulator, fed as keepalived feeds
it: a FIFO held open, one line per VRRP transition, in order.
"""

import fcntl
import os
import signal
import subprocess
import time

import pytest
import yaml

from _utils import hcloud_failover as engine
from helpers import SALT_CALL, wait_for

pytestmark = pytest.mark.salt_call


class Keepalived:
    """keepalived's side of the FIFO: it makes it, keeps it open and writes transitions."""

    def __init__(self, path):
        self.path = path
        os.mkfifo(path, 0o600)
        self.fd = os.open(path, os.O_RDWR)

    def say(self, *states):
        for state in states:
            os.write(self.fd, f'INSTANCE "lb" {state} 100\n'.encode())

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


@pytest.fixture
def project(cloud):
    """lb-master and lb-backup; lb-http and alias 10.0.1.1 on lb-backup."""
    master = cloud.create_server("lb-master")
    backup = cloud.create_server("lb-backup")
    fip = cloud.create_floating_ip("lb-http", server_id=backup["id"])
    net = cloud.create_network("lb-private", ip_range="10.0.0.0/16", subnet="10.0.1.0/24")
    cloud.attach_server(master["id"], net["id"], ip="10.0.1.2")
    cloud.attach_server(backup["id"], net["id"], ip="10.0.1.3", alias_ips=["10.0.1.1"])
    cloud.wait_idle()
    return {"master": master, "backup": backup, "fip": fip, "net": net}


@pytest.fixture
def node(salt_node_factory, cloud, tmp_path, project):
    """
    lb-master, configured as the formula configures the hook, its IDs
    resolved; the metadata service says it is lb-master, as on Hetzner.
    """
    cloud.map_metadata_source("127.0.0.1", project["master"]["id"])
    node = salt_node_factory("lb-master")
    node.run_dir = tmp_path
    node.set_options(
        {
            "token": cloud.token,
            "api_endpoint": cloud.api_url,
            "metadata_endpoint": cloud.metadata_url,
            "failover": {
                "floating_ips": ["lb-http"],
                "alias_ips": {"lb-private": ["10.0.1.1"]},
                "peers": ["lb-backup"],
                "yield_to": [],
                "deadline": 30,
                "reassert_interval": 1,
                "reserve": 300,
                "state_file": str(tmp_path / "state"),
                "lock_file": str(tmp_path / "failover.lock"),
                "id_cache": str(tmp_path / "ids.json"),
            },
        }
    )
    assert node.call("hcloud_ip.resolve").returncode == 0
    return node


def start_agent(node, tmp_path):
    """The agent on a FIFO that the test writes to as keepalived would."""
    keepalived = Keepalived(str(tmp_path / "vrrp.fifo"))
    log = open(tmp_path / "agent.log", "w+")  # noqa: SIM115 (closed by stop_agent)
    argv = [str(SALT_CALL), "-c", str(node.factory.config_dir), "--local", "--out=json"]
    argv += ["--log-level=info", "hcloud_ip.agent", keepalived.path, "lb"]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.keepalived = keepalived
    proc.log = (tmp_path / "agent.log").read_text
    proc.log_file = log
    return proc


def stop_agent(proc):
    proc.keepalived.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.log_file.close()


@pytest.fixture
def agent(node, tmp_path):
    proc = start_agent(node, tmp_path)
    yield proc
    stop_agent(proc)


def state(node):
    path = node.run_dir / "state"
    return path.read_text().strip() if path.exists() else None


def api(cloud):
    """The API requests since the last clear: (time, 'METHOD /path'), polls of actions apart."""
    made = []
    for entry in cloud.requests():
        request = f"{entry['method']} {entry['path'].removeprefix('/v1')}"
        if "/metadata" not in request and request != "GET /actions":
            made.append((entry["time"], request))
    return made


def everything_on(cloud, project, server):
    """Whether lb-http and 10.0.1.1 are on the server (read from the emulator, not its API)."""
    dump = cloud.state()
    me = next(s for s in dump["servers"] if s["id"] == project[server]["id"])
    fip = next(f for f in dump["floating_ips"] if f["id"] == project["fip"]["id"])
    private = next(p for p in me["private_net"] if p["network"] == project["net"]["id"])
    return fip["server"] == me["id"] and "10.0.1.1" in private["alias_ips"]


def test_the_agent_moves_nothing_as_backup_and_everything_on_master(agent, node, cloud, project):
    cloud.clear_requests()
    agent.keepalived.say("BACKUP")
    assert wait_for(lambda: state(node) == "BACKUP", 20), agent.log()
    time.sleep(2)
    assert not [r for _, r in api(cloud) if r.startswith("POST")]

    cloud.clear_requests()
    told = time.time()
    agent.keepalived.say("MASTER")
    assert wait_for(lambda: everything_on(cloud, project, "master"), 20), agent.log()
    assert state(node) == "MASTER"
    made = api(cloud)
    # A process already running: the first assign leaves after one read, of
    # this node's server; the peer's (who holds the alias IP) goes out beside
    # it, and may reach the API first.
    first = next(i for i, (_, r) in enumerate(made) if r.endswith("/actions/assign"))
    me, peer = (f"GET /servers/{project[n]['id']}" for n in ("master", "backup"))
    assert made[0][1] == me, made
    assert {r for _, r in made[1:first]} <= {peer}, made
    assert made[first][0] - told < 1.0, made


def test_a_master_at_rest_re_asserts_with_one_request_each_time(agent, node, cloud, project):
    agent.keepalived.say("MASTER")
    assert wait_for(lambda: everything_on(cloud, project, "master"), 20), agent.log()
    time.sleep(2)  # the failover's last reads
    cloud.clear_requests()
    time.sleep(5.5)
    made = [r for _, r in api(cloud)]
    # Every second (reassert_interval here), one read of this node's server.
    assert 3 <= len(made) <= 7, (made, agent.log()[-3000:])
    assert set(made) == {f"GET /servers/{project['master']['id']}"}, made
    # Nor the metadata service: the agent knows its server once it has read it.
    assert not [e for e in cloud.requests() if "/metadata" in e["path"]]
    assert agent.poll() is None


def test_a_master_at_rest_takes_back_what_the_other_node_took(agent, node, cloud, project):
    agent.keepalived.say("MASTER")
    assert wait_for(lambda: everything_on(cloud, project, "master"), 20), agent.log()
    # The cloud routes lb-http to the backup (a frozen master waking up, a
    # hand on the console): keepalived sees no transition; the re-assert does.
    client = cloud.client()
    fip = client.floating_ips.get_by_id(project["fip"]["id"])
    client.floating_ips.assign(fip, client.servers.get_by_id(project["backup"]["id"]))
    cloud.wait_idle()
    assert wait_for(lambda: everything_on(cloud, project, "master"), 20), agent.log()


def test_a_failover_under_way_stops_when_the_node_leaves_master(agent, node, cloud, project):
    cloud.configure(action_duration=3.0)
    cloud.clear_requests()
    agent.keepalived.say("MASTER")
    assert wait_for(lambda: [r for _, r in api(cloud) if r.startswith("POST")], 20), agent.log()
    agent.keepalived.say("BACKUP")
    assert wait_for(lambda: "stood down (BACKUP)" in agent.log(), 20), agent.log()
    cloud.wait_idle()
    cloud.clear_requests()
    time.sleep(3)
    assert not [r for _, r in api(cloud) if r.startswith("POST")]
    assert state(node) == "BACKUP"


def test_flapping_ends_with_every_address_on_the_final_master(agent, node, cloud, project):
    agent.keepalived.say("MASTER", "BACKUP", "MASTER")
    assert wait_for(lambda: everything_on(cloud, project, "master"), 20), agent.log()
    assert state(node) == "MASTER"
    agent.keepalived.say("BACKUP", "MASTER", "BACKUP")
    assert wait_for(lambda: state(node) == "BACKUP", 20), agent.log()


def test_a_re_assert_claims_everything_until_a_claim_has_succeeded(node, cloud, project, tmp_path):
    # lb-backup outranks this node and holds the addresses: the master that
    # died. The failover on MASTER fails (the API refuses every move past its
    # deadline); the re-assert after it must not leave the addresses to
    # lb-backup as it would once a claim had succeeded.
    options = yaml.safe_load(node.options_file.read_text())["hcloud"]
    options["failover"].update(yield_to=["lb-backup"], deadline=2)
    node.set_options(options)
    cloud.add_fault(
        "/floating_ips/*/actions/assign", count=1000, method="POST", status=423, code="locked"
    )
    cloud.add_fault(
        "/servers/*/actions/change_alias_ips", count=1000, method="POST", status=423, code="locked"
    )
    agent = start_agent(node, tmp_path)
    try:
        agent.keepalived.say("MASTER")
        assert wait_for(lambda: "failover to lb-master FAILED" in agent.log(), 20), agent.log()
        cloud.clear_faults()
        assert wait_for(lambda: everything_on(cloud, project, "master"), 20), agent.log()
    finally:
        stop_agent(agent)


def test_notify_master_waits_for_the_agent_and_finds_the_work_done(agent, node, cloud, project):
    cloud.configure(action_duration=2.0)
    cloud.clear_requests()
    agent.keepalived.say("MASTER")
    assert wait_for(lambda: [r for _, r in api(cloud) if r.startswith("POST")], 20), agent.log()
    ret = node.call("hcloud_ip.failover", f"since={time.time()}")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    entries = [*ret.data["floating_ips"].values(), *ret.data["alias_ips"].values()]
    assert [e.get("comment") for e in entries] == ["already here", "already here"], ret.data
    assert everything_on(cloud, project, "master")


def test_notify_master_without_an_agent_ignores_a_stale_state(node, cloud, project):
    # No agent runs; the state file says BACKUP from before keepalived made
    # this node MASTER: notify_master still moves everything.
    (node.run_dir / "state").write_text("BACKUP\n")
    ret = node.call("hcloud_ip.failover", f"since={time.time()}")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert everything_on(cloud, project, "master")


def test_the_agent_ends_when_keepalived_closes_the_fifo(agent, node):
    agent.keepalived.say("BACKUP")
    assert wait_for(lambda: state(node) == "BACKUP", 20), agent.log()
    agent.keepalived.close()
    assert agent.wait(timeout=10) == 0, agent.log()


def test_the_agent_ends_soon_after_sigterm(agent, node):
    agent.keepalived.say("BACKUP")
    assert wait_for(lambda: state(node) == "BACKUP", 20), agent.log()
    started = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=10) == 0, agent.log()
    assert time.monotonic() - started < 5


def test_a_failover_under_a_nearly_spent_budget_completes_within_its_deadline(
    agent, node, cloud, project
):
    # Three requests left and one more a second: the moves and their reads
    # wait for the bucket, and still end within the 30 s deadline.
    cloud.configure(rate_remaining=3)
    started = time.monotonic()
    agent.keepalived.say("MASTER")
    assert wait_for(lambda: everything_on(cloud, project, "master"), 40), agent.log()
    assert time.monotonic() - started < 30, agent.log()
    assert "FAILED" not in agent.log()


@pytest.mark.parametrize(
    ("remaining", "pause"),
    [(3600, 15), (600, 15), (599, 30), (300, 30), (299, 15), (100, 60), (0, 60)],
)
def test_the_re_assert_paces_itself_by_the_budget(remaining, pause):
    # 3600 an hour refill one a second; a reserve of 300.
    reset = time.time() + (3600 - remaining)
    assert engine._reassert_pause(15, 300, (3600, remaining, reset)) == pytest.approx(pause, abs=1)


def test_the_agent_checks_the_cached_ids_when_it_starts(node, cloud, project, tmp_path):
    # Since the IDs were cached, lb-http was renamed and a new lb-http made:
    # the agent starting (keepalived's start or reload) looks it up again.
    client = cloud.client()
    old = client.floating_ips.get_by_id(project["fip"]["id"])
    client.floating_ips.update(old, name="lb-http-old")
    new = cloud.create_floating_ip("lb-http", server_id=project["backup"]["id"])
    cloud.wait_idle()
    agent = start_agent(node, tmp_path)
    try:
        assert wait_for(lambda: "lb-http" not in (tmp_path / "ids.json").read_text(), 20), (
            agent.log()
        )
        agent.keepalived.say("MASTER")
        dump = lambda: {f["id"]: f["server"] for f in cloud.state()["floating_ips"]}  # noqa: E731
        assert wait_for(lambda: dump()[new["id"]] == project["master"]["id"], 20), agent.log()
        assert dump()[old.id] == project["backup"]["id"]
    finally:
        stop_agent(agent)


def test_notify_master_goes_ahead_after_half_its_deadline_when_a_hung_agent_holds_the_lock(
    node, cloud, project
):
    options = yaml.safe_load(node.options_file.read_text())["hcloud"]
    options["failover"]["deadline"] = 6
    node.set_options(options)
    with open(node.run_dir / "failover.lock", "w") as lock:  # a hung agent's, held for ever
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = time.monotonic()
        ret = node.call("hcloud_ip.failover", f"since={time.time()}")
        took = time.monotonic() - started
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert everything_on(cloud, project, "master")
    # It waited half its deadline (3 s) for the lock, then moved everything
    # within the rest; plus salt-call's own start.
    assert 3 <= took < 6 + 5


def test_notify_master_waits_past_half_its_deadline_for_an_agent_that_shows_signs_of_life(
    node, cloud, project
):
    options = yaml.safe_load(node.options_file.read_text())["hcloud"]
    options["failover"]["deadline"] = 6
    node.set_options(options)
    path = node.run_dir / "failover.lock"
    with open(path, "w") as lock:  # a busy agent's: it touches the file at each answer
        fcntl.flock(lock, fcntl.LOCK_EX)
        call = subprocess.Popen(
            [
                str(SALT_CALL),
                "-c",
                str(node.factory.config_dir),
                "--local",
                "--retcode-passthrough",
                "hcloud_ip.failover",
                f"since={time.time()}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started = time.monotonic()
        while time.monotonic() - started < 5:  # past half the deadline (3 s)
            os.utime(path)
            time.sleep(0.5)
            assert call.poll() is None, call.stdout.read()
    out, _ = call.communicate(timeout=60)
    assert call.returncode == 0, out
    assert "going ahead without it" not in out, out
    assert everything_on(cloud, project, "master")


def test_notify_master_after_the_agent_claimed_checks_as_a_re_assert(
    node, cloud, project, tmp_path
):
    # lb-backup outranks this node. The agent claimed everything for this
    # transition; then lb-backup, MASTER too (a split brain), takes lb-http
    # back. notify_master's failover, running after the agent's claim, must
    # not claim all once more (a tug of war): it leaves lb-http to lb-backup.
    options = yaml.safe_load(node.options_file.read_text())["hcloud"]
    options["failover"]["yield_to"] = ["lb-backup"]
    node.set_options(options)
    agent = start_agent(node, tmp_path)
    try:
        since = time.time()
        agent.keepalived.say("MASTER")
        assert wait_for(lambda: everything_on(cloud, project, "master"), 20), agent.log()
        assert wait_for((tmp_path / "state.claimed").exists, 20), agent.log()
        client = cloud.client()
        fip = client.floating_ips.get_by_id(project["fip"]["id"])
        client.floating_ips.assign(fip, client.servers.get_by_id(project["backup"]["id"]))
        cloud.wait_idle()
        ret = node.call("hcloud_ip.failover", f"since={since}")
        assert ret.returncode == 0, ret.stdout + ret.stderr
        (entry,) = ret.data["floating_ips"].values()
        assert entry["comment"].endswith(
            "held by lb-backup, which outranks this node; left there (re-assert)"
        ), entry
        holder = next(f for f in cloud.state()["floating_ips"] if f["id"] == project["fip"]["id"])
        assert holder["server"] == project["backup"]["id"]
    finally:
        stop_agent(agent)
