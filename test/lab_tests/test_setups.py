"""
Setups other than the lab's default, each a whole pillar as a user writes it:
the lab builds the project from it (its floating IPs, the private network),
its salt-master applies it by highstate, then haproxy dies on the MASTER and
everything the pillar moves must follow to the other node, with traffic
through every group's address answered there.

Each setup builds its own lab (about 30 s) and fails over once.
"""

import dataclasses
import time

import pytest

from helpers import wait_for
from lab.lab import NODES, Lab, line_balancer, web_balancer
from lab_tests.test_failover import SWITCH_BOUND, assert_none_failed_after_switch, fail_over

LB1, LB2 = NODES


@dataclasses.dataclass
class Setup:
    pillar: dict
    moves: set  # what the API must show moving: floating IPs as it writes them, alias IPs
    urls: set  # where a user sends requests: every group's address
    old_master: str  # the state the old master is in once the other node took over


SETUPS = {
    # The most common setup: floating IPs named by name, nothing else but the
    # defaults (VRRPv2, preemption, the check failing over).
    "floating_ips_only": Setup(
        pillar={
            "hcloud_lb": {
                "public_interface": "eth0",
                "vrrp": {"interface": "ens10"},
                "nodes": {
                    LB1: {"priority": 254, "address": NODES[LB1]},
                    LB2: {"priority": 250, "address": NODES[LB2]},
                },
                "groups": {
                    "www": {
                        "floating_ip": "lb-www",
                        "address": "10.240.100.1",
                        "balancers": {"web": web_balancer()},
                    },
                    "api": {
                        "floating_ip": "lb-api",
                        "address": "10.240.100.2",
                        "balancers": {"web": web_balancer(), "lines": line_balancer(9000)},
                    },
                },
            }
        },
        moves={"10.240.100.1", "10.240.100.2"},
        urls={"http://10.240.100.1/", "http://10.240.100.2/"},
        old_master="FAULT",
    ),
    # An internal load balancer: one alias IP in the private network, a group
    # binding it, no floating IP; no VRRP authentication, no preemption, equal
    # priorities (seed 001).
    "alias_ip_only": Setup(
        pillar={
            "hcloud_lb": {
                "vrrp": {"interface": "ens10", "preempt": False, "authentication": False},
                "nodes": {
                    LB1: {"priority": 100, "address": NODES[LB1]},
                    LB2: {"priority": 100, "address": NODES[LB2]},
                },
                "alias_ips": {"lb-private": {"interface": "ens10", "ips": ["10.241.0.50"]}},
                "groups": {
                    "internal": {"address": "10.241.0.50", "balancers": {"web": web_balancer()}}
                },
            }
        },
        moves={"10.241.0.50"},
        urls={"http://10.241.0.50/"},
        old_master="FAULT",
    ),
    # IPv4 and IPv6 floating IPs (the IPv4 one named by its ID), the fast
    # profile, and a returning master waiting 2 s before it takes over.
    "ipv4_and_ipv6_fast": Setup(
        pillar={
            "hcloud_lb": {
                "vrrp": {"interface": "ens10", "profile": "fast", "preempt_delay": 2},
                "nodes": {
                    LB1: {"priority": 254, "address": NODES[LB1]},
                    LB2: {"priority": 250, "address": NODES[LB2]},
                },
                "groups": {
                    "web": {
                        "floating_ip": 5,
                        "address": "10.240.100.1",
                        "balancers": {"web": web_balancer()},
                    },
                    "web6": {
                        "floating_ip": "lb-web6",
                        "address": "2001:db8:100:1::1",
                        "balancers": {"web": web_balancer()},
                    },
                },
            }
        },
        moves={"10.240.100.1", "2001:db8:100:1::/64"},
        urls={"http://10.240.100.1/", "http://[2001:db8:100:1::1]/"},
        old_master="FAULT",
    ),
    # A group giving only its floating IP's address; the check also wants the
    # haproxy process, and a failing check lowers lb1 by 100, below lb2.
    "weighted_check_floating_ip_by_address": Setup(
        pillar={
            "hcloud_lb": {
                "vrrp": {"interface": "ens10", "check": {"processes": ["haproxy"]}},
                "nodes": {
                    LB1: {"priority": 254, "address": NODES[LB1], "check_weight": -100},
                    LB2: {"priority": 200, "address": NODES[LB2]},
                },
                "groups": {
                    "web": {"floating_ip": "10.240.100.7", "balancers": {"web": web_balancer()}}
                },
            }
        },
        moves={"10.240.100.7"},
        urls={"http://10.240.100.7/"},
        old_master="BACKUP",
    ),
}


@pytest.mark.parametrize("name", list(SETUPS))
def test_a_pillar_applied_by_highstate_fails_over_when_haproxy_dies(name):
    setup = SETUPS[name]
    lab = Lab(name=f"hls{list(SETUPS).index(name)}", pillar=setup.pillar)
    traffic = None
    try:
        lab.up()
        if setup.pillar["hcloud_lb"]["vrrp"].get("preempt_delay"):
            # Every node starts BACKUP: the lab may settle on lb2 before lb1
            # takes over, preempt_delay later. The steady state is lb1's.
            assert wait_for(lambda: lab.master_node() == LB1 and lab.all_on(LB1), 60), (
                lab.describe()
            )
            lab.wait_steady()
        master = lab.master_node()
        other = next(role for role in lab.nodes if role != master)
        # What the pillar names is in the project, on the MASTER, and every
        # group's address answers through it.
        assert lab.holders() == dict.fromkeys(setup.moves, master), lab.describe()
        assert set(lab.urls()) == setup.urls
        for url in setup.urls:
            ok, answer = lab.http("client", url)
            assert ok and lab.node_of(answer) == master, (url, answer)

        traffic = lab.start_traffic()
        time.sleep(1)
        report = fail_over(lab, traffic, lambda: lab.kill_haproxy(master), "haproxy killed", other)
        assert report.failover_seconds < SWITCH_BOUND, report.lines()
        assert lab.master_node() == other, lab.describe()
        assert lab.nodes[master].vrrp_state() == setup.old_master, lab.describe()
        # Every address moved, and each group's address is served by the new node.
        assert lab.holders() == dict.fromkeys(setup.moves, other), lab.describe()
        records = traffic.records()
        for url in setup.urls:
            assert lab.answers_through(records, other, report.switch_done, url), (
                url,
                report.lines(),
            )
        assert_none_failed_after_switch(lab, report)
    finally:
        if traffic:
            traffic.stop()
        lab.down(quiet=True)
