"""
A hostile corpus: pillars written by someone who can write pillar but not
states (a CMDB, an ext_pillar, another team), malformed or crafted to reach
a shell, a config directive or a type the formula does not expect. Each is
applied for real (state.apply hcloud_lb over a running load balancer); each
must be refused whole by validation, naming the key, with nothing on the
host changed and the load balancer still serving.
"""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from _modules import hcloud_lb
from helpers import REPO

from .conftest import http_get

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="applies the formula: needs root")

WORKER = Path(__file__).with_name("apply_worker.py")
PYTHON = REPO / ".venv" / "bin" / "python"
INVALID = "hcloud_lb pillar is invalid, nothing was changed"
GROUP_URL = "http://10.231.1.10:8080/"


def lb(**settings):
    return {"hcloud_lb": settings}


def balancer(**values):
    return lb(groups={"web": {"balancers": {"http": values}}})


def server(**values):
    return balancer(backend_servers={"a": values})


def check(**values):
    return lb(vrrp={"check": values})


SHELL = ["x;reboot", "x$(id)", "x`id`", "x|id", "x&&id", "x id", "x\nid", "x'id'", 'x"y']

# (override, the key the refusal must name)
CORPUS = [
    # Shell metacharacters where a value reaches a cmd.run or a script.
    *[(lb(public_interface=f"eth0{s[1:]}"), "hcloud_lb:public_interface") for s in SHELL],
    (lb(public_interface="eth0123456789abc"), "hcloud_lb:public_interface"),  # 16 characters
    (lb(public_interface=".."), "hcloud_lb:public_interface"),
    (lb(public_interface="eth/0"), "hcloud_lb:public_interface"),
    (lb(public_interface="eth0:1"), "hcloud_lb:public_interface"),
    (lb(public_interface="eth9"), "hcloud_lb:public_interface"),  # not on this node
    (lb(public_interface=["eth0"]), "hcloud_lb:public_interface"),
    # A newline in an interface name would add keepalived directives.
    (lb(vrrp={"interface": "ens10\n    notify_backup /bin/sh"}), "hcloud_lb:vrrp:interface"),
    (lb(vrrp={"interface": "ens10 "}), "hcloud_lb:vrrp:interface"),
    (lb(vrrp={"interface": "ens10#"}), "hcloud_lb:vrrp:interface"),
    (lb(vrrp={"interface": ""}), "hcloud_lb:vrrp:interface"),
    (
        lb(alias_ips={"lb-private": {"interface": "ens10\n}\nvrrp_script x {"}}),
        "hcloud_lb:alias_ips:lb-private:interface",
    ),
    (
        lb(alias_ips={"lb-private": {"interface": "ens10;id"}}),
        "hcloud_lb:alias_ips:lb-private:interface",
    ),
    # IPv6 scope ids (Python's ipaddress accepts them) and padded addresses.
    (lb(groups={"web": {"address": "fe80::1%eth0"}}), "hcloud_lb:groups:web:address"),
    (lb(groups={"web": {"address": "fe80::1%$(id)"}}), "hcloud_lb:groups:web:address"),
    (lb(groups={"web": {"address": " 10.231.1.10"}}), "hcloud_lb:groups:web:address"),
    (lb(groups={"web": {"address": "10.231.1.10\n"}}), "hcloud_lb:groups:web:address"),
    (lb(groups={"web": {"address": "10.231.1.10/32"}}), "hcloud_lb:groups:web:address"),
    (lb(groups={"web": {"address": 169090826}}), "hcloud_lb:groups:web:address"),
    (lb(haproxy={"monitor": "[fe80::1%lo]:8404"}), "hcloud_lb:haproxy:monitor"),
    (lb(haproxy={"monitor": "127.0.0.1:8404\n    stats enable"}), "hcloud_lb:haproxy:monitor"),
    (lb(haproxy={"monitor": "10.231.0.2:8404"}), "hcloud_lb:haproxy:monitor"),  # not on every node
    (lb(haproxy={"monitor": "localhost:8404"}), "hcloud_lb:haproxy:monitor"),
    (lb(haproxy={"monitor": "0.0.0.0:8080"}), "hcloud_lb:groups:web:balancers:http:frontend_port"),
    (
        lb(haproxy={"prometheus": {"enabled": True, "bind": "127.0.0.1:\uff18\uff14\uff10\uff15"}}),
        "hcloud_lb:haproxy:prometheus:bind",
    ),
    (lb(nodes={"lb-master": {"address": "fe80::2%ens10"}}), "hcloud_lb:nodes:lb-master:address"),
    (lb(nodes={"lb-master": {"address": "fd00::2"}}), "hcloud_lb:nodes:lb-master:address"),
    (
        lb(alias_ips={"lb-private": {"ips": ["10.231.0.100/32"]}}),
        "hcloud_lb:alias_ips:lb-private:ips",
    ),
    (lb(alias_ips={"lb-private": {"ips": ["fd00::100"]}}), "hcloud_lb:alias_ips:lb-private:ips"),
    (lb(alias_ips={"lb-private": {"ips": "10.231.0.100"}}), "hcloud_lb:alias_ips:lb-private:ips"),
    # Lookup paths go into scripts and state arguments.
    (
        lb(lookup={"keepalived": {"scripts_dir": "/etc/keepalived/$(id)"}}),
        "hcloud_lb:lookup:keepalived:scripts_dir",
    ),
    (
        lb(lookup={"keepalived": {"scripts_dir": "/etc/../tmp"}}),
        "hcloud_lb:lookup:keepalived:scripts_dir",
    ),
    (
        lb(lookup={"keepalived": {"scripts_dir": "etc/keepalived"}}),
        "hcloud_lb:lookup:keepalived:scripts_dir",
    ),
    (
        lb(lookup={"keepalived": {"config": "/etc/keepalived/k.conf\n"}}),
        "hcloud_lb:lookup:keepalived:config",
    ),
    (
        lb(lookup={"keepalived": {"bin": "/usr/sbin/keepalived -D"}}),
        "hcloud_lb:lookup:keepalived:bin",
    ),
    (
        lb(lookup={"keepalived": {"service": "keepalived;id"}}),
        "hcloud_lb:lookup:keepalived:service",
    ),
    (lb(lookup={"keepalived": {"enable": "false"}}), "hcloud_lb:lookup:keepalived:enable"),
    (lb(lookup={"haproxy": {"config": "/etc/haproxy/a b.cfg"}}), "hcloud_lb:lookup:haproxy:config"),
    (lb(lookup={"haproxy": {"bin": "/usr/sbin/haproxy`id`"}}), "hcloud_lb:lookup:haproxy:bin"),
    (lb(lookup={"haproxy": {"user": "haproxy\n    daemon"}}), "hcloud_lb:lookup:haproxy:user"),
    (lb(lookup={"haproxy": {"group": "root wheel"}}), "hcloud_lb:lookup:haproxy:group"),
    (lb(lookup={"haproxy": {"enable": 1}}), "hcloud_lb:lookup:haproxy:enable"),
    (lb(lookup={"run_dir": "/run/hcloud lb"}), "hcloud_lb:lookup:run_dir"),
    (lb(lookup={"run_dir": "/run/$(id)"}), "hcloud_lb:lookup:run_dir"),
    (lb(lookup={"hook_config_dir": "/etc/hcloud_lb/salt;id"}), "hcloud_lb:lookup:hook_config_dir"),
    (lb(lookup={"hook_cache_dir": "~/cache"}), "hcloud_lb:lookup:hook_cache_dir"),
    (lb(lookup={"salt_call": "/usr/bin/salt-call --local"}), "hcloud_lb:lookup:salt_call"),
    (lb(lookup={"salt_call": "/nonexistent/salt-call"}), "hcloud_lb:lookup:salt_call"),
    (lb(lookup={"pkgs": ["haproxy; rm -rf /"]}), "hcloud_lb:lookup:pkgs"),
    (lb(lookup={"pkgs": "haproxy"}), "hcloud_lb:lookup:pkgs"),
    (lb(lookup={"network": {"style": "shell"}}), "hcloud_lb:lookup:network:style"),
    (lb(lookup={"network": {"config": "/etc/network/$(id)"}}), "hcloud_lb:lookup:network:config"),
    (lb(lookup={"shell": "/bin/sh"}), "hcloud_lb:lookup:shell"),
    # Newlines and comment characters in haproxy values would add sections.
    (
        balancer(options=["forwardfor\n    stats enable"]),
        "hcloud_lb:groups:web:balancers:http:options",
    ),
    (balancer(options=["httpchk GET /\nlisten x"]), "hcloud_lb:groups:web:balancers:http:options"),
    (balancer(options=["no-such-option"]), "hcloud_lb:groups:web:balancers:http:options"),
    (balancer(options="forwardfor"), "hcloud_lb:groups:web:balancers:http:options"),
    (
        balancer(algorithm="roundrobin\n    server evil 192.0.2.1:80"),
        "hcloud_lb:groups:web:balancers:http:algorithm",
    ),
    (balancer(algorithm="roundrobin #"), "hcloud_lb:groups:web:balancers:http:algorithm"),
    (balancer(algorithm="hash"), "hcloud_lb:groups:web:balancers:http:algorithm"),
    (
        lb(groups={"web": {"balancers": {"raw": {"algorithm": "hdr(host)"}}}}),
        "hcloud_lb:groups:web:balancers:raw:algorithm",
    ),
    (
        lb(groups={"web": {"balancers": {"raw": {"options": ["forwardfor"]}}}}),
        "hcloud_lb:groups:web:balancers:raw:options",
    ),
    (balancer(mode="http\n"), "hcloud_lb:groups:web:balancers:http:mode"),
    (balancer(mode="health"), "hcloud_lb:groups:web:balancers:http:mode"),
    (balancer(check_backends="yes"), "hcloud_lb:groups:web:balancers:http:check_backends"),
    (
        lb(
            groups={
                "web": {
                    "balancers": {
                        "raw": {"check_backends": True, "backend_servers": {"a": {"options": ""}}}
                    }
                }
            }
        ),
        "hcloud_lb:groups:web:balancers:raw:check_backends",
    ),
    (
        server(options="check\n    server evil 192.0.2.1:80"),
        "hcloud_lb:groups:web:balancers:http:backend_servers:a:options",
    ),
    (
        server(options="check crt /etc/shadow"),
        "hcloud_lb:groups:web:balancers:http:backend_servers:a:options",
    ),
    (
        server(options="check  inter 2s"),
        "hcloud_lb:groups:web:balancers:http:backend_servers:a:options",
    ),
    (
        server(options="check inter"),
        "hcloud_lb:groups:web:balancers:http:backend_servers:a:options",
    ),
    (
        server(options="weight 1000"),
        "hcloud_lb:groups:web:balancers:http:backend_servers:a:options",
    ),
    (server(options=["check"]), "hcloud_lb:groups:web:balancers:http:backend_servers:a:options"),
    (server(host="127.0.0.1 backup"), "hcloud_lb:groups:web:balancers:http:backend_servers:a:host"),
    (server(host="web.example\n"), "hcloud_lb:groups:web:balancers:http:backend_servers:a:host"),
    (server(host="-web"), "hcloud_lb:groups:web:balancers:http:backend_servers:a:host"),
    (server(port="18081 "), "hcloud_lb:groups:web:balancers:http:backend_servers:a:port"),
    (server(port="1_8081"), "hcloud_lb:groups:web:balancers:http:backend_servers:a:port"),
    (server(port=18081.5), "hcloud_lb:groups:web:balancers:http:backend_servers:a:port"),
    (server(extra="x"), "hcloud_lb:groups:web:balancers:http:backend_servers:a:extra"),
    (
        lb(haproxy={"timeouts": {"client": "50s\n    stats enable"}}),
        "hcloud_lb:haproxy:timeouts:client",
    ),
    (lb(haproxy={"timeouts": {"server": "5 s"}}), "hcloud_lb:haproxy:timeouts:server"),
    (lb(haproxy={"timeouts": {"connect": "-1s"}}), "hcloud_lb:haproxy:timeouts:connect"),
    (lb(haproxy={"timeouts": {"tunnel": "100000d"}}), "hcloud_lb:haproxy:timeouts:tunnel"),
    (lb(haproxy={"timeouts": {"tunnel": "1w"}}), "hcloud_lb:haproxy:timeouts:tunnel"),
    (
        lb(haproxy={"stats_socket": "/run/haproxy/admin.sock level admin"}),
        "hcloud_lb:haproxy:stats_socket",
    ),
    (lb(haproxy={"stats_socket": "admin.sock"}), "hcloud_lb:haproxy:stats_socket"),
    # Names are checked whole: not only after their last ":".
    (lb(groups={"we:b": {"floating_ip": "x", "address": "10.231.1.11"}}), "hcloud_lb:groups:we:b"),
    # (a newline in a message is shown escaped: the refusal stays one line a problem)
    (lb(groups={"web\nlisten": {"address": "10.231.1.11"}}), "hcloud_lb:groups:web\\nlisten"),
    (lb(groups={"web#": {"address": "10.231.1.11"}}), "hcloud_lb:groups:web#"),
    (lb(groups={"web": {"balancers": {"a b": {}}}}), "hcloud_lb:groups:web:balancers:a b"),
    (
        lb(
            groups={
                "web": {
                    "balancers": {
                        "http": {"backend_servers": {"s;x": {"host": "127.0.0.1", "port": 1}}}
                    }
                }
            }
        ),
        "hcloud_lb:groups:web:balancers:http:backend_servers:s;x",
    ),
    (
        lb(nodes={"lb master": {"priority": 50, "address": "10.231.0.9"}}),
        "hcloud_lb:nodes:lb master",
    ),
    (lb(name="lb\nlb"), "hcloud_lb:name"),
    (lb(name="lb lb"), "hcloud_lb:name"),
    (lb(name=""), "hcloud_lb:name"),
    (lb(floating_ip_binding="nonlocal;id"), "hcloud_lb:floating_ip_binding"),
    (lb(floating_ip_binding=True), "hcloud_lb:floating_ip_binding"),
    (lb(groups={"web": {"floating_ip": "lb-web\n"}}), "hcloud_lb:groups:web:floating_ip"),
    (lb(groups={"web": {"floating_ip": "$(id)"}}), "hcloud_lb:groups:web:floating_ip"),
    # Two sections of one name: group "a-b" balancer "c" and group "a" balancer "b-c".
    (
        lb(
            groups={
                "web": {
                    "balancers": {
                        "http-x": {
                            "mode": "tcp",
                            "algorithm": "first",
                            "frontend_port": 9001,
                            "backend_servers": {"a": {"host": "127.0.0.1", "port": 1}},
                        }
                    }
                },
                "web-http": {
                    "floating_ip": "lb-x",
                    "address": "10.231.1.12",
                    "balancers": {
                        "x": {
                            "mode": "tcp",
                            "algorithm": "first",
                            "frontend_port": 9002,
                            "backend_servers": {"a": {"host": "127.0.0.1", "port": 1}},
                        }
                    },
                },
            }
        ),
        "hcloud_lb:groups:web-http:balancers:x",
    ),
    # Types: booleans are booleans, numbers are finite numbers.
    (lb(haproxy={"prometheus": {"enabled": "false"}}), "hcloud_lb:haproxy:prometheus:enabled"),
    (lb(haproxy={"prometheus": {"enabled": 0}}), "hcloud_lb:haproxy:prometheus:enabled"),
    (lb(vrrp={"preempt": "true"}), "hcloud_lb:vrrp:preempt"),
    (lb(vrrp={"preempt": 1}), "hcloud_lb:vrrp:preempt"),
    (lb(vrrp={"authentication": "no"}), "hcloud_lb:vrrp:authentication"),
    (lb(max_connections="2_000"), "hcloud_lb:max_connections"),
    (
        lb(max_connections="\u0662\u0660\u0660\u0660"),
        "hcloud_lb:max_connections",
    ),  # Arabic-Indic digits
    (lb(max_connections=" 2000"), "hcloud_lb:max_connections"),
    (lb(max_connections=True), "hcloud_lb:max_connections"),
    (lb(max_connections=2000.0), "hcloud_lb:max_connections"),
    (lb(max_connections=10**9), "hcloud_lb:max_connections"),
    (lb(hook={"deadline": math.inf}), "hcloud_lb:hook:deadline"),
    (lb(hook={"deadline": math.nan}), "hcloud_lb:hook:deadline"),
    (lb(hook={"deadline": "inf"}), "hcloud_lb:hook:deadline"),
    (lb(hook={"deadline": "nan"}), "hcloud_lb:hook:deadline"),
    (lb(hook={"deadline": -5}), "hcloud_lb:hook:deadline"),
    (lb(hook={"deadline": True}), "hcloud_lb:hook:deadline"),
    (lb(hook={"reassert_interval": " 15"}), "hcloud_lb:hook:reassert_interval"),
    (lb(hook={"reassert_interval": "15s"}), "hcloud_lb:hook:reassert_interval"),
    (lb(hook={"reassert_interval": 0}), "hcloud_lb:hook:reassert_interval"),
    (lb(hook={"reassert_interval": [15]}), "hcloud_lb:hook:reassert_interval"),
    # The reserve is a count of requests within the hourly bucket of 3600.
    (lb(hook={"reserve": "300 "}), "hcloud_lb:hook:reserve"),
    (lb(hook={"reserve": True}), "hcloud_lb:hook:reserve"),
    (lb(hook={"reserve": 3601}), "hcloud_lb:hook:reserve"),
    (lb(hook={"reserve": -1}), "hcloud_lb:hook:reserve"),
    (lb(hook={"reserve": 300.5}), "hcloud_lb:hook:reserve"),
    (lb(vrrp={"virtual_router_id": "51\n"}), "hcloud_lb:vrrp:virtual_router_id"),
    (lb(vrrp={"virtual_router_id": "0x33"}), "hcloud_lb:vrrp:virtual_router_id"),
    (lb(vrrp={"virtual_router_id": 51.5}), "hcloud_lb:vrrp:virtual_router_id"),
    (lb(vrrp={"preempt_delay": 5000}), "hcloud_lb:vrrp:preempt_delay"),
    (lb(vrrp={"preempt_delay": "5 "}), "hcloud_lb:vrrp:preempt_delay"),
    (lb(nodes={"lb-master": {"priority": "200 "}}), "hcloud_lb:nodes:lb-master:priority"),
    (lb(nodes={"lb-master": {"priority": True}}), "hcloud_lb:nodes:lb-master:priority"),
    (
        lb(nodes={"lb-master": {"check_weight": "\u221210"}}),
        "hcloud_lb:nodes:lb-master:check_weight",
    ),  # U+2212
    (lb(nodes={"lb-master": {"prio": 200}}), "hcloud_lb:nodes:lb-master:prio"),
    (balancer(frontend_port="8080\n"), "hcloud_lb:groups:web:balancers:http:frontend_port"),
    (
        balancer(frontend_port="\u0668\u0660\u0668\u0660"),
        "hcloud_lb:groups:web:balancers:http:frontend_port",
    ),
    (balancer(frontend_port=65536), "hcloud_lb:groups:web:balancers:http:frontend_port"),
    (check(interval=math.inf), "hcloud_lb:vrrp:check:interval"),
    (check(timeout=math.nan), "hcloud_lb:vrrp:check:timeout"),
    (check(probe_interval="0.2 "), "hcloud_lb:vrrp:check:probe_interval"),
    (check(fall=" 1"), "hcloud_lb:vrrp:check:fall"),
    (check(weight="-10 "), "hcloud_lb:vrrp:check:weight"),
    # The health check's own command and processes.
    (check(processes="haproxy"), "hcloud_lb:vrrp:check:processes"),
    (check(processes=["haproxy;id"]), "hcloud_lb:vrrp:check:processes"),
    (check(processes=["a b"]), "hcloud_lb:vrrp:check:processes"),
    (check(processes=["x" * 16]), "hcloud_lb:vrrp:check:processes"),
    (check(command="/bin/true"), "hcloud_lb:vrrp:check:command"),
    (check(command=["true"]), "hcloud_lb:vrrp:check:command"),
    (check(command=["/bin/true", "$(id)"]), "hcloud_lb:vrrp:check:command"),
    (check(command=["/bin/true", 'a"b']), "hcloud_lb:vrrp:check:command"),
    (check(command=["/nonexistent/check"]), "hcloud_lb:vrrp:check:command"),
    (check(command=["/bin/true"], command_user="root"), "hcloud_lb:vrrp:check:command_user"),
    (check(command=["/bin/true"], command_user="nobody\n"), "hcloud_lb:vrrp:check:command_user"),
    (
        check(command=["/bin/true"], command_user="no-such-user"),
        "hcloud_lb:vrrp:check:command_user",
    ),
    # VRRP password: keepalived reads '#' and '!' as comments, '$' as a variable.
    (lb(vrrp={"password": "ab cd"}), "hcloud_lb:vrrp:password"),
    (lb(vrrp={"password": "ab#cd"}), "hcloud_lb:vrrp:password"),
    (lb(vrrp={"password": "ab!cd"}), "hcloud_lb:vrrp:password"),
    (lb(vrrp={"password": "a${x}"}), "hcloud_lb:vrrp:password"),
    (lb(vrrp={"password": "ab\ncd"}), "hcloud_lb:vrrp:password"),
    (lb(vrrp={"password": 12345678}), "hcloud_lb:vrrp:password"),
    (lb(vrrp={"password": "123456789"}), "hcloud_lb:vrrp:password"),
    (lb(vrrp={"authentication": False}), "hcloud_lb:vrrp:password"),  # the password still set
    # The token: not ASCII, or with white space, would fail every failover.
    ({"hcloud": {"token": "tök"}}, "hcloud:token"),
    ({"hcloud": {"token": "tok en"}}, "hcloud:token"),
    ({"hcloud": {"token": "tok\nen"}}, "hcloud:token"),
    ({"hcloud": {"token": ""}}, "hcloud:token"),
    # Unknown keys: a typo is refused, not ignored.
    (lb(vrrp={"prempt": False}), "hcloud_lb:vrrp:prempt"),
    (lb(grups={}), "hcloud_lb:grups"),
    (lb(groups={"web": {"floatingip": "x"}}), "hcloud_lb:groups:web:floatingip"),
    (balancer(backends={}), "hcloud_lb:groups:web:balancers:http:backends"),
    (lb(haproxy={"global": "daemon"}), "hcloud_lb:haproxy:global"),
    # Shapes: lists where mappings belong, and the other way round.
    (lb(groups=[{"address": "10.231.1.10"}]), "hcloud_lb:groups"),
    (lb(nodes=["lb-master", "lb-backup"]), "hcloud_lb:nodes"),
    (lb(vrrp="ens10"), "hcloud_lb:vrrp"),
    (lb(haproxy=None, hook="x"), "hcloud_lb:hook"),
    (lb(alias_ips=["10.231.0.100"]), "hcloud_lb:alias_ips"),
    (lb(nodes={"lb-master": None}), "hcloud_lb:nodes:lb-master"),
]


