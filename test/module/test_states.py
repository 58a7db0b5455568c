"""
The hcloud_ip states through the real `salt-call --local state.single`:
test=True changes nothing, a second run reports no changes, old/new changes.
"""

import pytest

pytestmark = pytest.mark.salt_call


@pytest.fixture
def node(salt_node_factory, cloud):
    node = salt_node_factory("lb-master")
    node.set_options(
        {
            "token": cloud.token,
            "api_endpoint": cloud.api_url,
            "metadata_endpoint": cloud.metadata_url,
        }
    )
    return node


@pytest.fixture
def servers(cloud):
    master = cloud.create_server("lb-master")
    backup = cloud.create_server("lb-backup")
    return master, backup


def state(node, function, *args):
    """Run one state; return its single result."""
    ret = node.call("state.single", f"hcloud_ip.{function}", *args)
    assert ret.data, ret.stdout + ret.stderr
    (result,) = ret.data.values()
    return result


def floating_ips(cloud):
    return {fip.name: fip for fip in cloud.client().floating_ips.get_all()}


def test_present_creates_then_reports_nothing_to_do(node, cloud, servers):
    args = ("name=lb-http", "home_location=nbg1", "description=public web", "labels={lb: main}")
    dry = state(node, "present", *args, "test=True")
    assert dry["result"] is None
    assert dry["changes"]["new"]["home_location"] == "nbg1"
    assert "lb-http" not in floating_ips(cloud)

    made = state(node, "present", *args)
    assert made["result"] is True, made["comment"]
    assert made["changes"]["old"] is None
    fip = floating_ips(cloud)["lb-http"]
    assert (fip.type, fip.home_location.name, fip.description, fip.labels) == (
        "ipv4",
        "nbg1",
        "public web",
        {"lb": "main"},
    )
    assert made["changes"]["new"]["ip"] == fip.ip

    again = state(node, "present", *args)
    assert again["result"] is True
    assert again["changes"] == {}


def test_present_updates_labels_and_refuses_a_type_change(node, cloud, servers):
    cloud.create_floating_ip("lb-http", labels={"lb": "old"})
    updated = state(node, "present", "name=lb-http", "labels={lb: new}")
    assert updated["changes"] == {"labels": {"old": {"lb": "old"}, "new": {"lb": "new"}}}
    assert floating_ips(cloud)["lb-http"].labels == {"lb": "new"}

    refused = state(node, "present", "name=lb-http", "type=ipv6")
    assert refused["result"] is False
    assert "cannot change" in refused["comment"]


def test_present_creates_an_ipv6_floating_ip(node, cloud, servers):
    made = state(node, "present", "name=lb-v6", "type=ipv6", "home_location=fsn1")
    assert made["result"] is True, made["comment"]
    assert floating_ips(cloud)["lb-v6"].ip.endswith("/64")


def test_present_without_home_location_cannot_create(node, cloud, servers):
    ret = state(node, "present", "name=lb-http")
    assert ret["result"] is False
    assert "home_location is required" in ret["comment"]
    assert not floating_ips(cloud)


def test_assigned_moves_only_without_test_and_only_once(node, cloud, servers):
    master, backup = servers
    fip = cloud.create_floating_ip("lb-http", server_id=backup["id"])
    cloud.wait_idle()

    dry = state(node, "assigned", "name=lb-http", "test=True")
    assert dry["result"] is None
    assert dry["changes"] == {"server": {"old": "lb-backup", "new": "lb-master"}}
    assert floating_ips(cloud)["lb-http"].server.id == backup["id"]

    moved = state(node, "assigned", "name=lb-http")
    assert moved["result"] is True, moved["comment"]
    assert moved["changes"] == {"server": {"old": "lb-backup", "new": "lb-master"}}
    assert floating_ips(cloud)["lb-http"].server.id == master["id"]

    again = state(node, "assigned", f"name={fip['ip']}")
    assert again["result"] is True
    assert again["changes"] == {}


def test_assigned_to_a_named_server(node, cloud, servers):
    _, backup = servers
    cloud.create_floating_ip("lb-http")
    ret = state(node, "assigned", "name=lb-http", "server=lb-backup")
    assert ret["changes"] == {"server": {"old": None, "new": "lb-backup"}}
    assert floating_ips(cloud)["lb-http"].server.id == backup["id"]


def test_assigned_fails_cleanly_for_an_unknown_ip(node, servers):
    ret = state(node, "assigned", "name=lb-gone")
    assert ret["result"] is False
    assert "'lb-gone' not found" in ret["comment"]


def test_alias_ips_takes_the_ip_and_keeps_the_rest(node, cloud, servers):
    master, backup = servers
    net = cloud.create_network("lb-private", ip_range="10.0.0.0/16", subnet="10.0.1.0/24")
    cloud.attach_server(master["id"], net["id"], ip="10.0.1.2", alias_ips=["10.0.1.50"])
    cloud.attach_server(backup["id"], net["id"], ip="10.0.1.3", alias_ips=["10.0.1.1"])
    cloud.wait_idle()
    expected = {
        "lb-master": {"old": ["10.0.1.50"], "new": ["10.0.1.50", "10.0.1.1"]},
        "lb-backup": {"old": ["10.0.1.1"], "new": []},
    }

    dry = state(node, "alias_ips", "name=lb-private", "ips=[10.0.1.1]", "test=True")
    assert dry["result"] is None
    assert dry["changes"] == expected

    moved = state(node, "alias_ips", "name=lb-private", "ips=[10.0.1.1]")
    assert moved["result"] is True, moved["comment"]
    assert {k: sorted(v["new"]) for k, v in moved["changes"].items()} == {
        "lb-master": ["10.0.1.1", "10.0.1.50"],
        "lb-backup": [],
    }

    again = state(node, "alias_ips", "name=lb-private", "ips=[10.0.1.1]")
    assert again["changes"] == {}
