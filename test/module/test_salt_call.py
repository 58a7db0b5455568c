"""
hcloud_ip through the real `salt-call --local`, the real hcloud library and
real HTTP against the emulator: what a user (or keepalived's hook) runs.
"""

import collections
import concurrent.futures
import re
import socket
import time

import pytest
from hcloud.servers import Server

from _utils.hcloud_failover import REQUEST_TIMEOUT_FLOOR
from helpers import wait_for

pytestmark = pytest.mark.salt_call


def closed_port_url():
    """An http URL on loopback where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


@pytest.fixture
def node(salt_node_factory, cloud):
    """A node whose server is lb-master, with options pointing at the emulator."""
    node = salt_node_factory("lb-master")
    node.options = {
        "token": cloud.token,
        "api_endpoint": cloud.api_url,
        "metadata_endpoint": cloud.metadata_url,
    }
    node.set_options(node.options)
    return node


@pytest.fixture
def pair(cloud):
    """The seeds' setup: lb-master and lb-backup, lb-http on lb-backup."""
    master = cloud.create_server("lb-master")
    backup = cloud.create_server("lb-backup")
    fip = cloud.create_floating_ip("lb-http", server_id=backup["id"])
    cloud.wait_idle()
    return master, backup, fip


def holder(cloud, fip_id):
    fip = cloud.client().floating_ips.get_by_id(fip_id)
    return fip.server.id if fip.server else None


def assert_one_line_error(ret, *fragments):
    """An expected failure: non-zero exit, a clear message, no traceback."""
    output = ret.stdout + ret.stderr
    assert ret.returncode != 0, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output


# ---------------------------------------------------------------- identity


def test_whoami_uses_hcloud_server_by_name_and_by_id(node, pair):
    _, backup, _ = pair
    node.set_options({**node.options, "server": "lb-backup"})
    ret = node.call("hcloud_ip.whoami")
    assert ret.returncode == 0, ret.stderr
    assert ret.data["name"] == "lb-backup"
    assert ret.data["found_by"] == "hcloud:server"

    node.set_options({**node.options, "server": str(backup["id"])})
    assert node.call("hcloud_ip.whoami").data["id"] == backup["id"]


def test_whoami_asks_the_metadata_service_before_the_minion_id(node, cloud, pair):
    _, backup, _ = pair
    cloud.map_metadata_source("127.0.0.1", backup["id"])
    ret = node.call("hcloud_ip.whoami")
    assert ret.data["name"] == "lb-backup"  # not lb-master, the minion id
    assert ret.data["found_by"] == "metadata instance-id"


def test_whoami_falls_back_to_the_minion_id_off_hetzner(node, pair):
    node.set_options({**node.options, "metadata_endpoint": closed_port_url()})
    ret = node.call("hcloud_ip.whoami")
    assert ret.data["name"] == "lb-master"
    assert ret.data["found_by"] == "minion id"


def test_whoami_says_how_to_fix_an_unknown_server(salt_node_factory, cloud):
    node = salt_node_factory("nobody")
    node.set_options(
        {
            "token": cloud.token,
            "api_endpoint": cloud.api_url,
            "metadata_endpoint": closed_port_url(),
        }
    )
    assert_one_line_error(node.call("hcloud_ip.whoami"), "set hcloud:server", "'nobody'")


# ---------------------------------------------------------------- reading


def test_list_and_describe_by_name_id_and_address(node, cloud, pair):
    _, backup, fip = pair
    v6 = cloud.create_floating_ip("lb-v6", type="ipv6")
    listed = node.call("hcloud_ip.list").data
    assert set(listed) == {"lb-http", "lb-v6"}
    assert listed["lb-http"]["server"] == {"id": backup["id"], "name": "lb-backup"}
    assert listed["lb-v6"]["server"] is None

    for ref in ("lb-http", str(fip["id"]), fip["ip"]):
        assert node.call("hcloud_ip.describe", ref).data["id"] == fip["id"], ref
    # Any address inside an IPv6 floating IP's /64 names it.
    prefix = v6["ip"].split("/")[0]
    assert node.call("hcloud_ip.describe", prefix + "1").data["name"] == "lb-v6"


def test_an_unknown_ip_is_a_one_line_error(node, pair):
    assert_one_line_error(
        node.call("hcloud_ip.describe", "198.51.100.254"), "'198.51.100.254' not found"
    )


# ---------------------------------------------------------------- moving one


def test_assign_moves_waits_and_verifies_then_is_idempotent(node, cloud, pair):
    master, backup, fip = pair
    ret = node.call("hcloud_ip.assign", "lb-http")
    assert ret.returncode == 0, ret.stderr
    assert ret.data["changed"] is True
    assert ret.data["old"]["name"] == "lb-backup"
    assert ret.data["new"]["name"] == "lb-master"
    assert holder(cloud, fip["id"]) == master["id"]

    again = node.call("hcloud_ip.assign", "lb-http")
    assert again.data["changed"] is False
    assert holder(cloud, fip["id"]) == master["id"]

    back = node.call("hcloud_ip.assign", fip["ip"], "server=lb-backup")
    assert back.data["new"]["name"] == "lb-backup"
    assert holder(cloud, fip["id"]) == backup["id"]


