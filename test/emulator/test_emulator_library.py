"""Fidelity: the official hcloud-python library works against the emulator."""

import pytest
from hcloud import APIException
from hcloud.floating_ips import FloatingIP
from hcloud.images import Image
from hcloud.locations import Location
from hcloud.networks import Network, NetworkSubnet
from hcloud.server_types import ServerType
from hcloud.servers import Server


def make_server(client, name, labels=None):
    created = client.servers.create(
        name=name,
        server_type=ServerType(name="cx22"),
        image=Image(name="ubuntu-24.04"),
        location=Location(name="nbg1"),
        labels=labels or {},
    )
    created.action.wait_until_finished()
    return client.servers.get_by_id(created.server.id)


def test_server_lifecycle(cloud):
    client = cloud.client()
    created = client.servers.create(
        name="web-1",
        server_type=ServerType(name="cx22"),
        image=Image(name="debian-12"),
        location=Location(name="fsn1"),
        labels={"role": "lb"},
    )
    assert created.server.status == "initializing"
    assert created.root_password
    created.action.wait_until_finished()
    server = client.servers.get_by_id(created.server.id)
    assert server.status == "running"
    assert server.public_net.ipv4.ip.startswith("203.0.113.")
    assert server.public_net.ipv6.ip.endswith("::/64")
    assert server.location.name == "fsn1"
    assert server.location.network_zone == "eu-central"

    server.update(name="web-one", labels={"role": "lb", "tier": "edge"})
    assert client.servers.get_by_name("web-one").labels == {"role": "lb", "tier": "edge"}
    assert client.servers.get_by_name("web-1") is None

    client.servers.delete(server).wait_until_finished()
    with pytest.raises(APIException) as caught:
        client.servers.get_by_id(server.id)
    assert caught.value.code == "not_found"
    assert caught.value.correlation_id


def test_server_filters(cloud):
    client = cloud.client()
    make_server(client, "a", {"role": "lb", "env": "prod"})
    make_server(client, "b", {"role": "lb", "env": "test"})
    make_server(client, "c", {"role": "db"})

    def names(**kwargs):
        return sorted(s.name for s in client.servers.get_all(**kwargs))

    assert names(label_selector="role=lb") == ["a", "b"]
    assert names(label_selector="role=lb,env!=prod") == ["b"]
    assert names(label_selector="env") == ["a", "b"]
    assert names(label_selector="!env") == ["c"]
    assert names(label_selector="env in (prod,staging)") == ["a"]
    assert names(name="c") == ["c"]
    assert names(status=["running"]) == ["a", "b", "c"]
    response = cloud.api("GET", "/servers?sort=name:desc")
    assert [s["name"] for s in response.json()["servers"]] == ["c", "b", "a"]


def test_floating_ips_v4_and_v6(cloud):
    client = cloud.client()
    server = make_server(client, "holder")
    v4 = client.floating_ips.create(
        type="ipv4", home_location=Location(name="nbg1"), name="vip4", labels={"vip": "yes"}
    ).floating_ip
    v6 = client.floating_ips.create(
        type="ipv6", home_location=Location(name="nbg1"), name="vip6"
    ).floating_ip
    assert v4.ip.startswith("198.51.100.")
    assert v6.ip.startswith("2001:db8:") and v6.ip.endswith("::/64")
    assert v4.server is None

    action = client.floating_ips.assign(v4, server)
    assert action.status == "running"
    action.wait_until_finished()
    assert client.actions.get_by_id(action.id).status == "success"
    assert client.floating_ips.get_by_id(v4.id).server.id == server.id
    assert client.servers.get_by_id(server.id).public_net.floating_ips[0].id == v4.id

    client.floating_ips.assign(v6, server).wait_until_finished()
    client.floating_ips.unassign(v4).wait_until_finished()
    assert client.floating_ips.get_by_id(v4.id).server is None
    assert client.floating_ips.get_by_id(v6.id).server.id == server.id

    client.floating_ips.update(v4, description="front door", labels={"vip": "no"})
    fetched = client.floating_ips.get_by_name("vip4")
    assert fetched.description == "front door"
    assert fetched.labels == {"vip": "no"}
    assert [f.name for f in client.floating_ips.get_all(label_selector="vip=no")] == ["vip4"]

    actions = client.floating_ips.get_actions(v4)
    assert [a.command for a in actions] == ["assign_floating_ip", "unassign_floating_ip"]

    assert client.floating_ips.delete(FloatingIP(id=v4.id)) is True
    assert [f.name for f in client.floating_ips.get_all()] == ["vip6"]


