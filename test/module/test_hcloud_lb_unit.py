"""
The hcloud_lb pillar checks, one test per rule, with Salt's loader mocks.
Each message must name the pillar key and say what is wrong.
"""

import copy
import os

import pytest
import yaml

from _modules import hcloud_lb
from helpers import REPO


def load_yaml(path):
    return yaml.safe_load((REPO / path).read_text())


def merge(dest, src):
    """Deep-merge src into dest, as Salt's defaults.merge does."""
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dest.get(key), dict):
            merge(dest[key], value)
        else:
            dest[key] = value


def merged_example():
    """pillar.example over defaults.yaml, as map.jinja merges them."""
    settings = load_yaml("hcloud_lb/defaults.yaml")["hcloud_lb"]
    merge(settings, load_yaml("pillar.example")["hcloud_lb"])
    return settings


@pytest.fixture
def options():
    return {"hcloud:token": "a-token"}


@pytest.fixture
def configure_loader_modules(options):
    return {
        hcloud_lb: {
            "__salt__": {"config.get": lambda key, default=None: options.get(key, default)},
            "__grains__": {"id": "lb-master"},
        }
    }


@pytest.fixture
def settings():
    return merged_example()


def problems(settings):
    return hcloud_lb.validate(copy.deepcopy(settings))


def test_pillar_example_is_valid(settings):
    assert problems(settings) == []


def test_missing_token(settings, options):
    options.clear()
    assert problems(settings) == [
        "hcloud:token: not set; the failover hook needs a read/write API token"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"vrrp": {"password": "123456789"}},
            "hcloud_lb:vrrp:password: longer than 8 characters",
        ),
        ({"vrrp": {"password": ""}}, "hcloud_lb:vrrp:password: not set"),
        ({"vrrp": {"virtual_router_id": 0}}, "hcloud_lb:vrrp:virtual_router_id: 0 is not within"),
        (
            {"vrrp": {"virtual_router_id": 256}},
            "hcloud_lb:vrrp:virtual_router_id: 256 is not within 1-255",
        ),
        ({"vrrp": {"profile": "turbo"}}, "hcloud_lb:vrrp:profile: 'turbo' is not one of"),
        (
            {"vrrp": {"preempt": False, "check": {"weight": -50}}},
            "hcloud_lb:vrrp:check:weight: -50 only changes the priority",
        ),
        ({"vrrp": {"check": {"weight": 300}}}, "hcloud_lb:vrrp:check:weight: 300 is not within"),
        ({"vrrp": {"check": {"fall": 0}}}, "hcloud_lb:vrrp:check:fall: 0 is not within 1-100"),
        (
            {"nodes": {"lb-master": {"address": "10.0.0.300"}}},
            "hcloud_lb:nodes:lb-master:address: '10.0.0.300' is not an IP address",
        ),
        (
            {"nodes": {"lb-backup": {"address": "10.0.0.2"}}},
            "hcloud_lb:nodes:lb-backup:address: 10.0.0.2 is also nodes:lb-master's",
        ),
        (
            {"nodes": {"lb-master": {"priority": 255}}},
            "hcloud_lb:nodes:lb-master:priority: 255 is not within 1-254",
        ),
        (
            {"groups": {"http": {"address": "203.0.113.999"}}},
            "hcloud_lb:groups:http:address: '203.0.113.999' is not an IP address",
        ),
        (
            {"groups": {"http": {"balancers": {"http": {"frontend_port": 70000}}}}},
            "hcloud_lb:groups:http:balancers:http:frontend_port: 70000 is not a port (1-65535)",
        ),
        (
            {"groups": {"http": {"balancers": {"http": {"mode": "udp"}}}}},
            "hcloud_lb:groups:http:balancers:http:mode: 'udp' is not one of tcp, http",
        ),
        (
            {"groups": {"http": {"balancers": {"http": {"algorithm": "fastest"}}}}},
            "hcloud_lb:groups:http:balancers:http:algorithm: 'fastest' is not a haproxy",
        ),
        (
            {
                "groups": {
                    "http": {
                        "balancers": {
                            "http": {"backend_servers": {"node1": {"host": None, "port": 80}}}
                        }
                    }
                }
            },
            "hcloud_lb:groups:http:balancers:http:backend_servers:node1:host: missing",
        ),
        (
            {
                "groups": {
                    "http": {"balancers": {"http": {"backend_servers": {"node1": {"port": 0}}}}}
                }
            },
            "hcloud_lb:groups:http:balancers:http:backend_servers:node1:port: 0 is not a port",
        ),
        (
            {"alias_ips": {"lb-private": {"ips": ["10.0.1.x"]}}},
            "hcloud_lb:alias_ips:lb-private:ips: '10.0.1.x' is not an IP address",
        ),
        ({"floating_ip_binding": "magic"}, "hcloud_lb:floating_ip_binding: 'magic' is not one"),
        ({"hook": {"deadline": 0}}, "hcloud_lb:hook:deadline: 0 is not a positive number"),
        ({"haproxy": {"monitor": "localhost"}}, "hcloud_lb:haproxy:monitor: 'localhost' is not"),
    ],
)
def test_each_rule_names_the_key_and_the_problem(settings, change, expected):
    merge(settings, change)
    found = problems(settings)
    assert any(p.startswith(expected) for p in found), found


