"""
What a failover costs in a real project: the load balancer beside a crowd of
1000 other servers and 200 other floating IPs, every tool sharing 3600
requests an hour. hcloud_ip through the real salt-call, the real hcloud
library and real HTTP against the emulator, which paginates and counts.

A failover must cost the same in the crowded project as in an empty one, its
first assign must leave after at most one read of the API, and a re-assert
that finds everything in place must cost one request.
"""

import collections
import re

import pytest

pytestmark = pytest.mark.salt_call

CROWD = {"servers": 1000, "floating_ips": 200}
ACTION_POLLS = "GET /actions"  # counted apart: batched, and they depend on the action's length


@pytest.fixture(params=["empty", "crowded"])
def project(request, cloud):
    """lb-master and lb-backup with lb-http, lb-ws and alias 10.0.1.1 on lb-backup."""
    if request.param == "crowded":
        cloud.populate(**CROWD)
    master = cloud.create_server("lb-master")
    backup = cloud.create_server("lb-backup")
    fips = [cloud.create_floating_ip(name, server_id=backup["id"]) for name in ("lb-http", "lb-ws")]
    net = cloud.create_network("lb-private", ip_range="10.0.0.0/16", subnet="10.0.1.0/24")
    cloud.attach_server(master["id"], net["id"], ip="10.0.1.2")
    cloud.attach_server(backup["id"], net["id"], ip="10.0.1.3", alias_ips=["10.0.1.1"])
    cloud.wait_idle()
    return {"kind": request.param, "master": master, "backup": backup, "fips": fips, "net": net}


@pytest.fixture
def node(salt_node_factory, cloud, tmp_path, project):
    """
    lb-master, configured as the formula configures the hook, its ID cache
    filled as the formula fills it when it is applied.
    """
    node = salt_node_factory("lb-master")
    node.set_options(
        {
            "token": cloud.token,
            "api_endpoint": cloud.api_url,
            "metadata_endpoint": cloud.metadata_url,
            "failover": {
                "floating_ips": ["lb-http", "lb-ws"],
                "alias_ips": {"lb-private": ["10.0.1.1"]},
                "peers": ["lb-backup"],
                "id_cache": str(tmp_path / "ids.json"),
            },
        }
    )
    resolved = node.call("hcloud_ip.resolve")
    assert resolved.returncode == 0, resolved.stdout + resolved.stderr
    assert resolved.data["server"] == project["master"]["id"]
    return node


def api_requests(cloud):
    """The API requests since the last clear, as 'METHOD /path?query', polls of actions apart."""
    made = []
    for entry in cloud.requests():
        request = f"{entry['method']} {entry['path'].removeprefix('/v1')}"
        if "/metadata" in request or request == ACTION_POLLS:
            continue
        made.append(request + (f"?{entry['query']}" if entry["query"] else ""))
    return made


def lists_the_project(request):
    """An unfiltered list of servers or floating IPs: what it costs grows with the project."""
    method_path, _, query = request.partition("?")
    return method_path in ("GET /servers", "GET /floating_ips") and "name=" not in query


def shape(made):
    """The requests with IDs left out: the same shape in any project."""
    return collections.Counter(re.sub(r"/[0-9]+", "/ID", request) for request in made)


def holders(cloud, project):
    client = cloud.client()
    fips = [client.floating_ips.get_by_id(f["id"]).server.id for f in project["fips"]]
    master = client.servers.get_by_id(project["master"]["id"])
    private = next(p for p in master.private_net if p.network.id == project["net"]["id"])
    return fips, list(private.alias_ips)


def fail_over(node, cloud):
    cloud.clear_requests()
    ret = node.call("hcloud_ip.failover")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert ret.data["result"] is True, ret.data
    return api_requests(cloud)


COSTS = {}


def test_a_failover_costs_the_same_in_an_empty_and_a_crowded_project(node, cloud, project):
    made = fail_over(node, cloud)
    master_id = project["master"]["id"]
    assert holders(cloud, project) == ([master_id, master_id], ["10.0.1.1"])
    # No list of the project's servers or floating IPs, whatever its size.
    assert not [r for r in made if lists_the_project(r)], made
    COSTS[project["kind"]] = shape(made)
    if len(COSTS) == 2:
        assert COSTS["empty"] == COSTS["crowded"], COSTS
    # The moves (2 assigns, release and claim of the alias) and a few reads.
    assert len(made) <= 4 + 8, made


def test_the_first_assign_leaves_after_at_most_one_read(node, cloud, project):
    made = fail_over(node, cloud)
    # One read, of this node's server; the peer's (who holds the alias IP)
    # goes out beside the assigns, and may reach the API first.
    first = next(i for i, r in enumerate(made) if r.endswith("/actions/assign"))
    me, peer = (f"GET /servers/{project[n]['id']}" for n in ("master", "backup"))
    assert made[0] == me, made
    assert set(made[1:first]) <= {peer}, made


def test_a_reassert_that_finds_everything_in_place_costs_one_request(node, cloud, project):
    fail_over(node, cloud)
    cloud.clear_requests()
    ret = node.call("hcloud_ip.failover", "reassert=True")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert all(e["comment"] == "already here" for e in ret.data["floating_ips"].values())
    assert api_requests(cloud) == [f"GET /servers/{project['master']['id']}"]


def test_ids_are_resolved_once_and_again_when_one_is_gone(node, cloud, project):
    fail_over(node, cloud)
    # lb-ws is deleted and a new floating IP takes its name: the cached ID is
    # gone, the name is looked up again and the new one is moved here.
    client = cloud.client()
    old = client.floating_ips.get_by_id(project["fips"][1]["id"])
    client.floating_ips.unassign(old).wait_until_finished()
    client.floating_ips.delete(old)
    new = cloud.create_floating_ip("lb-ws", server_id=project["backup"]["id"])
    cloud.wait_idle()
    fail_over(node, cloud)
    assert client.floating_ips.get_by_id(new["id"]).server.id == project["master"]["id"]


def test_the_first_assign_does_not_wait_for_the_peers_read(node, cloud, project):
    # With 0.5 s per answer: assigns sent after this node's server alone land
    # 0.5 s after it; after the peer's read too, 1 s after it.
    cloud.configure(latency=0.5)
    cloud.clear_requests()
    ret = node.call("hcloud_ip.failover")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    logged = [
        (r["time"], f"{r['method']} {r['path'].removeprefix('/v1')}") for r in cloud.requests()
    ]
    me = f"GET /servers/{project['master']['id']}"
    read = next(t for t, r in logged if r == me)
    assign = next(t for t, r in logged if r.endswith("/actions/assign"))
    assert assign - read < 0.8, logged
