"""API semantics: errors, locking, action results, rate limiting and pagination."""

import time

import pytest
import requests
from hcloud.actions import ActionFailedException
from hcloud.floating_ips import FloatingIP
from hcloud.servers import Server


def error_of(response):
    return response.status_code, response.json()["error"]["code"]


def test_unauthorized(cloud):
    assert error_of(requests.get(f"{cloud.api_url}/servers", timeout=5)) == (401, "unauthorized")
    wrong = {"Authorization": "Bearer not-the-token"}
    response = requests.get(f"{cloud.api_url}/servers", headers=wrong, timeout=5)
    assert error_of(response) == (401, "unauthorized")
    assert response.headers["X-Correlation-Id"]


def test_not_found(cloud):
    assert error_of(cloud.api("GET", "/servers/999999")) == (404, "not_found")
    assert error_of(cloud.api("GET", "/floating_ips/abc")) == (404, "not_found")
    assert error_of(cloud.api("DELETE", "/networks/999999")) == (404, "not_found")
    assert error_of(cloud.api("GET", "/actions/999999")) == (404, "not_found")


def test_invalid_input(cloud):
    response = cloud.api("POST", "/servers", {"server_type": "cx22", "image": "debian-12"})
    assert error_of(response) == (400, "invalid_input")
    assert response.json()["error"]["details"]["fields"][0]["name"] == "name"
    bad_type = {"name": "x", "server_type": "nope", "image": "debian-12"}
    assert error_of(cloud.api("POST", "/servers", bad_type)) == (400, "invalid_input")
    assert error_of(cloud.api("POST", "/floating_ips", {"type": "ipv5"})) == (400, "invalid_input")
    assert error_of(cloud.api("GET", "/servers?per_page=51")) == (400, "invalid_input")
    assert error_of(cloud.api("GET", "/servers?page=zero")) == (400, "invalid_input")
    response = cloud.api("POST", "/networks", data="{not json")
    assert error_of(response) == (400, "json_error")


def test_alias_ip_errors(cloud):
    network = cloud.create_network("lan")
    attached = cloud.create_server("attached")
    loner = cloud.create_server("loner")
    cloud.attach_server(attached["id"], network["id"], alias_ips=["10.0.1.9"])
    path = f"/servers/{loner['id']}/actions/change_alias_ips"
    body = {"network": network["id"], "alias_ips": ["10.0.1.10"]}
    assert error_of(cloud.api("POST", path, body)) == (422, "server_not_attached_to_network")
    path = f"/servers/{attached['id']}/actions/change_alias_ips"
    outside = {"network": network["id"], "alias_ips": ["192.168.0.1"]}
    assert error_of(cloud.api("POST", path, outside)) == (400, "invalid_input")
    cloud.attach_server(loner["id"], network["id"])
    taken = {"network": network["id"], "alias_ips": ["10.0.1.9"]}
    loner_path = f"/servers/{loner['id']}/actions/change_alias_ips"
    assert error_of(cloud.api("POST", loner_path, taken)) == (422, "ip_not_available")
    again = f"/servers/{attached['id']}/actions/attach_to_network"
    repeat = {"network": network["id"]}
    assert error_of(cloud.api("POST", again, repeat)) == (422, "server_already_attached")


def test_two_claims_of_one_alias_ip_under_way_at_once_leave_one_holder(cloud):
    # Both requests pass the check (nobody holds the IP yet); the change that
    # finishes second fails, as no two servers of a network can hold one IP.
    network = cloud.create_network("lan")
    first = cloud.create_server("first")
    second = cloud.create_server("second")
    cloud.attach_server(first["id"], network["id"])
    cloud.attach_server(second["id"], network["id"])
    cloud.wait_idle()
    cloud.configure(action_duration=0.5)
    body = {"network": network["id"], "alias_ips": ["10.0.1.9"]}
    actions = [
        cloud.api("POST", f"/servers/{server['id']}/actions/change_alias_ips", body).json()
        for server in (first, second)
    ]
    cloud.wait_idle()
    done = [cloud.api("GET", f"/actions/{a['action']['id']}").json()["action"] for a in actions]
    assert [a["status"] for a in done] == ["success", "error"]
    assert done[1]["error"]["code"] == "ip_not_available"
    holders = [
        s["name"]
        for s in cloud.state()["servers"]
        for entry in s["private_net"]
        if "10.0.1.9" in entry["alias_ips"]
    ]
    assert holders == ["first"]


