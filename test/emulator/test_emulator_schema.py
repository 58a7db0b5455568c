"""The response validator itself: it must catch wrong bodies, not just pass good ones."""

import pytest

from fakecloud.pytest_plugin import OPENAPI
from fakecloud.schema import Validator, convert


@pytest.fixture(scope="module")
def validator():
    # No skip: without the spec the fidelity checks would silently not happen.
    assert OPENAPI.exists(), f"{OPENAPI} is missing: tests need ../shared beside the repo"
    return Validator(OPENAPI)


def floating_ip(**changes):
    fip = {
        "id": 1,
        "name": "vip",
        "description": None,
        "ip": "198.51.100.1",
        "type": "ipv4",
        "server": None,
        "dns_ptr": [],
        "home_location": {
            "id": 2,
            "name": "nbg1",
            "description": "Nuremberg DC Park 1",
            "country": "DE",
            "city": "Nuremberg",
            "latitude": 49.45,
            "longitude": 11.07,
            "network_zone": "eu-central",
        },
        "blocked": False,
        "protection": {"delete": False},
        "labels": {},
        "created": "2024-01-01T00:00:00Z",
    }
    fip.update(changes)
    return {"floating_ip": fip}


def test_good_body_passes(validator):
    assert validator.check("GET", "/floating_ips/1", 200, floating_ip()) == []


def test_wrong_bodies_are_caught(validator):
    assert validator.check("GET", "/floating_ips/1", 200, floating_ip(server="two"))
    assert validator.check("GET", "/floating_ips/1", 200, floating_ip(type="ipv5"))
    assert validator.check("GET", "/floating_ips/1", 200, floating_ip(blocked=None))
    broken = floating_ip()
    del broken["floating_ip"]["home_location"]
    errors = validator.check("GET", "/floating_ips/1", 200, broken)
    assert any("home_location" in e for e in errors)


def test_status_and_body_presence(validator):
    error = {"error": {"code": "not_found", "message": "gone", "details": None}}
    assert validator.check("GET", "/floating_ips/1", 404, error) == []
    assert validator.check("GET", "/floating_ips/1", 404, {"error": {"code": "x"}})
    assert validator.check("DELETE", "/floating_ips/1", 204, None) == []
    assert validator.check("DELETE", "/floating_ips/1", 204, {"unexpected": True})
    assert validator.check("GET", "/floating_ips/1", 302, None)
    assert validator.check("GET", "/no_such_thing", 200, {})


def test_literal_paths_beat_templates(validator):
    assert validator.find("GET", "/servers/actions").template == "/servers/actions"
    assert validator.find("GET", "/servers/7").template == "/servers/{id}"


def test_nullable_becomes_null_type():
    schema = convert({"type": "string", "nullable": True, "enum": ["a"]})
    assert schema == {"anyOf": [{"type": "null"}, {"type": "string", "enum": ["a"]}]}