def test_unassign_leaves_the_ip_on_no_server(node, cloud, pair):
    _, _, fip = pair
    ret = node.call("hcloud_ip.unassign", "lb-http")
    assert ret.data["changed"] is True
    assert ret.data["new"] is None
    assert holder(cloud, fip["id"]) is None


def test_ipv6_floating_ip_moves_by_any_address_in_its_prefix(node, cloud, pair):
    master, _, _ = pair
    v6 = cloud.create_floating_ip("lb-v6", type="ipv6")
    address = v6["ip"].split("/")[0] + "10"
    ret = node.call("hcloud_ip.assign", address)
    assert ret.returncode == 0, ret.stderr
    assert holder(cloud, v6["id"]) == master["id"]


# ---------------------------------------------------------------- alias IPs


@pytest.fixture
def private_net(cloud, pair):
    master, backup, _ = pair
    net = cloud.create_network("lb-private", ip_range="10.0.0.0/16", subnet="10.0.1.0/24")
    cloud.attach_server(master["id"], net["id"], ip="10.0.1.2", alias_ips=["10.0.1.50"])
    cloud.attach_server(backup["id"], net["id"], ip="10.0.1.3", alias_ips=["10.0.1.1", "10.0.1.60"])
    cloud.wait_idle()
    return net


def aliases(cloud, server_id, network_id):
    server = cloud.client().servers.get_by_id(server_id)
    return next(sorted(p.alias_ips) for p in server.private_net if p.network.id == network_id)


def test_alias_ips_reads_then_takes_the_ip_keeping_other_aliases(node, cloud, pair, private_net):
    master, backup, _ = pair
    read = node.call("hcloud_ip.alias_ips", "lb-private")
    assert read.data["alias_ips"] == ["10.0.1.50"]

    ret = node.call("hcloud_ip.alias_ips", "lb-private", "ips=10.0.1.1")
    assert ret.returncode == 0, ret.stderr
    assert ret.data["changed"] is True
    assert ret.data["old"] == {"10.0.1.1": "lb-backup"}
    assert ret.data["new"] == {"10.0.1.1": "lb-master"}
    assert aliases(cloud, master["id"], private_net["id"]) == ["10.0.1.1", "10.0.1.50"]
    assert aliases(cloud, backup["id"], private_net["id"]) == ["10.0.1.60"]

    again = node.call("hcloud_ip.alias_ips", "lb-private", "ips=10.0.1.1")
    assert again.data["changed"] is False


def test_alias_ip_outside_the_network_is_refused_before_any_change(node, cloud, private_net):
    cloud.clear_requests()
    ret = node.call("hcloud_ip.alias_ips", "lb-private", "ips=192.0.2.1")
    assert_one_line_error(ret, "192.0.2.1 is outside network lb-private")
    assert not [r for r in cloud.requests() if r["method"] != "GET"]


# ---------------------------------------------------------------- failover


@pytest.fixture
def many_ips(cloud, pair):
    """16 floating IPs (two of them IPv6) on lb-backup, as after a failover to it."""
    _, backup, _ = pair
    fips = [cloud.create_floating_ip(f"web-{n}", server_id=backup["id"]) for n in range(14)]
    fips += [
        cloud.create_floating_ip(f"v6-{n}", type="ipv6", server_id=backup["id"]) for n in range(2)
    ]
    cloud.wait_idle()
    return fips


def test_failover_moves_many_ips_and_the_alias_at_once(node, cloud, pair, private_net, many_ips):
    master, _, _ = pair
    node.set_options(
        {
            **node.options,
            "failover": {
                "floating_ips": [f["name"] for f in many_ips],
                "alias_ips": {"lb-private": ["10.0.1.1"]},
            },
        }
    )
    cloud.configure(action_duration=1.0)
    cloud.clear_requests()
    ret = node.call("hcloud_ip.failover")
    made = cloud.requests()
    assert ret.returncode == 0, ret.stdout + ret.stderr
    report = ret.data
    assert report["result"] is True
    assert len(report["floating_ips"]) == 16
    assert all(entry["moved"] for entry in report["floating_ips"].values())
    for fip in many_ips:
        assert holder(cloud, fip["id"]) == master["id"], fip["name"]
    assert "10.0.1.1" in aliases(cloud, master["id"], private_net["id"])

    # All at once: 16 one-second actions would take 16 s one after another.
    assert report["seconds"] < 8
    assigns = [r for r in made if r["path"].endswith("/actions/assign")]
    assert len(assigns) == 16
    # Bounded: one request per move plus a handful of reads and batched polls,
    # and (no ID cache here) one lookup per floating IP's name.
    calls = collections.Counter(f"{r['method']} {r['path']}" for r in made)
    assert calls["GET /v1/floating_ips"] == 16, calls
    assert len(made) < 16 + 16 + 2 + 30, calls


