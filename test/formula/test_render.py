"""
The formula rendered (state.show_sls, nothing applied) for the grains of each
supported OS, and pillar.example validated and rendered.
"""

import subprocess
import time

import pytest
import yaml

from helpers import REPO, SALT_CALL

from .conftest import FormulaNode, in_netns

PLATFORMS = {
    "debian12": (
        {"os_family": "Debian", "os": "Debian", "osmajorrelease": 12},
        "/etc/network/interfaces.d/60-hcloud-lb-floating-ips.cfg",
        "ifupdown",
    ),
    "ubuntu2404": (
        {"os_family": "Debian", "os": "Ubuntu", "osmajorrelease": 24},
        "/etc/netplan/60-hcloud-lb-floating-ips.yaml",
        "netplan",
    ),
    "rocky9": (
        {"os_family": "RedHat", "os": "Rocky", "osmajorrelease": 9},
        "/etc/NetworkManager/dispatcher.d/60-hcloud-lb-floating-ips",
        "networkmanager",
    ),
    "alma9": (
        {"os_family": "RedHat", "os": "AlmaLinux", "osmajorrelease": 9},
        "/etc/NetworkManager/dispatcher.d/60-hcloud-lb-floating-ips",
        "networkmanager",
    ),
    "leap15": (
        {"os_family": "Suse", "os": "Leap", "osmajorrelease": 15},
        "/etc/sysconfig/network/ifcfg-eth0",
        None,
    ),
}


def example_pillar():
    """pillar.example, with salt-call where this machine has it (the validator checks)."""
    pillar = yaml.safe_load((REPO / "pillar.example").read_text())
    pillar["hcloud_lb"]["lookup"] = {"salt_call": str(SALT_CALL)}
    return pillar


def lows(ret):
    assert ret.returncode == 0, ret.stdout + ret.stderr
    assert isinstance(ret.data, dict), ret.stdout + ret.stderr
    return ret.data


@pytest.mark.parametrize("platform", PLATFORMS)
def test_each_os_renders_its_packages_paths_services_and_network_file(tmp_path, netns, platform):
    grains, network_file, style = PLATFORMS[platform]
    node = FormulaNode(tmp_path, netns=netns, grains=grains)
    node.set_pillar(example_pillar())
    data = lows(node.salt_call("state.show_sls", "hcloud_lb"))
    assert "hcloud_lb pillar is invalid, nothing was changed" not in data
    pkg = data["haproxy and keepalived are installed"]["pkg"]
    assert {"pkgs": ["haproxy", "keepalived"]} in pkg
    assert {"name": "/etc/haproxy/haproxy.cfg"} in data["haproxy's config is managed"]["file"]
    assert {"name": "/etc/keepalived/keepalived.conf"} in data["keepalived's config is managed"][
        "file"
    ]
    assert {"name": "haproxy"} in data["haproxy is running"]["service"]
    assert {"name": "keepalived"} in data["keepalived is running"]["service"]
    persist = data["the floating IPs are on eth0 after a reboot"]["file"]
    assert {"name": network_file} in persist
    if style:
        source = f"salt://hcloud_lb/floating_ips/files/{style}.jinja"
        assert {"source": source} in persist
    else:
        assert "blockreplace" in persist
    assert "203.0.113.10 is on eth0" in data


def test_nonlocal_binding_sets_ip_nonlocal_bind_instead(tmp_path, netns):
    pillar = example_pillar()
    pillar["hcloud_lb"]["floating_ip_binding"] = "nonlocal"
    node = FormulaNode(tmp_path, netns=netns)
    node.set_pillar(pillar)
    data = lows(node.salt_call("state.show_sls", "hcloud_lb"))
    assert "haproxy may bind IPv4 addresses this node does not hold" in data
    assert not [sid for sid in data if sid.endswith(" is on eth0")]


def test_pillar_example_validates_and_its_haproxy_config_passes_haproxy_check(tmp_path, netns):
    node = FormulaNode(tmp_path, netns=netns)
    pillar = example_pillar()
    node.set_pillar(pillar)
    assert "hcloud_lb pillar is invalid" not in node.apply("hcloud_lb.validate").stdout
    # Render the live file elsewhere: only the path differs.
    pillar["hcloud_lb"]["lookup"]["haproxy"] = {"config": str(tmp_path / "haproxy.cfg")}
    node.set_pillar(pillar)
    ret = node.apply("hcloud_lb.haproxy.config")
    assert ret.returncode == 0, ret.stdout + ret.stderr
    text = (tmp_path / "haproxy.cfg").read_text()
    assert "bind 203.0.113.10:80" in text
    assert text.index("frontend http-http") < text.index("frontend http-https")
    assert text.index("frontend http-https") < text.index("frontend websockets-wss")
    assert "http-request use-service prometheus-exporter if { path /metrics }" in text


def test_the_clean_state_undoes_in_reverse(tmp_path, netns):
    node = FormulaNode(tmp_path, netns=netns)
    node.set_pillar(example_pillar())
    data = lows(node.salt_call("state.show_sls", "hcloud_lb.clean"))
    order = sorted(data, key=lambda sid: data[sid].get("order", 0))
    assert order.index("keepalived is stopped and disabled") < order.index(
        "haproxy is stopped and disabled"
    )
    assert order[-1] == "haproxy and keepalived are removed"


def render(node, template, *context):
    """A template of the formula rendered on the node, as file.managed would."""
    ret = node.salt_call("slsutil.renderer", f"salt://hcloud_lb/{template}", *context)
    assert ret.returncode == 0, ret.stdout + ret.stderr
    return ret.data


