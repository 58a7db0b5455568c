"""
The clean states applied for real after the formula was (``salt-call --local``
in the node's namespace): with the deployment's pillar, with no pillar at all,
and with a pillar validation refuses (no token, this node not in ``nodes``),
as in a decommission that first takes the node out of the pillar. Each time
everything the apply put on the host is gone and the daemons are stopped.
Also: the sysctl file of ``floating_ip_binding: nonlocal``, and the boot
config of each network style read back to find the addresses. Runs as root.
"""

import os
from pathlib import Path

import pytest

from helpers import wait_for

from .conftest import (
    FORMULA_PATHS,
    _processes_mentioning,
    in_netns,
    lab_pillar,
    pid_of,
    states,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="applies the formula: needs root")

CLEAN = (
    "hcloud_lb.keepalived.clean",
    "hcloud_lb.haproxy.clean",
    "hcloud_lb.hook.clean",
    "hcloud_lb.floating_ips.clean",
)  # hcloud_lb.clean but the packages: this machine's tests need them
SYSCTL_CONF = Path("/etc/sysctl.d/60-hcloud-lb.conf")
EVERYTHING = [*FORMULA_PATHS, "/etc/haproxy/haproxy.cfg", str(SYSCTL_CONF)]
RC_LINKS = ("haproxy", "keepalived")


@pytest.fixture(scope="module", autouse=True)
def boot_links_kept():
    """A clean without lookup:*:enable false disables the services at boot: undone afterwards."""
    saved = {
        path: os.readlink(path)
        for name in RC_LINKS
        for path in Path("/etc").glob(f"rc?.d/[SK][0-9][0-9]{name}")
    }
    yield
    for name in RC_LINKS:
        for path in Path("/etc").glob(f"rc?.d/[SK][0-9][0-9]{name}"):
            path.unlink()
    for path, target in saved.items():
        path.symlink_to(target)


def set_no_pillar(node):
    """No pillar at all: the top file names nothing."""
    (node.root / "pillar" / "hcloud_lb.sls").unlink(missing_ok=True)
    (node.root / "pillar" / "top.sls").write_text("base: {}\n")


def set_pillar(node, pillar):
    (node.root / "pillar" / "top.sls").write_text("base:\n  '*': [hcloud_lb]\n")
    node.set_pillar(pillar)


def deploy(node, cloud, **overrides):
    set_pillar(node, lab_pillar(cloud, **overrides))
    ret = node.apply()
    assert ret.returncode == 0, ret.stdout[-3000:]
    assert pid_of("/run/haproxy.pid")
    state = Path("/run/hcloud_lb/state")
    assert wait_for(lambda: state.exists() and state.read_text().strip() == "MASTER", 20), (
        "keepalived is not MASTER",
        pid_of("/run/keepalived.pid"),
        state.exists() and state.read_text(),
    )


def clean(node):
    ret = node.apply(*CLEAN)
    failed = {sid: s["comment"] for sid, s in states(ret).items() if s["result"] is not True}
    assert not failed, failed
    assert ret.returncode == 0
    return states(ret)


def addresses(netns, dev):
    return in_netns(netns, "ip", "-o", "addr", "show", "dev", dev).stdout


def assert_all_gone(netns):
    left = [path for path in EVERYTHING if Path(path).exists()]
    assert not left, left
    assert pid_of("/run/haproxy.pid") is None
    assert pid_of("/run/keepalived.pid") is None
    assert wait_for(lambda: not _processes_mentioning("/etc/keepalived/scripts/"), 10), [
        Path(f"/proc/{pid}/cmdline").read_bytes()
        for pid in _processes_mentioning("/etc/keepalived/scripts/")
    ]
    assert " 10.231.1.10/32 " not in addresses(netns, "eth0")
    assert " 10.231.0.100/32 " not in addresses(netns, "ens10")


def no_token(pillar):
    del pillar["hcloud"]["token"]


def node_missing(pillar):
    del pillar["hcloud_lb"]["nodes"]["lb-master"]
    pillar["hcloud_lb"]["nodes"]["lb-other"] = {"priority": 50, "address": "10.231.0.4"}