def test_failover_skips_what_is_already_here(node, cloud, pair):
    master, _, fip = pair
    node.set_options({**node.options, "failover": {"floating_ips": ["lb-http"]}})
    assert node.call("hcloud_ip.failover").data["result"] is True
    cloud.clear_requests()
    ret = node.call("hcloud_ip.failover")
    assert ret.returncode == 0
    assert ret.data["floating_ips"][f"lb-http ({fip['ip']})"]["comment"] == "already here"
    assert not [r for r in cloud.requests() if r["method"] == "POST"]
    assert holder(cloud, fip["id"]) == master["id"]


def test_failover_reports_an_unknown_ip_and_still_moves_the_rest(node, cloud, pair):
    master, _, fip = pair
    node.set_options({**node.options, "failover": {"floating_ips": ["lb-http", "lb-gone"]}})
    ret = node.call("hcloud_ip.failover")
    assert ret.returncode == 1
    assert ret.data["result"] is False
    assert "not found" in ret.data["floating_ips"]["lb-gone"]["error"]
    assert holder(cloud, fip["id"]) == master["id"]


def test_failover_without_a_list_says_where_to_put_one(node, pair):
    assert_one_line_error(node.call("hcloud_ip.failover"), "hcloud:failover:floating_ips")


# ---------------------------------------------------------------- re-assert in a split brain


def reassert_outranked_by_the_backup(node, cloud):
    """Re-assert lb-http and alias 10.0.1.1 on lb-master, which lb-backup outranks."""
    node.set_options(
        {
            **node.options,
            "failover": {
                "floating_ips": ["lb-http"],
                "alias_ips": {"lb-private": ["10.0.1.1"]},
                "yield_to": ["lb-backup"],
            },
        }
    )
    cloud.clear_requests()
    ret = node.call("hcloud_ip.failover", "reassert=True")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    return ret


@pytest.mark.parametrize("with_alias", [False, True], ids=["floating-ip", "and-alias-ip"])
def test_the_api_requests_a_reassert_costs_when_everything_is_here(
    node, cloud, private_net, with_alias, tmp_path
):
    # The re-assert runs every hook:reassert_interval seconds for as long as
    # the node is MASTER, out of the project's 3600 requests an hour: the
    # README gives this figure. With the IDs cached (as the formula has it),
    # it reads this node's server, and nothing else when everything is here.
    failover = {"floating_ips": ["lb-http"], "id_cache": str(tmp_path / "ids.json")}
    if with_alias:
        failover["alias_ips"] = {"lb-private": ["10.0.1.1"]}
    expected = [f"servers/{cloud.client().servers.get_by_name('lb-master').id}"]
    node.set_options({**node.options, "failover": failover})
    assert node.call("hcloud_ip.failover").data["result"] is True
    cloud.clear_requests()
    ret = node.call("hcloud_ip.failover", "reassert=True")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    api = [r for r in cloud.requests() if r["path"].startswith("/v1/")]
    assert {r["method"] for r in api} == {"GET"}
    assert sorted(r["path"].removeprefix("/v1/") for r in api) == expected


def test_a_reassert_leaves_what_an_outranking_peer_holds(node, cloud, pair, private_net):
    master, backup, fip = pair
    ret = reassert_outranked_by_the_backup(node, cloud)
    assert ret.data["result"] is True
    left = "held by lb-backup, which outranks this node; left there (re-assert)"
    assert ret.data["floating_ips"][f"lb-http ({fip['ip']})"]["comment"] == f"{fip['ip']} {left}"
    assert ret.data["alias_ips"]["10.0.1.1 in lb-private"]["comment"] == f"10.0.1.1 {left}"
    assert not [r for r in cloud.requests() if r["method"] != "GET"]
    assert holder(cloud, fip["id"]) == backup["id"]
    assert "10.0.1.1" in aliases(cloud, backup["id"], private_net["id"])

    # notify_master, a transition to MASTER, claims whoever holds them.
    ret = node.call("hcloud_ip.failover")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert holder(cloud, fip["id"]) == master["id"]
    assert "10.0.1.1" in aliases(cloud, master["id"], private_net["id"])


@pytest.mark.parametrize("yield_to", [[], ["lb-gone"]], ids=["top-node", "unknown-peer"])
def test_a_reassert_takes_back_what_a_peer_it_outranks_holds(node, cloud, pair, yield_to):
    # The freeze case: the backup took over from a frozen master, which wakes up
    # still MASTER; keepalived does not call notify_master again.
    master, _, fip = pair
    node.set_options(
        {**node.options, "failover": {"floating_ips": ["lb-http"], "yield_to": yield_to}}
    )
    ret = node.call("-l", "warning", "hcloud_ip.failover", "reassert=True")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert ret.data["floating_ips"][f"lb-http ({fip['ip']})"]["moved"] is True
    assert holder(cloud, fip["id"]) == master["id"]
    warning = "hcloud:failover:yield_to names no server of this project: 'lb-gone'"
    assert (warning in ret.stderr) is bool(yield_to)


