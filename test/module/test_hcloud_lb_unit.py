"""
The hcloud_lb pillar checks, one test per rule, with Salt's loader mocks.
Each message must name the pillar key and say what is wrong.

The module asks ``__salt__`` about the node's files (``cmd.retcode``,
``file.stats``): here the real functions on this host, as on a minion; as the
salt-ssh wrapper the same calls reach the target (see the last tests).
"""

import copy
import os
import subprocess

import pytest
import salt.modules.file
import yaml
from salt.exceptions import CommandExecutionError

from _modules import hcloud_lb
from helpers import REPO, SALT_CALL


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
    """
    pillar.example over defaults.yaml, with Debian's lookup values (salt-call
    where this machine has it), as map.jinja merges them.
    """
    settings = load_yaml("hcloud_lb/defaults.yaml")["hcloud_lb"]
    merge(settings, load_yaml("pillar.example")["hcloud_lb"])
    settings["lookup"] = load_yaml("hcloud_lb/osfamilymap.yaml")["Debian"]
    settings["lookup"]["salt_call"] = str(SALT_CALL)
    return settings


@pytest.fixture
def options():
    return {"hcloud:token": "a-token"}


# The interfaces pillar.example names, as a load balancer node has them.
NODE_INTERFACES = {"eth0", "ens10"}


def cmd_retcode(cmd, python_shell=None, ignore_retcode=False):
    """cmd.retcode, for the argv lists the module passes; this host stands for the node."""
    assert isinstance(cmd, list) and python_shell is False and ignore_retcode is True
    if cmd[:2] == ["test", "-e"] and cmd[2].startswith("/sys/class/net/"):
        # This host has no ens10: answer for the node's interfaces.
        return 0 if cmd[2].removeprefix("/sys/class/net/") in NODE_INTERFACES else 1
    return subprocess.run(cmd, check=False).returncode


def cmd_run_stdout(cmd, python_shell=None, ignore_retcode=False):
    """cmd.run_stdout, for the argv lists the module passes: this host's answer."""
    assert isinstance(cmd, list) and python_shell is False and ignore_retcode is True
    return subprocess.run(cmd, check=False, capture_output=True, text=True).stdout


@pytest.fixture
def node_salt():
    """The functions the module asks about the node: this host's, for real."""
    return {
        "cmd.retcode": cmd_retcode,
        "cmd.run_stdout": cmd_run_stdout,
        "file.stats": salt.modules.file.stats,
    }


@pytest.fixture
def configure_loader_modules(options, node_salt):
    return {
        hcloud_lb: {
            "__salt__": {
                "config.get": lambda key, default=None: options.get(key, default),
                **node_salt,
            },
            "__grains__": {"id": "lb-master"},
            "__context__": {},
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
        "hcloud:token: not set; the failover hook needs a read/write API token "
        "(with salt-ssh, also sync this formula's wrapper: salt-run saltutil.sync_wrapper)"
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"vrrp": {"password": "123456789"}},
            "hcloud_lb:vrrp:password: longer than 8 characters",
        ),
        ({"vrrp": {"password": ""}}, "hcloud_lb:vrrp:password: not set"),
        (
            {"vrrp": {"virtual_router_id": 0}},
            "hcloud_lb:vrrp:virtual_router_id: 0 is not a whole number (1-255)",
        ),
        (
            {"vrrp": {"virtual_router_id": 256}},
            "hcloud_lb:vrrp:virtual_router_id: 256 is not a whole number (1-255)",
        ),
        ({"vrrp": {"profile": "turbo"}}, "hcloud_lb:vrrp:profile: 'turbo' is not one of"),
        (
            {"vrrp": {"preempt": False, "check": {"weight": -50}}},
            "hcloud_lb:vrrp:check:weight: -50 only changes the priority",
        ),
        (
            {"vrrp": {"check": {"weight": 300}}},
            "hcloud_lb:vrrp:check:weight: 300 is not a whole number (-253-253)",
        ),
        (
            {"vrrp": {"check": {"fall": 0}}},
            "hcloud_lb:vrrp:check:fall: 0 is not a whole number (1-100)",
        ),
        (
            {"vrrp": {"check": {"interval": 0.5}}},
            "hcloud_lb:vrrp:check:interval: 0.5 is not whole seconds (1-3600)",
        ),
        (
            {"vrrp": {"check": {"probe_interval": 2}}},
            "hcloud_lb:vrrp:check:probe_interval: must not exceed interval (1 s)",
        ),
        (
            {"vrrp": {"check": {"probe_interval": "often"}}},
            "hcloud_lb:vrrp:check:probe_interval: 'often' is not a positive number",
        ),
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
            "hcloud_lb:nodes:lb-master:priority: 255 is not a whole number (1-254)",
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
        "priority": 254,
        "address": "10.0.0.2",
        "peers": ["10.0.0.3"],
        "state": "MASTER",
        "check_weight": 0,
        "outranked_by": [],
    }


