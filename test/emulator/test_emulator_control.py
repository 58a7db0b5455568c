"""The control API: faults, request log, events, --on-change and the metadata service."""

import http.client
import socket
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from fakecloud.pytest_plugin import FakeCloudProcess


def test_error_fault_for_next_calls(cloud):
    cloud.add_fault("/servers", count=2, method="GET", status=503, code="maintenance")
    for _ in range(2):
        response = cloud.api("GET", "/servers")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "maintenance"
    assert cloud.api("POST", "/servers", {}).status_code == 400  # other method: untouched
    assert cloud.api("GET", "/servers").status_code == 200


def test_fault_glob_and_clear(cloud):
    cloud.add_fault("/floating_ips/*/actions/assign", count=5, status=500)
    assert cloud.api("POST", "/floating_ips/1/actions/assign", {"server": 1}).status_code == 500
    assert cloud.api("GET", "/floating_ips/1").status_code == 404
    cloud.clear_faults()
    assert cloud.api("POST", "/floating_ips/1/actions/assign", {"server": 1}).status_code == 404


def test_latency_fault(cloud):
    cloud.add_fault("/locations", latency=0.4)
    begin = time.monotonic()
    assert cloud.api("GET", "/locations").status_code == 200
    assert time.monotonic() - begin >= 0.4
    begin = time.monotonic()
    cloud.api("GET", "/locations")
    assert time.monotonic() - begin < 0.3


def test_configured_latency(cloud):
    cloud.configure(latency=0.3)
    begin = time.monotonic()
    assert cloud.api("GET", "/locations").status_code == 200
    assert time.monotonic() - begin >= 0.3


def test_drop_fault(cloud):
    cloud.add_fault("/servers", drop=True)
    with pytest.raises(requests.ConnectionError):
        requests.get(
            f"{cloud.api_url}/servers",
            headers={"Authorization": f"Bearer {cloud.token}"},
            timeout=5,
        )
    assert cloud.api("GET", "/servers").status_code == 200
    dropped = [r for r in cloud.requests() if r["fault"]]
    assert dropped[0]["status"] is None
    assert dropped[0]["fault"]["drop"] is True


def test_request_log(cloud):
    cloud.clear_requests()
    response = cloud.api("GET", "/servers?name=x")
    requests.get(f"{cloud.api_url}/networks", timeout=5)
    log = cloud.requests()
    assert [(r["method"], r["path"], r["query"], r["status"]) for r in log] == [
        ("GET", "/v1/servers", "name=x", 200),
        ("GET", "/v1/networks", "", 401),
    ]
    assert log[0]["correlation_id"] == response.headers["X-Correlation-Id"]
    assert log[0]["duration"] >= 0
    assert cloud.token not in str(log)
    cloud.clear_requests()
    assert cloud.requests() == []


def test_a_request_is_in_the_log_once_answered(cloud):
    # Tests clear the log right after setting the scene over another connection;
    # an entry logged after its answer would land in the cleared log.
    with requests.Session() as other_connection:
        for _ in range(500):
            other_connection.get(f"{cloud.api_url}/locations", timeout=5)
            cloud.clear_requests()
            assert cloud.requests() == []


def test_holders_say_who_holds_each_address_without_spending_the_rate_limit(cloud):
    server = cloud.create_server("holder")
    network = cloud.create_network("holders", ip_range="10.9.0.0/16", subnet="10.9.1.0/24")
    cloud.attach_server(server["id"], network["id"], alias_ips=["10.9.1.50"])
    held = cloud.create_floating_ip("held", server_id=server["id"])
    free = cloud.create_floating_ip("free")
    remaining = int(cloud.api("GET", "/locations").headers["RateLimit-Remaining"])
    holders = cloud.holders()
    assert holders["floating_ips"][str(held["id"])] == server["id"]
    assert holders["floating_ips"][str(free["id"])] is None
    assert holders["alias_ips"] == {"10.9.1.50": server["id"]}
    after = int(cloud.api("GET", "/locations").headers["RateLimit-Remaining"])
    assert after == remaining - 1  # the second /locations only


def test_events_long_poll(cloud):
    server = cloud.create_server("new-holder")
    fip = cloud.create_floating_ip("vip")
    last = cloud.events()["last"]
    cloud.configure(action_duration=0.3)
    seen = {}
    waiter = threading.Thread(target=lambda: seen.update(cloud.events(since=last, timeout=10)))
    waiter.start()
    cloud.api("POST", f"/floating_ips/{fip['id']}/actions/assign", {"server": server["id"]})
    assert cloud.events(since=last)["events"] == []  # nothing until the action completes
    waiter.join(15)
    (event,) = seen["events"]
    assert event["kind"] == "floating_ip"
    assert (event["ip"], event["old_server_id"], event["new_server_id"]) == (
        fip["ip"],
        None,
        server["id"],
    )
    assert seen["last"] == event["seq"]