# ---------------------------------------------------------------- leaving MASTER


@pytest.fixture
def vrrp_state(node, tmp_path):
    """The file keepalived's notify script keeps, named as the formula's hook config does."""
    state = tmp_path / "state"
    state.write_text("MASTER\n")
    node.set_options(
        {
            **node.options,
            "failover": {
                "floating_ips": ["lb-http"],
                "alias_ips": {"lb-private": ["10.0.1.1"]},
                "state_file": str(state),
            },
        }
    )
    return state


def test_a_node_that_is_not_master_moves_nothing(node, cloud, pair, private_net, vrrp_state):
    _, backup, fip = pair
    vrrp_state.write_text("BACKUP\n")
    cloud.clear_requests()
    ret = node.call("hcloud_ip.failover")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert ret.data["stood_down"] == "BACKUP"
    entry = ret.data["floating_ips"][f"lb-http ({fip['ip']})"]
    assert entry["moved"] is False
    assert entry["comment"] == "left where it is: this node became BACKUP meanwhile"
    assert not [r for r in cloud.requests() if r["method"] != "GET"]
    assert holder(cloud, fip["id"]) == backup["id"]
    assert "10.0.1.1" in aliases(cloud, backup["id"], private_net["id"])


def test_a_failover_stops_when_its_node_leaves_master(node, cloud, pair, private_net, vrrp_state):
    # Taking an alias IP takes two rounds: release it from lb-backup, then claim
    # it. The node goes FAULT while the first round's actions run.
    master, _, fip = pair
    cloud.configure(action_duration=2.0)
    cloud.clear_requests()

    def alias_changes():
        return [r for r in cloud.requests() if r["path"].endswith("/change_alias_ips")]

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(node.call, "-l", "warning", "hcloud_ip.failover")
        assert wait_for(alias_changes, 60), cloud.requests()
        vrrp_state.write_text("FAULT\n")
        ret = running.result(timeout=120)
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert ret.data["stood_down"] == "FAULT"
    # The floating IP's move was under way and completed; the claim was never sent.
    assert holder(cloud, fip["id"]) == master["id"]
    assert len(alias_changes()) == 1
    assert "10.0.1.1" not in aliases(cloud, master["id"], private_net["id"])
    alias = ret.data["alias_ips"]["10.0.1.1 in lb-private"]
    assert alias["comment"] == "left where it is: this node became FAULT meanwhile"
    assert "this node is FAULT now, no longer MASTER: failover stopped" in ret.stderr


@pytest.mark.parametrize("outranked", [False, True], ids=["mover-ranks-lower", "mover-outranks"])
def test_a_failover_waits_out_a_move_another_node_has_under_way(node, cloud, pair, outranked):
    # lb-http is on lb-master, but lb-backup is moving it away: its failover,
    # still running after it lost mastership (it preempted, then went FAULT).
    # "Already here" would be undone a moment later: wait for it, then take it
    # back. Even when lb-backup outranks this node: it took nothing this run
    # had moved, so nothing says it is MASTER.
    master, backup, fip = pair
    failover = {"floating_ips": ["lb-http"], "deadline": 30}
    if outranked:
        failover["yield_to"] = ["lb-backup"]
    node.set_options({**node.options, "failover": failover})
    client = cloud.client()
    lb_http = client.floating_ips.get_by_id(fip["id"])
    client.floating_ips.assign(lb_http, Server(id=master["id"]))
    cloud.wait_idle()
    # Long enough to be still running when salt-call, started after it, reads;
    # the failover's own move is quick again.
    cloud.configure(action_duration=10.0)
    client.floating_ips.assign(lb_http, Server(id=backup["id"]))
    cloud.configure(action_duration=0.2)
    cloud.clear_requests()
    ret = node.call("-l", "warning", "hcloud_ip.failover")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert "waiting for assign_floating_ip of lb-http" in ret.stderr
    assert ret.data["floating_ips"][f"lb-http ({fip['ip']})"]["moved"] is True
    assert holder(cloud, fip["id"]) == master["id"]
    posts = [r for r in cloud.requests() if r["method"] == "POST"]
    assert len(posts) == 1, (posts, ret.stderr)


