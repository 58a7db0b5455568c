"""
A property over generated pillars: whatever valid pillar a user writes,
across every key the formula knows, validation accepts it and the configs
rendered for every node pass haproxy -c and keepalived -t. The generator
draws what the README documents as valid; a refusal or a checker's
complaint is a bug in the formula (or in what the README promises).
"""

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _modules import hcloud_lb

from .space import Renderer

NAME = st.text("abcdefghijklmnopqrstuvwxyz0123456789_.", min_size=1, max_size=12).map(
    lambda s: "n" + s
)
MONITOR_PORTS = range(8400, 8410)
# haproxy times, up to its limit of 2^31 - 1 ms.
TIMES = st.builds(
    lambda n, unit: f"{n}{unit}",
    st.integers(1, 999),
    st.sampled_from(["", "us", "ms", "s", "m", "h", "d"]),
).filter(lambda t: hcloud_lb._haproxy_time_ms(t) <= hcloud_lb.MAX_TIMEOUT_MS)


def digits(value):
    """An int as the write-ups sometimes give one: a string of its digits."""
    return st.sampled_from([value, str(value)])


@st.composite
def servers(draw, family):
    hosts = {
        "ipv4": st.integers(1, 250).map(lambda n: f"10.9.0.{n}"),
        "ipv6": st.integers(1, 9999).map(lambda n: f"2001:db8:9::{n:x}"),
        "name": st.from_regex(r"[a-z]([a-z0-9-]{0,7}[a-z0-9])?\.example\.internal", fullmatch=True),
    }
    keywords = st.lists(
        st.sampled_from(
            [
                "check",
                "backup",
                "send-proxy",
                "send-proxy-v2",
                "inter 2s",
                "fall 3",
                "rise 2",
                "weight 10",
                "maxconn 100",
                "slowstart 30s",
                "on-marked-down shutdown-sessions",
            ]
        ),
        unique=True,
        max_size=4,
    )
    names = draw(st.lists(NAME, min_size=1, max_size=3, unique=True))
    return {
        name: {
            "host": draw(hosts[draw(st.sampled_from([family, "name"]))]),
            "port": draw(st.integers(1, 65535).flatmap(digits)),
            "options": " ".join(draw(keywords)),
        }
        for name in names
    }


@st.composite
def balancers(draw, ports, family):
    mode = draw(st.sampled_from(["tcp", "http"]))
    algorithms = ["roundrobin", "static-rr", "leastconn", "first", "source", "random"]
    options = ["ssl-hello-chk", "tcpka", "redispatch", "allbackups", "tcp-check"]
    if mode == "http":
        algorithms += ["uri", "url_param userid", "hdr(host)", "uri whole"]
        options += ["forwardfor", "http-server-close", "httpchk GET /health HTTP/1.1"]
    backend = draw(servers(family))
    checked = any("check" in s["options"].split() for s in backend.values())
    return {
        "mode": mode,
        "algorithm": draw(st.sampled_from(algorithms)),
        "frontend_port": ports.pop(),
        "options": draw(st.lists(st.sampled_from(options), unique=True, max_size=2)),
        "check_backends": checked and draw(st.booleans()),
        "backend_servers": backend,
    }