@pytest.fixture(scope="module")
def applied(deployed):
    """Every pillar of the corpus applied over the deployed load balancer, in one process."""
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            deployed.netns,
            str(PYTHON),
            str(WORKER),
            str(deployed.root / "minion"),
        ],
        input=json.dumps([override for override, _key in CORPUS]),
        capture_output=True,
        text=True,
        timeout=120 + 10 * len(CORPUS),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_the_corpus_is_large_and_spans_every_key():
    assert len(CORPUS) >= 100
    named = {key.split(":")[1] if key.startswith("hcloud_lb:") else key for _o, key in CORPUS}
    top = {*hcloud_lb.KNOWN[""], "hcloud:token"}
    assert top <= named, top - named


@pytest.mark.parametrize("index", range(len(CORPUS)), ids=[repr(k)[1:-1][:50] for _o, k in CORPUS])
def test_each_hostile_pillar_is_refused_whole_naming_its_key(applied, index):
    override, key = CORPUS[index]
    result = applied[index]
    assert list(result["states"]) == [INVALID], (override, result["states"])
    refusal = result["states"][INVALID]
    assert refusal["result"] is False
    lines = refusal["comment"].split("\n- ")[1:]
    assert any(line.startswith(f"{key}: ") for line in lines), (override, refusal["comment"])
    assert result["changed"] == [], (override, result["changed"])


def test_the_load_balancer_still_serves_after_the_corpus(deployed, applied):
    assert http_get(deployed.netns, GROUP_URL)[0] == 200