def test_a_failover_reads_again_after_finding_no_move_under_way(node, cloud, pair):
    # lb-http is on lb-master by the failover's read, and lb-backup's move of
    # it runs and finishes before the failover asks for moves under way, which
    # answers "none". The read is stale: "already here" would leave lb-http on
    # lb-backup. The check is slowed down so that the move fits in between.
    master, backup, fip = pair
    node.set_options({**node.options, "failover": {"floating_ips": ["lb-http"], "deadline": 30}})
    client = cloud.client()
    lb_http = client.floating_ips.get_by_id(fip["id"])
    client.floating_ips.assign(lb_http, Server(id=master["id"]))
    cloud.wait_idle()
    cloud.add_fault("/floating_ips/actions", method="GET", latency=5.0)
    cloud.clear_requests()
    since = cloud.events()["last"]

    def read_by_the_failover():
        return [r for r in cloud.requests() if r["path"] == "/v1/floating_ips"]

    def move_away_once_read():
        assert wait_for(read_by_the_failover, 60)
        client.floating_ips.assign(lb_http, Server(id=backup["id"]))
        cloud.wait_idle()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        peer = pool.submit(move_away_once_read)
        ret = node.call("-l", "warning", "hcloud_ip.failover")
        peer.result(timeout=60)
    assert ret.returncode == 0, ret.stdout + ret.stderr
    listing = next(r for r in cloud.requests() if r["path"] == "/v1/floating_ips/actions")
    moves = cloud.events(since=since)["events"]
    assert [e["new_server_id"] for e in moves] == [backup["id"], master["id"]]
    assert moves[0]["time"] < listing["time"] + listing["duration"], "moved after the check"
    assert ret.data["floating_ips"][f"lb-http ({fip['ip']})"]["moved"] is True
    assert holder(cloud, fip["id"]) == master["id"]


def test_notify_master_leaves_what_an_outranking_peer_takes_back_after_its_move(node, cloud, pair):
    # Split brain seen from below: this node's notify_master moves lb-http
    # here, then lb-backup, which outranks it and is MASTER too, re-asserts and
    # takes it back. Claiming it again would pull it to and fro until the
    # deadline. The check for moves under way is slowed down so that lb-backup's
    # move is sure to run by then.
    master, backup, fip = pair
    failover = {"floating_ips": ["lb-http"], "deadline": 30, "yield_to": ["lb-backup"]}
    node.set_options({**node.options, "failover": failover})
    cloud.add_fault("/floating_ips/actions", method="GET", latency=2.0)
    client = cloud.client()
    since = cloud.events()["last"]

    def take_back_once_moved_here():
        arrived = cloud.events(since=since, timeout=60)["events"]
        assert [e["new_server_id"] for e in arrived] == [master["id"]]
        cloud.configure(action_duration=5.0)
        client.floating_ips.assign(client.floating_ips.get_by_id(fip["id"]), Server(backup["id"]))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        peer = pool.submit(take_back_once_moved_here)
        ret = node.call("-l", "warning", "hcloud_ip.failover")
        peer.result(timeout=60)
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert "waiting for assign_floating_ip of lb-http" in ret.stderr
    assert ret.data["floating_ips"][f"lb-http ({fip['ip']})"]["comment"] == (
        f"{fip['ip']} held by lb-backup, which outranks this node and took back what this run "
        "moved; left there (split brain)"
    )
    assert holder(cloud, fip["id"]) == backup["id"]
    assigns = [r for r in cloud.requests() if r["path"].endswith("/actions/assign")]
    assert len(assigns) == 2  # this node's, then lb-backup's; none after


def test_a_reassert_leaves_an_alias_ip_an_outranking_peer_has_released_to_claim_it(
    node, cloud, pair, private_net
):
    # Split brain: lb-backup outranks this node and re-asserts. It holds
    # lb-http and has released the alias IP from this node, to claim it in its
    # next round; claiming it here meanwhile would start a tug of war.
    master, backup, _ = pair
    client = cloud.client()
    network = client.networks.get_by_id(private_net["id"])
    client.servers.change_alias_ips(Server(id=backup["id"]), network, ["10.0.1.60"])
    cloud.wait_idle()
    ret = reassert_outranked_by_the_backup(node, cloud)
    assert ret.data["alias_ips"]["10.0.1.1 in lb-private"]["comment"] == (
        "10.0.1.1 on no server while lb-backup, which outranks this node, takes the addresses; "
        "left for it (re-assert)"
    )
    assert not [r for r in cloud.requests() if r["method"] != "GET"]
    assert "10.0.1.1" not in aliases(cloud, master["id"], private_net["id"])


# ---------------------------------------------------------------- faults


@pytest.fixture
def failover_node(node, pair):
    # Kept in node.options, so that a test changing another option keeps it.
    node.options = {**node.options, "failover": {"floating_ips": ["lb-http"], "deadline": 30}}
    node.set_options(node.options)
    return node


@pytest.mark.parametrize(
    "fault",
    [
        {"status": 423, "code": "locked", "message": "resource is locked"},
        {"status": 409, "code": "conflict", "message": "conflict"},
        {"status": 503, "code": "unavailable", "message": "service unavailable"},
        {"status": 500, "code": "server_error", "message": "oops"},
        {"drop": True},
    ],
    ids=["locked", "conflict", "503", "500", "dropped-connection"],
)
def test_failover_retries_transient_faults_on_assign(failover_node, cloud, pair, fault):
    master, _, fip = pair
    cloud.add_fault("/floating_ips/*/actions/assign", count=3, method="POST", **fault)
    ret = failover_node.call("hcloud_ip.failover")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert holder(cloud, fip["id"]) == master["id"]
    assigns = [r for r in cloud.requests() if r["path"].endswith("/actions/assign")]
    assert len(assigns) == 4  # three faults, then the one that worked


