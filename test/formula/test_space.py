"""
The configuration space, not one pillar: every combination of profile,
addresses, preemption, address family, group count and check weight,
rendered for both nodes by the formula and checked by haproxy -c and
keepalived -t. What validation accepts, both daemons must accept.
"""

import itertools

import pytest

from .space import NODES, Renderer, pillar

DIMENSIONS = {
    "profile": ("default", "fast"),
    "addresses": ("floating", "alias", "both"),
    "preemption": ("preempt", "nopreempt", "preempt_delay"),
    "family": ("ipv4", "ipv6", "both"),
    "groups": (1, 3),
    "weight": (0, -10),
}
COMBINATIONS = [
    dict(zip(DIMENSIONS, values, strict=True)) for values in itertools.product(*DIMENSIONS.values())
]


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    with Renderer(tmp_path_factory.mktemp("space")) as renderer:
        yield renderer


def refused_by_design(point):
    """nopreempt with a weighted check: the weight alone never fails over."""
    return point["preemption"] == "nopreempt" and point["weight"] != 0


def test_every_combination_renders_configs_both_daemons_accept_on_every_node(renderer):
    cases = [
        {"id": node, "pillar": pillar(**point), "point": point}
        for point in COMBINATIONS
        for node in NODES
    ]
    results = renderer.render([{"id": c["id"], "pillar": c["pillar"]} for c in cases])
    assert len(results) == len(cases) == len(COMBINATIONS) * len(NODES) == 432
    failures, accepted = [], 0
    for index, (case, result) in enumerate(zip(cases, results, strict=True)):
        label = f"{case['id']} {case['point']}"
        if refused_by_design(case["point"]):
            if not any(
                e.startswith("hcloud_lb:vrrp:check:weight: -10 only") for e in result["errors"]
            ):
                failures.append(f"{label}: not refused as it must be: {result['errors']}")
            continue
        if result["errors"]:
            failures.append(f"{label}: refused: {result['errors']}")
            continue
        for daemon, (ok, output) in renderer.check(result, f"case{index}").items():
            if not ok:
                failures.append(f"{label}: {daemon} refuses it:\n{output}\n{result[daemon]}")
        accepted += 1
    assert not failures, "\n".join(failures[:5]) + f"\n({len(failures)} failures)"
    assert accepted == 2 * len([p for p in COMBINATIONS if not refused_by_design(p)])


def test_the_rendered_configs_say_what_the_point_asks(renderer):
    """Spot checks that the dimensions reach the configs (the checkers alone would not tell)."""
    points = {
        "fast, floating only, preempt_delay": dict(
            profile="fast",
            addresses="floating",
            preemption="preempt_delay",
            family="both",
            groups=3,
            weight=-10,
        ),
        "default, alias only, nopreempt": dict(
            profile="default",
            addresses="alias",
            preemption="nopreempt",
            family="ipv4",
            groups=1,
            weight=0,
        ),
    }
    cases = [{"id": "lb-a", "pillar": pillar(**point)} for point in points.values()]
    fast, alias = renderer.render(cases)
    assert not fast["errors"] and not alias["errors"]
    keepalived = fast["keepalived"]
    assert "vrrp_version 3" in keepalived and "advert_int 0.1" in keepalived
    assert "state BACKUP" in keepalived and "preempt_delay 5" in keepalived
    assert "weight -10" in keepalived and "authentication" not in keepalived
    assert "127.255.42.1/32 dev lo" in keepalived  # no alias IP: the loopback VIP
    haproxy = fast["haproxy"]
    assert "bind 203.0.113.10:80" in haproxy and "bind 2001:db8:2::1:443" in haproxy
    assert "monitor fail if { nbsrv(g0-web) lt 1 }" in haproxy
    assert "server two web0.example.internal:8080 init-addr last,libc,none" in haproxy
    keepalived = alias["keepalived"]
    assert "nopreempt" in keepalived and "auth_pass p4ss-w0r" in keepalived
    assert "10.0.1.1/32 dev ens10" in keepalived and "127.255" not in keepalived
    assert "bind 10.0.1.1:80" in alias["haproxy"]