def test_uniqueness(cloud):
    cloud.create_server("same")
    body = {"name": "same", "server_type": "cx22", "image": "debian-12"}
    assert error_of(cloud.api("POST", "/servers", body)) == (409, "uniqueness_error")
    cloud.create_floating_ip("same")
    body = {"name": "same", "type": "ipv4", "home_location": "nbg1"}
    assert error_of(cloud.api("POST", "/floating_ips", body)) == (409, "uniqueness_error")
    cloud.create_network("same")
    body = {"name": "same", "ip_range": "10.1.0.0/16"}
    assert error_of(cloud.api("POST", "/networks", body)) == (409, "uniqueness_error")


def test_locked_while_action_runs(cloud):
    cloud.configure(action_duration=0.5)
    server = cloud.create_server("busy")
    first = cloud.create_floating_ip("first")
    second = cloud.create_floating_ip("second")
    assign = {"server": server["id"]}
    response = cloud.api("POST", f"/floating_ips/{first['id']}/actions/assign", assign)
    assert response.status_code == 201
    # Only the floating IP is locked: another one can go to the same server meanwhile.
    response = cloud.api("POST", f"/floating_ips/{second['id']}/actions/assign", assign)
    assert response.status_code == 201
    unassign = f"/floating_ips/{first['id']}/actions/unassign"
    assert error_of(cloud.api("POST", unassign)) == (423, "locked")
    assert error_of(cloud.api("DELETE", f"/floating_ips/{first['id']}")) == (423, "locked")
    cloud.wait_idle()
    assert cloud.api("POST", unassign).status_code == 201
    cloud.wait_idle()
    assert cloud.api("DELETE", f"/floating_ips/{first['id']}").status_code == 204


def test_change_applies_when_action_completes(cloud):
    cloud.configure(action_durations={"assign_floating_ip": 0.6})
    server = cloud.create_server("target")
    fip = cloud.create_floating_ip("vip")
    action = cloud.api(
        "POST", f"/floating_ips/{fip['id']}/actions/assign", {"server": server["id"]}
    ).json()["action"]
    time.sleep(0.3)
    running = cloud.api("GET", f"/actions/{action['id']}").json()["action"]
    assert running["status"] == "running"
    assert 0 < running["progress"] < 100
    assert cloud.api("GET", f"/floating_ips/{fip['id']}").json()["floating_ip"]["server"] is None
    cloud.wait_idle()
    done = cloud.api("GET", f"/floating_ips/{fip['id']}/actions/{action['id']}").json()["action"]
    assert (done["status"], done["progress"]) == ("success", 100)
    assert done["finished"]
    assert (
        cloud.api("GET", f"/floating_ips/{fip['id']}").json()["floating_ip"]["server"]
        == (server["id"])
    )


def test_action_error_result(cloud):
    client = cloud.client()
    server = cloud.create_server("target")
    fip = cloud.create_floating_ip("vip")
    cloud.configure(action_result="error")
    action = client.floating_ips.assign(FloatingIP(id=fip["id"]), Server(id=server["id"]))
    with pytest.raises(ActionFailedException) as caught:
        action.wait_until_finished()
    assert caught.value.action.error["code"] == "action_failed"
    assert client.floating_ips.get_by_id(fip["id"]).server is None


def test_rate_limit(cloud):
    cloud.configure(rate_limit=5, rate_refill=5, rate_remaining=3)
    remaining = []
    for _ in range(3):
        response = cloud.api("GET", "/locations")
        assert response.status_code == 200
        remaining.append(int(response.headers["RateLimit-Remaining"]))
        assert response.headers["RateLimit-Limit"] == "5"
        assert int(response.headers["RateLimit-Reset"]) >= int(time.time())
    assert remaining == [2, 1, 0]
    assert error_of(cloud.api("GET", "/locations")) == (429, "rate_limit_exceeded")
    time.sleep(0.5)  # 5 per second: two tokens are back
    response = cloud.api("GET", "/locations")
    assert response.status_code == 200
    assert int(response.headers["RateLimit-Remaining"]) >= 1


def test_pagination_meta(cloud):
    for number in range(5):
        cloud.create_network(f"net-{number}", ip_range=f"10.{number}.0.0/16", subnet=None)
    page = cloud.api("GET", "/networks?per_page=2&page=2").json()
    assert [n["name"] for n in page["networks"]] == ["net-2", "net-3"]
    assert page["meta"]["pagination"] == {
        "page": 2,
        "per_page": 2,
        "previous_page": 1,
        "next_page": 3,
        "last_page": 3,
        "total_entries": 5,
    }
    default = cloud.api("GET", "/networks").json()["meta"]["pagination"]
    assert (default["per_page"], default["next_page"], default["last_page"]) == (25, None, 1)
    beyond = cloud.api("GET", "/networks?page=9").json()
    assert beyond["networks"] == []