def test_failover_retries_a_locked_assign_from_an_outranking_peer_that_died(
    failover_node, cloud, pair
):
    # lb-backup outranks this node and holds lb-http: it is the master that
    # died. Still holding it after a failed assign says nothing about it
    # being alive, so the failover keeps claiming.
    master, _, fip = pair
    failover = {"floating_ips": ["lb-http"], "deadline": 30, "yield_to": ["lb-backup"]}
    failover_node.set_options({**failover_node.options, "failover": failover})
    cloud.add_fault(
        "/floating_ips/*/actions/assign", count=3, method="POST", status=423, code="locked"
    )
    ret = failover_node.call("hcloud_ip.failover")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert ret.data["floating_ips"][f"lb-http ({fip['ip']})"]["moved"] is True
    assert holder(cloud, fip["id"]) == master["id"]


def test_failover_retries_faults_while_reading(failover_node, cloud, pair):
    master, _, fip = pair
    cloud.add_fault("/floating_ips", count=2, method="GET", status=502, code="bad_gateway")
    cloud.add_fault("/actions", count=2, method="GET", drop=True)
    ret = failover_node.call("hcloud_ip.failover")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert holder(cloud, fip["id"]) == master["id"]


def test_failover_waits_out_the_rate_limit(failover_node, cloud, pair):
    master, _, fip = pair
    cloud.configure(rate_remaining=0)
    ret = failover_node.call("hcloud_ip.failover")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert holder(cloud, fip["id"]) == master["id"]
    assert any(r["status"] == 429 for r in cloud.requests())


def test_failover_times_out_a_hanging_request_and_retries(failover_node, cloud, pair):
    master, _, fip = pair
    failover_node.set_options(
        {**failover_node.options, "request_timeout": 1, "failover": {"floating_ips": ["lb-http"]}}
    )
    cloud.add_fault("/floating_ips/*/actions/assign", count=1, method="POST", latency=3)
    ret = failover_node.call("hcloud_ip.failover")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert holder(cloud, fip["id"]) == master["id"]
    # The emulator still carries out the hung assign when its latency is over:
    # let that happen in this test, not in the next one's project.
    assert wait_for(lambda: [r for r in cloud.requests() if r["fault"]], timeout=10)


def api_requests(cloud, since=0):
    return [r for r in cloud.requests() if r["path"].startswith("/v1/") and r["time"] >= since]


# What salt-call may take, beyond the failover's deadline and the floor of the
# last request's timeout, to print and exit.
EXIT_MARGIN = 2.0


def test_a_failover_whose_api_hangs_ends_at_its_deadline(failover_node, cloud, pair):
    # Every API request hangs for longer than request_timeout. The first one,
    # finding this node's server, may only wait for what the deadline leaves.
    _, backup, fip = pair
    failover = {"floating_ips": ["lb-http"], "deadline": 2}
    failover_node.set_options(
        {
            **failover_node.options,
            "server": "lb-master",
            "request_timeout": 10,
            "failover": failover,
        }
    )
    cloud.add_fault("/*", count=100, latency=11)
    started = time.time()
    ret = failover_node.call("hcloud_ip.failover")
    ended = time.time()
    lines = [line for line in (ret.stdout + ret.stderr).splitlines() if line.strip()]
    assert ret.returncode == 1, lines
    assert lines == [
        "Error running 'hcloud_ip.failover': looking up server (hcloud:server) 'lb-master': "
        "the API did not answer in time (ReadTimeout)"
    ]
    # The emulator logs the hung request, with the time it came in, once it answers.
    hung = wait_for(lambda: api_requests(cloud, since=started), timeout=20)
    assert [(r["path"], r["query"]) for r in hung] == [("/v1/servers", "name=lb-master")], hung
    assert ended - hung[0]["time"] < 2 + REQUEST_TIMEOUT_FLOOR + EXIT_MARGIN
    assert holder(cloud, fip["id"]) == backup["id"]


def test_a_request_sent_a_second_before_the_deadline_waits_only_that_second(
    failover_node, cloud, pair
):
    # The first read takes 1.8 s of the 3 s deadline; lb-http's assign is
    # quick, then the poll for its action hangs. It may wait the second or so
    # left, not request_timeout's 10 s. The action completes meanwhile, and the
    # read after the deadline (given REQUEST_TIMEOUT_FLOOR) still sees it.
    master, _, fip = pair
    failover = {"floating_ips": ["lb-http"], "deadline": 3}
    failover_node.set_options(
        {
            **failover_node.options,
            "server": "lb-master",
            "request_timeout": 10,
            "failover": failover,
        }
    )
    cloud.add_fault("/floating_ips", count=1, method="GET", latency=1.8)
    cloud.add_fault("/actions", count=100, method="GET", latency=11)
    started = time.time()
    ret = failover_node.call("-l", "warning", "hcloud_ip.failover")
    ended = time.time()
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert ret.data["floating_ips"][f"lb-http ({fip['ip']})"]["moved"] is True
    assert holder(cloud, fip["id"]) == master["id"]
    assert "polling actions: the API did not answer in time (ReadTimeout)" in ret.stderr

    def polls():
        return [r for r in api_requests(cloud, since=started) if r["path"] == "/v1/actions"]

    assert len(wait_for(polls, timeout=20)) == 1
    first = min(api_requests(cloud, since=started), key=lambda r: r["time"])
    left = 3 - (polls()[0]["time"] - first["time"])
    assert 0.5 < left < 1.5, "the poll was not sent about a second before the deadline"
    assert ended - first["time"] < 3 + REQUEST_TIMEOUT_FLOOR + EXIT_MARGIN