def test_two_frontends_on_one_address_and_port(settings):
    settings["groups"]["websockets"]["address"] = settings["groups"]["http"]["address"]
    assert problems(settings) == [
        "hcloud_lb:groups:websockets:balancers:wss:frontend_port: 203.0.113.10:443 "
        "is already the frontend of groups:http:balancers:https"
    ]


def test_the_same_port_on_two_addresses_is_fine(settings):
    # The Kubernetes seed: http and websockets ingress both on 443, one floating IP each.
    assert settings["groups"]["http"]["balancers"]["https"]["frontend_port"] == 443
    assert settings["groups"]["websockets"]["balancers"]["wss"]["frontend_port"] == 443
    assert problems(settings) == []


def test_a_floating_ip_given_by_address_needs_no_separate_address(settings):
    group = settings["groups"]["http"]
    group["floating_ip"] = group.pop("address")
    assert problems(settings) == []


def test_ports_given_as_strings_like_the_tutorial(settings):
    balancer = settings["groups"]["http"]["balancers"]["http"]
    balancer["frontend_port"] = "80"
    balancer["backend_servers"]["node1"]["port"] = "30080"
    assert problems(settings) == []


def test_this_minion_must_be_a_node(settings):
    settings["nodes"]["lb-other"] = settings["nodes"].pop("lb-master")
    assert "hcloud_lb:nodes: has no entry for this minion (lb-master)" in problems(settings)


def test_a_list_where_a_mapping_belongs(settings):
    settings["groups"] = [settings["groups"]["http"]]
    assert problems(settings) == ["hcloud_lb:groups: must be a mapping keyed by name, got list"]


def test_equal_priorities_with_nopreempt_is_the_alias_seed(settings):
    settings["vrrp"]["preempt"] = False
    for node in settings["nodes"].values():
        node["priority"] = 100
    assert problems(settings) == []
    assert hcloud_lb.node(settings)["state"] == "BACKUP"


def test_node_values_for_this_minion(settings):
    assert hcloud_lb.node(settings) == {
        "id": "lb-master",
        "priority": 200,
        "address": "10.0.0.2",
        "peers": ["10.0.0.3"],
        "state": "MASTER",
    }


def test_a_missing_salt_call_is_named(settings):
    settings["lookup"] = {"salt_call": "/nonexistent/salt-call"}
    assert problems(settings) == [
        "hcloud_lb:lookup:salt_call: /nonexistent/salt-call is not an executable salt-call; "
        "the failover hook needs Salt on the node (install it, or point this at its salt-call)"
    ]


def test_script_security_rules(tmp_path):
    # The test command runs as root, as the formula does.
    scripts = tmp_path / "scripts"
    scripts.mkdir(mode=0o755)
    script = scripts / "check"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    tmp_path.chmod(0o755)
    assert [p for p in hcloud_lb.script_security_problems(script) if str(tmp_path) in p] == []
    script.chmod(0o775)
    assert f"{script} is writable by group or others" in hcloud_lb.script_security_problems(script)
    script.chmod(0o755)
    os.chown(scripts, 65534, 65534)
    assert f"{scripts} is not owned by root" in hcloud_lb.script_security_problems(script)