def test_network_attach_and_alias_ips(cloud):
    client = cloud.client()
    network = client.networks.create(
        name="private",
        ip_range="10.0.0.0/16",
        subnets=[NetworkSubnet(type="cloud", ip_range="10.0.1.0/24", network_zone="eu-central")],
    )
    client.networks.add_subnet(
        network,
        NetworkSubnet(type="cloud", ip_range="10.0.2.0/24", network_zone="eu-central"),
    ).wait_until_finished()
    network = client.networks.get_by_name("private")
    assert [s.ip_range for s in network.subnets] == ["10.0.1.0/24", "10.0.2.0/24"]
    assert network.subnets[0].gateway == "10.0.0.1"

    one = make_server(client, "one")
    two = make_server(client, "two")
    client.servers.attach_to_network(one, Network(id=network.id)).wait_until_finished()
    client.servers.attach_to_network(
        two, Network(id=network.id), ip="10.0.1.50", alias_ips=["10.0.1.100"]
    ).wait_until_finished()

    one = client.servers.get_by_id(one.id)
    assert one.private_net[0].ip == "10.0.1.2"
    assert one.private_net[0].network.id == network.id
    assert client.networks.get_by_id(network.id).servers[1].id == two.id

    # An alias IP held by another server must be released before it can move.
    with pytest.raises(APIException) as caught:
        client.servers.change_alias_ips(one, Network(id=network.id), ["10.0.1.100"])
    assert caught.value.code == "ip_not_available"
    client.servers.change_alias_ips(two, Network(id=network.id), []).wait_until_finished()
    action = client.servers.change_alias_ips(one, Network(id=network.id), ["10.0.1.100"])
    action.wait_until_finished()
    assert client.servers.get_by_id(one.id).private_net[0].alias_ips == ["10.0.1.100"]
    assert client.servers.get_by_id(two.id).private_net[0].alias_ips == []

    client.servers.detach_from_network(two, Network(id=network.id)).wait_until_finished()
    assert client.servers.get_by_id(two.id).private_net == []
    client.networks.delete_subnet(
        network, NetworkSubnet(ip_range="10.0.2.0/24")
    ).wait_until_finished()
    client.networks.update(network, labels={"env": "lab"})
    assert client.networks.get_all(label_selector="env=lab")[0].name == "private"
    assert client.networks.delete(network) is True
    assert client.servers.get_by_id(one.id).private_net == []


def test_pagination_with_get_all(cloud):
    client = cloud.client()
    for number in range(60):
        cloud.create_floating_ip(f"fip-{number}")
    assert len(client.floating_ips.get_all()) == 60
    page = client.floating_ips.get_list(page=2, per_page=50)
    assert len(page.floating_ips) == 10
    assert page.meta.pagination.total_entries == 60
    assert page.meta.pagination.previous_page == 1
    assert page.meta.pagination.next_page is None


def test_catalog_lookups(cloud):
    client = cloud.client()
    assert client.locations.get_by_name("hel1").network_zone == "eu-central"
    assert client.locations.get_by_name("ash").network_zone == "us-east"
    assert {loc.name for loc in client.locations.get_all()} >= {"nbg1", "fsn1", "hel1", "sin"}
    assert client.server_types.get_by_name("cpx11").cores == 2
    assert client.images.get_by_name_and_architecture("ubuntu-24.04", "x86").os_flavor == "ubuntu"
    datacenters = cloud.api("GET", "/datacenters?name=nbg1-dc3").json()["datacenters"]
    assert datacenters[0]["location"]["name"] == "nbg1"
    assert client.server_types.get_by_id(104).name == "cx22"


def test_action_lists(cloud):
    client = cloud.client()
    server = make_server(client, "acted")
    actions = client.servers.get_actions(server)
    assert [a.command for a in actions] == ["create_server"]
    assert client.actions.get_by_id(actions[0].id).resources[0]["id"] == server.id
    response = cloud.api("GET", f"/actions?id={actions[0].id}")
    assert response.json()["actions"][0]["status"] == "success"
    assert cloud.api("GET", f"/servers/actions/{actions[0].id}").status_code == 200
    assert cloud.api("GET", f"/networks/actions/{actions[0].id}").status_code == 404
    assert cloud.api("GET", f"/servers/{server.id}/actions/{actions[0].id}").status_code == 200
    assert isinstance(server, Server)