def test_failover_waits_for_slow_actions(failover_node, cloud, pair):
    master, _, fip = pair
    cloud.configure(action_duration=3.0)
    ret = failover_node.call("hcloud_ip.failover")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert ret.data["seconds"] >= 3.0
    assert holder(cloud, fip["id"]) == master["id"]


def test_failover_reports_actions_that_keep_failing(failover_node, cloud, pair):
    _, backup, fip = pair
    cloud.configure(action_result="error")
    ret = failover_node.call("hcloud_ip.failover", "deadline=3")
    assert ret.returncode == 1
    entry = ret.data["floating_ips"][f"lb-http ({fip['ip']})"]
    assert entry["result"] is False
    assert "within 3s" in entry["error"]
    assert holder(cloud, fip["id"]) == backup["id"]


def test_failover_with_the_api_down_past_the_deadline(failover_node):
    failover_node.set_options(
        {**failover_node.options, "api_endpoint": closed_port_url(), "server": "lb-master"}
    )
    ret = failover_node.call("hcloud_ip.failover", "deadline=2")
    assert_one_line_error(ret, "cannot reach the API")


def test_a_bad_token_is_a_one_line_error(failover_node):
    failover_node.set_options({**failover_node.options, "token": "not-the-token"})
    assert_one_line_error(failover_node.call("hcloud_ip.failover"), "refused the token")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("\u00e4", "hcloud:token is not ASCII (character 11)"),
        ("\u20ac", "hcloud:token is not ASCII (character 11)"),
        ("\n", "hcloud:token is not printable ASCII (character 11 is a line break)"),
    ],
    ids=["umlaut", "euro", "newline"],
)
def test_a_token_that_is_no_printable_ascii_is_one_line_never_showing_it(
    failover_node, cloud, pair, bad, message
):
    _, backup, fip = pair
    head, tail = cloud.token[:10], cloud.token[10:]
    failover_node.set_options({**failover_node.options, "token": head + bad + tail})
    started = time.time()
    ret = failover_node.call("hcloud_ip.failover")
    assert_refused(ret, "failover", message)
    assert_refused_before_any_request(cloud, fip, backup, since=started)
    # The node's log file takes every level.
    with open(failover_node.factory.config["log_file"], encoding="utf-8") as handle:
        logged = handle.read()
    for text in (ret.stdout, ret.stderr, logged):
        assert head not in text
        assert tail not in text


def test_a_missing_token_names_the_option(salt_node_factory, cloud):
    node = salt_node_factory("lb-master")
    node.set_options({"api_endpoint": cloud.api_url})
    assert_one_line_error(node.call("hcloud_ip.list"), "hcloud:token is not set")


# ---------------------------------------------------------------- refused input


def assert_refused(ret, function, message):
    """
    A refused argument or option, as a user sees it: exit code 1 and one line
    naming the function and what is wrong; no usage text, no traceback.
    """
    lines = [line for line in (ret.stdout + ret.stderr).splitlines() if line.strip()]
    assert ret.returncode == 1, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"Error running 'hcloud_ip.{function}': "), lines
    assert message in lines[0], lines


# How salt-call hands each over: deadline=abc is the string, deadline=.inf the
# float inf, deadline=True the bool; "inf", "2_000" and "1e3" stay strings.
BAD_SECONDS = [
    "abc",
    "inf",
    ".inf",
    "nan",
    ".nan",
    "-.inf",
    "0",
    "-5",
    "True",
    "2_000",
    "٣٠",
    "1e3",
]


def assert_refused_before_any_request(cloud, fip, backup, since):
    assert api_requests(cloud, since) == []
    assert holder(cloud, fip["id"]) == backup["id"]


@pytest.mark.parametrize("value", BAD_SECONDS)
def test_a_failover_deadline_that_is_no_plain_positive_number_is_refused_in_one_line(
    failover_node, cloud, pair, value
):
    _, backup, fip = pair
    started = time.time()
    ret = failover_node.call("hcloud_ip.failover", f"deadline={value}")
    assert_refused(ret, "failover", "deadline must be a number of seconds greater than 0")
    assert_refused_before_any_request(cloud, fip, backup, since=started)


@pytest.mark.parametrize(
    "call", [["assign", "lb-http"], ["unassign", "lb-http"], ["alias_ips", "lb-private"]]
)
def test_every_deadline_argument_is_checked_alike(failover_node, cloud, pair, call):
    _, backup, fip = pair
    started = time.time()
    ret = failover_node.call(f"hcloud_ip.{call[0]}", *call[1:], "deadline=inf")
    assert_refused(ret, call[0], "deadline must be a number of seconds greater than 0")
    assert_refused_before_any_request(cloud, fip, backup, since=started)