@pytest.mark.parametrize(
    "pillar_change",
    [None, no_token, node_missing],
    ids=["deployment-pillar", "no-token", "this-node-missing"],
)
def test_clean_removes_everything_with_the_pillar_valid_or_not(
    deployed, fakecloud_process, pillar_change
):
    cloud = fakecloud_process.cloud
    deploy(deployed, cloud)
    assert " 10.231.1.10/32 " in addresses(deployed.netns, "eth0")
    pillar = lab_pillar(cloud)
    if pillar_change:
        pillar_change(pillar)
        set_pillar(deployed, pillar)
        refused = deployed.apply("hcloud_lb.validate")
        assert "hcloud_lb pillar is invalid" in refused.stdout
    try:
        clean(deployed)
        assert_all_gone(deployed.netns)
    finally:
        set_pillar(deployed, lab_pillar(cloud))


def test_clean_with_no_pillar_at_all_removes_everything(deployed, fakecloud_process):
    cloud = fakecloud_process.cloud
    deploy(deployed, cloud)
    set_no_pillar(deployed)
    try:
        result = clean(deployed)
        assert_all_gone(deployed.netns)
        # The address came from the boot config the apply wrote.
        assert result["10.231.1.10 is not on eth0"]["changes"]
        # A second clean has nothing left to do.
        assert not any(s["changes"] for s in clean(deployed).values())
    finally:
        set_pillar(deployed, lab_pillar(cloud))


def sysctl(netns, family):
    return in_netns(netns, "sysctl", "-n", f"net.{family}.ip_nonlocal_bind").stdout.strip()


def test_clean_with_no_pillar_turns_nonlocal_bind_off(deployed, fakecloud_process):
    cloud = fakecloud_process.cloud
    deploy(deployed, cloud, floating_ip_binding="nonlocal")
    assert SYSCTL_CONF.exists()
    assert sysctl(deployed.netns, "ipv4") == "1"
    set_no_pillar(deployed)
    try:
        clean(deployed)
        assert not SYSCTL_CONF.exists()
        assert sysctl(deployed.netns, "ipv4") == "0"
        assert_all_gone(deployed.netns)
    finally:
        set_pillar(deployed, lab_pillar(cloud))


STYLES = {
    "ifupdown": "60-hcloud-lb-floating-ips.cfg",
    "netplan": "60-hcloud-lb-floating-ips.yaml",
    "networkmanager": "60-hcloud-lb-floating-ips",
    "wicked": "ifcfg-{interface}",
}
ADDRESSES = {"10.231.1.21": "/32", "2001:db8:5::1": "/64"}


@pytest.mark.parametrize("style", STYLES)
def test_each_boot_config_is_read_back_with_only_the_lookup_in_the_pillar(
    deployed, fakecloud_process, tmp_path, style
):
    """The apply of this style, its boot config elsewhere; then a clean that knows only lookup."""
    netns = deployed.netns
    config = tmp_path / STYLES[style]
    network = {"style": style, "config": str(config)}
    live = tmp_path / "ifcfg-eth0"
    if style == "wicked":
        live.write_text("BOOTPROTO='dhcp'\n")
    pillar = lab_pillar(fakecloud_process.cloud)
    pillar["hcloud_lb"]["lookup"]["network"] = network
    web = pillar["hcloud_lb"]["groups"]["web"]
    pillar["hcloud_lb"]["groups"] = {
        f"g{index}": {**web, "floating_ip": address, "address": address}
        for index, address in enumerate(ADDRESSES)
    }
    try:
        set_pillar(deployed, pillar)
        ret = deployed.apply("hcloud_lb.floating_ips")
        assert ret.returncode == 0, ret.stdout[-3000:]
        for address, prefix in ADDRESSES.items():
            assert f" {address}{prefix} " in addresses(netns, "eth0")
        written = live if style == "wicked" else config
        assert "10.231.1.21" in written.read_text()
        set_pillar(deployed, {"hcloud_lb": {"lookup": {"network": network}}})
        ret = deployed.apply("hcloud_lb.floating_ips.clean")
        assert ret.returncode == 0, ret.stdout[-3000:]
        for address, prefix in ADDRESSES.items():
            assert f" {address}{prefix} " not in addresses(netns, "eth0")
        if style == "wicked":
            assert live.read_text() == "BOOTPROTO='dhcp'\n"
        else:
            assert not config.exists()
    finally:
        for address, prefix in ADDRESSES.items():
            in_netns(netns, "ip", "addr", "del", f"{address}{prefix}", "dev", "eth0")
        set_pillar(deployed, lab_pillar(fakecloud_process.cloud))
