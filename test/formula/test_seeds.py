"""
The write-ups' setups as their readers would write them: the pillars of
README.md's "Coming from a write-up", read from the README itself, rendered
for every node and checked by haproxy -c and keepalived -t, with what each
write-up's reader would look for in the result.
"""

import pytest

from helpers import REPO, readme_seeds

from .conftest import FormulaNode
from .space import Renderer

PILLARS, FILES = readme_seeds()


def test_the_readme_has_a_pillar_for_every_seed():
    seeds = sorted(p.name[:3] for p in (REPO.parent / "shared" / "seeds").glob("0*.txt"))
    assert sorted([*PILLARS, *FILES]) == seeds


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    with Renderer(tmp_path_factory.mktemp("seeds")) as renderer:
        yield renderer


@pytest.fixture(scope="module")
def cmdb_pillar(tmp_path_factory):
    """Seed 004's pillar files, merged by Salt's own pillar compiler for a node."""
    node = FormulaNode(tmp_path_factory.mktemp("cmdb"))
    for path, text in FILES["004"].items():
        target = node.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    ret = node.salt_call("pillar.items")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    return ret.data


def rendered(renderer, pillar):
    """{node: result} for every node the pillar names; each must validate and pass both checkers."""
    nodes = list(pillar["hcloud_lb"]["nodes"])
    results = renderer.render([{"id": node, "pillar": pillar} for node in nodes])
    for node, result in zip(nodes, results, strict=True):
        assert result["errors"] == [], (node, result["errors"])
        for daemon, (ok, output) in renderer.check(result, f"seed-{node}").items():
            assert ok, f"{daemon} refuses {node}'s config:\n{output}\n{result[daemon]}"
    return dict(zip(nodes, results, strict=True))


def test_seed_000_ansible_vars_render_and_both_daemons_accept_them(renderer):
    configs = rendered(renderer, PILLARS["000"])
    for config in configs.values():
        assert "bind 203.0.113.3:80" in config["haproxy"]
        assert "bind 203.0.113.3:443" in config["haproxy"]
        assert "server node1 10.0.0.1:30080 check send-proxy-v2" in config["haproxy"]
        assert "auth_pass Rx7-kq2m" in config["keepalived"]
        assert "virtual_router_id 33" in config["keepalived"]
    assert "state MASTER" in configs["lb-master"]["keepalived"]
    assert "unicast_peer {\n        203.0.113.2" in configs["lb-master"]["keepalived"]


def test_seed_001_internal_alias_ip_without_floating_ip_or_authentication(renderer):
    configs = rendered(renderer, PILLARS["001"])
    for config in configs.values():
        keepalived = config["keepalived"]
        assert "authentication" not in keepalived and "nopreempt" in keepalived
        assert "state BACKUP" in keepalived and "priority 100" in keepalived
        assert "10.0.1.1/32 dev ens10" in keepalived
        assert "bind 10.0.1.1:80" in config["haproxy"]


def test_seed_002_weighted_check_on_the_master_only(renderer):
    configs = rendered(renderer, PILLARS["002"])
    assert "weight -101" in configs["master"]["keepalived"]
    assert "weight" not in configs["backup"]["keepalived"]
    assert "state MASTER" in configs["master"]["keepalived"]
    assert "bind 203.0.113.20:80" in configs["master"]["haproxy"]


def test_seed_003_two_ingress_floating_ips_on_443(renderer):
    configs = rendered(renderer, PILLARS["003"])
    haproxy = configs["lb1"]["haproxy"]
    assert "bind 203.0.113.30:443" in haproxy and "bind 203.0.113.31:443" in haproxy
    assert haproxy.count("option ssl-hello-chk") == 2
    assert "timeout tunnel 1h" in haproxy


def test_seed_004_cmdb_files_merge_into_one_pillar_both_nodes_render(renderer, cmdb_pillar):
    assert set(cmdb_pillar["hcloud_lb"]["nodes"]) == {"lb-master", "lb-backup"}
    configs = rendered(renderer, cmdb_pillar)
    assert "unicast_peer {\n        10.0.0.3" in configs["lb-master"]["keepalived"]
    assert "unicast_peer {\n        10.0.0.2" in configs["lb-backup"]["keepalived"]
    assert "option forwardfor" in configs["lb-backup"]["haproxy"]