# YAML in the minion config: floats inf and nan, strings, a bool, numbers <= 0.
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("failover:deadline", float("inf")),
        ("failover:deadline", float("nan")),
        ("failover:deadline", " 30"),
        ("failover:deadline", "٣٠"),
        ("failover:deadline", True),
        ("failover:deadline", 0),
        ("request_timeout", float("inf")),
        ("request_timeout", "nan"),
        ("request_timeout", "5s"),
        ("request_timeout", -1),
    ],
    ids=repr,
)
def test_a_deadline_or_timeout_option_that_is_no_plain_positive_number_is_refused_in_one_line(
    failover_node, cloud, pair, option, value
):
    _, backup, fip = pair
    options = {**failover_node.options, "failover": {"floating_ips": ["lb-http"]}}
    if option == "request_timeout":
        options["request_timeout"] = value
    else:
        options["failover"]["deadline"] = value
    failover_node.set_options(options)
    started = time.time()
    ret = failover_node.call("hcloud_ip.failover")
    assert_refused(ret, "failover", f"hcloud:{option} must be a number of seconds greater than 0")
    assert_refused_before_any_request(cloud, fip, backup, since=started)


def test_a_deadline_of_a_plain_decimal_string_is_taken(failover_node, cloud, pair):
    master, _, fip = pair
    ret = failover_node.call("hcloud_ip.failover", "deadline='12.5'")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert holder(cloud, fip["id"]) == master["id"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["assign"], "missing a required argument: 'ip'"),
        (["whoami", "lb-master"], "too many positional arguments"),
        (["assign", "lb-http", "server=[lb-backup]"], "server must be the name or ID of a server"),
        (["describe", "[lb-http]"], "ip must be the name, ID or address of a floating IP"),
        (["failover", "reassert=maybe"], "reassert must be True or False, got 'maybe'"),
        (["failover", "floating_ips=1.5"], "floating_ips must be a list (or a comma-separated"),
        (["failover", "alias_ips=10.0.1.1"], "alias_ips must map a network name or ID to a list"),
        (["alias_ips", "lb-private", "ips={a: 1}"], "ips must be a list (or a comma-separated"),
        (["create", "lb-new", "type=ipv5", "home_location=nbg1"], "type must be ipv4 or ipv6"),
        (["create", "lb-new"], "home_location is required"),
        (["update", "lb-http", "labels=lb"], "labels must be a mapping of label names to values"),
    ],
    ids=lambda value: " ".join(value) if isinstance(value, list) else None,
)
def test_a_bad_argument_is_refused_in_one_line_naming_it(failover_node, cloud, pair, args, message):
    _, backup, fip = pair
    started = time.time()
    ret = failover_node.call(f"hcloud_ip.{args[0]}", *args[1:])
    assert_refused(ret, args[0], message)
    assert_refused_before_any_request(cloud, fip, backup, since=started)


FAILOVER = {"floating_ips": ["lb-http"]}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"failover": "lb-http"}, "hcloud:failover must be a mapping"),
        ({"failover": {"floating_ips": {"lb-http": 1}}}, "hcloud:failover:floating_ips must be a"),
        ({"failover": {"alias_ips": ["10.0.1.1"]}}, "hcloud:failover:alias_ips must map a"),
        ({"failover": {**FAILOVER, "yield_to": [["lb-backup"]]}}, "hcloud:failover:yield_to must"),
        ({"failover": {**FAILOVER, "state_file": 5}}, "hcloud:failover:state_file must be a file"),
        ({"failover": FAILOVER, "api_endpoint": 5}, "hcloud:api_endpoint must be a string, got 5"),
    ],
    ids=["failover", "floating_ips", "alias_ips", "yield_to", "state_file", "api_endpoint"],
)
def test_a_bad_option_is_refused_in_one_line_naming_it(
    failover_node, cloud, pair, setting, message
):
    _, backup, fip = pair
    failover_node.set_options({**failover_node.options, **setting})
    started = time.time()
    ret = failover_node.call("hcloud_ip.failover")
    assert_refused(ret, "failover", message)
    assert_refused_before_any_request(cloud, fip, backup, since=started)


# ---------------------------------------------------------------- secrets


def test_the_token_never_reaches_output_or_logs(failover_node, cloud, pair):
    ret = failover_node.call("-l", "all", "hcloud_ip.failover")
    assert ret.returncode == 0
    log_file = failover_node.factory.config["log_file"]
    with open(log_file, encoding="utf-8") as handle:
        logged = handle.read()
    # The phases are logged with the API's correlation ids.
    assert re.search(
        r"hcloud_ip: t\+[0-9.]+s assign lb-http .* requested \(action \d+, correlation id \w+\)",
        logged,
    )
    for text in (ret.stdout, ret.stderr, logged):
        assert cloud.token not in text