@pytest.mark.parametrize(
    ("mine", "theirs", "outranked"),
    [
        ((100, "10.0.0.3"), (200, "10.0.0.2"), True),  # higher priority
        ((100, "10.0.0.2"), (100, "10.0.0.3"), True),  # equal: the higher address wins
        ((100, "10.0.0.9"), (100, "10.0.0.10"), True),  # as addresses, not as strings
        ((100, "fd00::2"), (100, "fd00::10"), True),
        ((200, "10.0.0.2"), (100, "10.0.0.3"), False),  # lower priority, whatever the address
        ((100, "10.0.0.3"), (100, "10.0.0.2"), False),
    ],
)
def test_a_node_is_outranked_by_a_peer_that_would_win_the_vrrp_election(
    settings, mine, theirs, outranked
):
    settings["nodes"] = {
        "lb-master": {"priority": mine[0], "address": mine[1]},
        "lb-backup": {"priority": theirs[0], "address": theirs[1]},
        "lb-spare": {"priority": 1, "address": "10.0.0.99"},  # outranked by every other node
    }
    assert hcloud_lb.node(settings)["outranked_by"] == (["lb-backup"] if outranked else [])


def test_a_missing_salt_call_is_named(settings):
    settings["lookup"]["salt_call"] = "/nonexistent/salt-call"
    assert problems(settings) == [
        "hcloud_lb:lookup:salt_call: /nonexistent/salt-call is not an executable salt-call; "
        "the failover hook needs Salt on the node (install it, or point this at its salt-call)"
    ]


@pytest.mark.parametrize("key", ["run_dir", "hook_config_dir", "hook_cache_dir"])
@pytest.mark.parametrize("path", ["run/hcloud_lb", "/run/hcloud lb", "/run/$(id)"])
def test_a_hook_directory_must_be_a_plain_absolute_path(settings, key, path):
    settings["lookup"][key] = path
    assert problems(settings) == [
        f"hcloud_lb:lookup:{key}: {path!r} is not an absolute path of letters, digits and _.+-/"
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


def test_script_security_of_a_missing_or_relative_path(tmp_path):
    missing = tmp_path / "scripts" / "check"
    assert hcloud_lb.script_security_problems(missing) == [f"{missing} does not exist"]
    assert hcloud_lb.script_security_problems("scripts/check") == [
        "scripts/check is not an absolute path"
    ]


# ---------------------------------------------------------------- the node is __salt__'s
# As the salt-ssh wrapper this module runs on the master: what it says about the
# node's files must come from __salt__ (the target), never from the local filesystem.


def test_the_node_checks_ask_the_node(settings, monkeypatch):
    """salt_call and the interfaces are looked up on the node, with nothing but the name."""
    asked = []

    def target_retcode(cmd, **kwargs):
        asked.append((cmd, kwargs))
        return 0  # the target has them, though this host does not

    monkeypatch.setitem(hcloud_lb.__salt__, "cmd.retcode", target_retcode)
    settings["lookup"]["salt_call"] = "/opt/target-only/salt-call"
    assert problems(settings) == []
    options = {"python_shell": False, "ignore_retcode": True}
    assert sorted(asked) == sorted(
        [
            (["test", "-x", "/opt/target-only/salt-call"], options),
            (["test", "-e", "/sys/class/net/eth0"], options),  # public_interface
            (["test", "-e", "/sys/class/net/ens10"], options),  # vrrp:interface
            (["test", "-e", "/sys/class/net/ens10"], options),  # alias_ips:lb-private
        ]
    )


def test_an_interface_the_node_lacks_is_named(settings):
    settings["vrrp"]["interface"] = "ens11"
    assert problems(settings) == [
        "hcloud_lb:vrrp:interface: ens11 is not an interface of this node"
    ]


def test_script_security_asks_the_node(monkeypatch):
    target = {
        "/": {"uid": 0, "mode": "0755"},
        "/etc": {"uid": 0, "mode": "0755"},
        "/etc/keepalived": {"uid": 1000, "mode": "0775"},
        "/etc/keepalived/check": {"uid": 0, "mode": "0700"},
    }

    def target_stats(path):
        if path not in target:
            raise CommandExecutionError(f"Path not found: {path}")
        return target[path]

    monkeypatch.setitem(hcloud_lb.__salt__, "file.stats", target_stats)
    assert hcloud_lb.script_security_problems("/etc/keepalived/check") == [
        "/etc/keepalived is not owned by root",
        "/etc/keepalived is writable by group or others",
    ]
    assert hcloud_lb.script_security_problems("/etc/keepalived/notify") == [
        "/etc/keepalived/notify does not exist"
    ]


def test_the_salt_ssh_wrapper_is_this_module():
    wrapper = REPO / "_wrapper" / "hcloud_lb.py"
    assert wrapper.is_symlink()
    assert os.readlink(wrapper) == "../_modules/hcloud_lb.py"
    assert wrapper.resolve() == (REPO / "_modules" / "hcloud_lb.py").resolve()


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("root", "hcloud_lb:vrrp:check:command_user: must not be root"),
        ("no-such-user", "hcloud_lb:vrrp:check:command_user: no-such-user is not a user"),
        ("nobody", None),
    ],
)
def test_a_check_command_runs_as_an_existing_user_other_than_root(settings, user, expected):
    settings["vrrp"]["check"].update({"command": ["/bin/true", "-x"], "command_user": user})
    found = problems(settings)
    assert found == ([] if expected is None else [found[0]])
    assert expected is None or found[0].startswith(expected)