@st.composite
def pillars(draw):
    node_count = draw(st.integers(2, 3))
    priorities = draw(st.lists(st.integers(1, 254), min_size=node_count, max_size=node_count))
    nodes = {
        f"lb-{index}": {"priority": priority, "address": f"10.0.0.{index + 2}"}
        for index, priority in enumerate(priorities)
    }
    profile = draw(st.sampled_from(["default", "fast"]))
    preempt = draw(st.booleans())
    authentication = draw(st.booleans())
    vrrp = {
        "interface": draw(st.sampled_from(["ens10", "eth0"])),
        "virtual_router_id": draw(st.integers(1, 255).flatmap(digits)),
        "authentication": authentication,
        "profile": profile,
        "preempt": preempt,
    }
    if authentication:
        vrrp["password"] = draw(st.text("abcXYZ019_.,:;+=@%^*/?~-", min_size=1, max_size=8))
    if preempt:
        vrrp["preempt_delay"] = draw(st.integers(0, 1000))
    interval = draw(st.integers(1, 5))
    check = {
        "interval": interval,
        "probe_interval": draw(st.floats(0.05, interval)),
        "timeout": draw(st.floats(0.1, 5)),
        "fall": draw(st.integers(1, 100)),
        "rise": draw(st.integers(1, 100)),
        "processes": draw(st.lists(st.sampled_from(["haproxy", "sshd", "cron"]), unique=True)),
    }
    if draw(st.booleans()):
        check["command"] = ["/bin/true", *draw(st.lists(st.sampled_from(["-x", "a=b", "1"])))]
        check["command_user"] = "nobody"
    ordered = sorted(priorities, reverse=True)
    if preempt and ordered[1] > 1:  # keepalived keeps a priority at 1 at least
        # A weight that lets the top node's failed check hand over.
        drop = ordered[0] - ordered[1] + 1
        if drop <= 253:
            check["weight"] = -draw(st.integers(drop, 253))
    vrrp["check"] = check

    addresses = ipaddress.ip_network("203.0.113.0/24").hosts()
    v6 = ipaddress.ip_network("2001:db8:1::/64").hosts()
    alias_pool = ipaddress.ip_network("10.1.0.0/24").hosts()
    alias_ips = []
    groups = {}
    for group_name in draw(st.lists(NAME, min_size=1, max_size=3, unique=True)):
        kind = draw(st.sampled_from(["ipv4", "ipv6", "alias", "by-address"]))
        ports = draw(
            st.lists(
                st.integers(1, 65535).filter(lambda p: p not in MONITOR_PORTS),
                min_size=3,
                max_size=3,
                unique=True,
            )
        )
        if kind == "alias":
            address = str(next(alias_pool))
            alias_ips.append(address)
            group = {"address": address}
        elif kind == "ipv6":
            group = {"floating_ip": f"fip-{group_name}", "address": str(next(v6))}
        elif kind == "by-address":
            group = {"floating_ip": str(next(addresses))}
        else:
            group = {"floating_ip": f"fip-{group_name}", "address": str(next(addresses))}
        family = "ipv6" if kind == "ipv6" else "ipv4"
        # "-" joins group and balancer names into haproxy's: names without it cannot clash.
        names = draw(st.lists(NAME, min_size=1, max_size=3, unique=True))
        group["balancers"] = {name: draw(balancers(ports, family)) for name in names}
        groups[group_name] = group

    monitor_port, prometheus_port = draw(
        st.lists(st.sampled_from(MONITOR_PORTS), min_size=2, max_size=2, unique=True)
    )
    settings_ = {
        "name": draw(NAME),
        "max_connections": draw(st.integers(1, 500_000).flatmap(digits)),
        "floating_ip_binding": draw(st.sampled_from(["interface", "nonlocal"])),
        "public_interface": "eth0",
        "vrrp": vrrp,
        "nodes": nodes,
        "groups": groups,
        "haproxy": {
            "stats_socket": draw(st.sampled_from(["/run/haproxy/admin.sock", "/run/lb.sock"])),
            "monitor": draw(
                st.sampled_from(["127.0.0.1", "0.0.0.0", "[::1]"]).map(
                    lambda host: f"{host}:{monitor_port}"
                )
            ),
            "prometheus": {
                "enabled": draw(st.booleans()),
                "bind": f"127.0.0.1:{prometheus_port}",
            },
            "timeouts": {key: draw(TIMES) for key in ("connect", "client", "server", "tunnel")},
        },
        "hook": {
            "deadline": draw(st.floats(0.5, 3600)),
            "reassert_interval": draw(st.integers(1, 3600)),
        },
    }
    if alias_ips or draw(st.booleans()):
        extra = [str(next(alias_pool)) for _ in range(draw(st.integers(0, 2)))]
        settings_["alias_ips"] = {
            draw(NAME): {"interface": "ens10", "ips": alias_ips + extra or [str(next(alias_pool))]}
        }
    for node in nodes.values():
        if preempt and draw(st.booleans()) and "weight" in check:
            node["check_weight"] = check["weight"]
    return {"hcloud": {"token": "property-test-token"}, "hcloud_lb": settings_}


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    with Renderer(tmp_path_factory.mktemp("properties")) as renderer:
        yield renderer


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(pillar=pillars())
def test_every_valid_pillar_renders_configs_both_daemons_accept_on_every_node(renderer, pillar):
    nodes = list(pillar["hcloud_lb"]["nodes"])
    results = renderer.render([{"id": node, "pillar": pillar} for node in nodes])
    for node, result in zip(nodes, results, strict=True):
        assert result["errors"] == [], (node, pillar)
        for daemon, (ok, output) in renderer.check(result, f"prop-{node}").items():
            assert ok, f"{daemon} refuses the config for {node}:\n{output}\n{result[daemon]}"