def test_metadata_by_mapping(cloud):
    network = cloud.create_network("lan")
    server = cloud.create_server("meta-node", location="fsn1")
    cloud.attach_server(server["id"], network["id"], ip="10.0.1.4", alias_ips=["10.0.1.44"])
    assert requests.get(cloud.metadata_url, timeout=5).status_code == 404
    cloud.map_metadata_source("127.0.0.1", server["id"])

    response = requests.get(cloud.metadata_url, timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    doc = yaml.safe_load(response.text)
    assert doc["hostname"] == "meta-node"
    assert doc["instance-id"] == server["id"]
    assert doc["public-ipv4"] == server["public_net"]["ipv4"]["ip"]
    assert doc["availability-zone"] == "fsn1-dc14"
    assert doc["region"] == "eu-central"
    assert requests.get(f"{cloud.metadata_url}/hostname", timeout=5).text == "meta-node"
    assert requests.get(f"{cloud.metadata_url}/instance-id", timeout=5).text == str(server["id"])
    networks = yaml.safe_load(
        requests.get(f"{cloud.metadata_url}/private-networks", timeout=5).text
    )
    assert networks == [
        {
            "ip": "10.0.1.4",
            "alias_ips": ["10.0.1.44"],
            "interface_num": 1,
            "mac_address": networks[0]["mac_address"],
            "network_id": network["id"],
            "network_name": "lan",
            "network": "10.0.0.0/16",
            "subnet": "10.0.1.0/24",
            "gateway": "10.0.0.1",
        }
    ]
    cloud.map_metadata_source("127.0.0.1", None)
    assert requests.get(f"{cloud.metadata_url}/hostname", timeout=5).status_code == 404


def test_metadata_by_source_address(cloud):
    """Without a mapping, the caller is the server holding the source address (here an alias)."""
    network = cloud.create_network("loop", ip_range="127.0.0.0/16", subnet="127.0.1.0/24")
    server = cloud.create_server("by-alias")
    cloud.attach_server(server["id"], network["id"], alias_ips=["127.0.1.77"])
    host, port = cloud.endpoint.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), source_address=("127.0.1.77", 0))
    connection.request("GET", "/hetzner/v1/metadata/hostname")
    assert connection.getresponse().read() == b"by-alias"
    connection.close()


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_on_change_hook_and_metadata_listener(tmp_path):
    changes = tmp_path / "changes"
    hook = f"env | grep ^FAKECLOUD_ | sort >> {changes}; echo --- >> {changes}"
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    metadata_port = _free_port()
    process = FakeCloudProcess(
        token_file=token_file,
        on_change=hook,
        action_duration=0.05,
        metadata_listen=f"127.0.0.1:{metadata_port}",
    )
    with process as fc:
        network = fc.create_network("lan")
        server = fc.create_server("holder")
        fc.attach_server(server["id"], network["id"], ip="10.0.1.8")
        fip = fc.create_floating_ip("vip", server_id=server["id"])
        path = f"/servers/{server['id']}/actions/change_alias_ips"
        fc.api("POST", path, {"network": network["id"], "alias_ips": ["10.0.1.30"]})
        fc.wait_idle()
        fc.map_metadata_source("127.0.0.1", server["id"])
        base = f"http://127.0.0.1:{metadata_port}/hetzner/v1/metadata"
        assert requests.get(f"{base}/hostname", timeout=5).text == "holder"
        assert (
            requests.get(f"http://127.0.0.1:{metadata_port}/v1/servers", timeout=5).status_code
            == 404
        )
        assert fc.violations() == []
        deadline = time.monotonic() + 10
        while changes.read_text().count("---") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert process.process.returncode == 0
    blocks = [
        dict(line.split("=", 1) for line in block.split())
        for block in changes.read_text().split("---")
        if block.strip()
    ]
    assert blocks[0] == {
        "FAKECLOUD_KIND": "floating_ip",
        "FAKECLOUD_IP": fip["ip"],
        "FAKECLOUD_NETWORK_ID": "",
        "FAKECLOUD_OLD_SERVER_ID": "",
        "FAKECLOUD_NEW_SERVER_ID": str(server["id"]),
        "FAKECLOUD_NEW_SERVER_IPV4": server["public_net"]["ipv4"]["ip"],
        "FAKECLOUD_NEW_SERVER_PRIVATE_IP": "",
    }
    assert blocks[1]["FAKECLOUD_KIND"] == "alias_ip"
    assert blocks[1]["FAKECLOUD_IP"] == "10.0.1.30"
    assert blocks[1]["FAKECLOUD_NETWORK_ID"] == str(network["id"])
    assert blocks[1]["FAKECLOUD_NEW_SERVER_PRIVATE_IP"] == "10.0.1.8"
    assert "file-token" not in Path(process.log_path).read_text()