@pytest.mark.parametrize(
    ("priorities", "yield_to"),
    [((254, 250), []), ((250, 254), ["lb-backup"])],
    ids=["top-node", "outranked-node"],
)
def test_the_hook_config_names_the_peers_a_reassert_yields_to(
    tmp_path, netns, priorities, yield_to
):
    pillar = example_pillar()
    nodes = pillar["hcloud_lb"]["nodes"]
    nodes["lb-master"]["priority"], nodes["lb-backup"]["priority"] = priorities
    node = FormulaNode(tmp_path, netns=netns)
    node.set_pillar(pillar)
    config = render(node, "hook/files/minion.jinja", "tpldir=hcloud_lb/hook")
    assert config["hcloud"]["failover"]["yield_to"] == yield_to


@pytest.mark.parametrize("alias_ips", [True, False], ids=["alias-ips", "no-alias-ips"])
def test_the_fast_profile_is_vrrpv3_with_tenth_second_adverts_keepalived_accepts(
    tmp_path, netns, alias_ips
):
    pillar = example_pillar()
    pillar["hcloud_lb"]["vrrp"]["profile"] = "fast"
    if not alias_ips:
        pillar["hcloud_lb"]["alias_ips"] = {}
    node = FormulaNode(tmp_path, netns=netns)
    node.set_pillar(pillar)
    conf = render(
        node,
        "keepalived/files/keepalived.conf.jinja",
        "tpldir=hcloud_lb/keepalived",
        "default_renderer=jinja",
    )
    assert "vrrp_version 3" in conf
    assert "    advert_int 0.1\n" in conf
    # keepalived 2.2 refuses authentication with VRRPv3, and drops an instance
    # without a virtual address: a loopback one stands in when there is none.
    assert "authentication" not in conf
    assert ("127.255.51.1/32 dev lo" in conf) is not alias_ips
    # Checked where the interfaces it names exist (the node's namespace), with
    # the scripts, which the formula installs first, standing in as /bin/true.
    path = tmp_path / "keepalived.conf"
    path.write_text(conf.replace("/etc/keepalived/scripts/", "/bin/true #"))
    check = in_netns(netns, "keepalived", "-t", "-f", str(path))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("lookup", "state_file"),
    [({}, "/run/hcloud_lb/state"), ({"run_dir": "/run/lb"}, "/run/lb/state")],
    ids=["default", "lookup"],
)
def test_the_hook_config_stops_a_failover_when_keepalived_leaves_master(
    tmp_path, netns, lookup, state_file
):
    pillar = example_pillar()
    pillar["hcloud_lb"]["lookup"].update(lookup)
    node = FormulaNode(tmp_path, netns=netns)
    node.set_pillar(pillar)
    config = render(node, "hook/files/minion.jinja", "tpldir=hcloud_lb/hook")
    assert config["hcloud"]["failover"]["state_file"] == state_file


def failover_hook(tmp_path, netns):
    """The rendered failover hook, calling a salt-call stub that exits as ``status`` says."""
    node = FormulaNode(tmp_path, netns=netns)
    node.set_pillar(example_pillar())
    status = tmp_path / "status"
    stub = tmp_path / "salt-call"
    stub.write_text(
        f'#!/bin/sh\necho "salt-call $*"\nexit "$(cat {status} 2>/dev/null || echo 0)"\n'
    )
    stub.chmod(0o700)
    script = render(
        node,
        "keepalived/files/failover.jinja",
        f"salt_call={stub}",
        "hook_config_dir=/etc/hcloud_lb/salt",
        "instance=lb",
        "default_renderer=jinja",
    )
    hook = tmp_path / "failover"
    hook.write_text(script)

    def run(*argv, status_code=0):
        """Run the hook; the salt-call line it logged."""
        status.write_text(str(status_code))
        ret = subprocess.run(
            ["bash", str(hook), *argv], capture_output=True, text=True, timeout=30, check=False
        )
        assert ret.returncode == status_code, ret.stderr
        return next(line for line in ret.stderr.splitlines() if "salt-call " in line)

    return run


def test_the_failover_hook_says_when_keepalived_ran_it(tmp_path, netns):
    # A state the agent records after that (the node left MASTER meanwhile)
    # stops the failover; an older one does not (hcloud_ip.failover since=).
    hook = failover_hook(tmp_path, netns)
    before = time.time()
    line = hook()
    after = time.time()
    head, _, since = line.rpartition(" since=")
    assert head.endswith(" hcloud_ip.failover"), line
    assert before <= float(since) <= after, line
    assert hook("test", status_code=1).rpartition(" since=")[0].endswith(" hcloud_ip.failover")


def test_validate_from_the_command_line_checks_the_merged_settings(tmp_path, netns):
    """salt-call hcloud_lb.validate sees what the states see: defaults and lookup merged."""
    node = FormulaNode(tmp_path, netns=netns)
    pillar = example_pillar()
    node.set_pillar(pillar)
    ret = node.salt_call("hcloud_lb.validate")
    assert ret.returncode == 0 and ret.data == [], ret.stdout + ret.stderr
    pillar["hcloud_lb"]["vrrp"]["prempt"] = False
    pillar["hcloud_lb"]["lookup"]["run_dir"] = "/run/$(id)"
    node.set_pillar(pillar)
    assert node.salt_call("hcloud_lb.validate").data == [
        "hcloud_lb:lookup:run_dir: '/run/$(id)' is not an absolute path of letters, digits "
        "and _.+-/",
        "hcloud_lb:vrrp:prempt: is not a known key",
    ]
