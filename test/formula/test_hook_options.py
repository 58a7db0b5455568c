"""
The failover hook's minion config takes the hcloud options as validation and
hcloud_ip read them (config.get, option by option): the formula applied for
real with the token only in the node's minion config, and with the token as
an ``sdb://`` URI (a yaml sdb profile), after which the applied hook moves
the floating IP on the emulator; a URI that does not resolve fails the hook's
state and leaves its config alone. And the hook lists only the floating IPs
of groups that have one. Runs as root.
"""

import contextlib
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import FormulaNode, lab_pillar, lab_project, states
from .test_render import example_pillar, render

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="applies the formula: needs root")

HOOK_CONFIG = Path("/etc/hcloud_lb/salt/minion")
FAILOVER = Path("/etc/keepalived/scripts/failover")


@contextlib.contextmanager
def minion_options(node, **options):
    """More options in the node's own minion config (root only, as it then holds the token)."""
    path = node.root / "minion"
    saved = path.read_text()
    path.chmod(0o600)
    path.write_text(yaml.safe_dump({**yaml.safe_load(saved), **options}))
    try:
        yield
    finally:
        path.write_text(saved)


def pillar_without_token(cloud, token=None):
    pillar = lab_pillar(cloud)
    del pillar["hcloud"]["token"]
    if token:
        pillar["hcloud"]["token"] = token
    return pillar


def hook_options():
    st = HOOK_CONFIG.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    return yaml.safe_load(HOOK_CONFIG.read_text())["hcloud"]


def assert_the_hook_fails_over(cloud):
    """The applied hook, run as keepalived would, moves lb-web and the alias IP here."""
    master, _, fip = lab_project(cloud)
    ret = subprocess.run(
        [str(FAILOVER), "test"], capture_output=True, text=True, timeout=60, check=False
    )
    assert ret.returncode == 0, ret.stderr
    assert cloud.client().floating_ips.get_by_id(fip["id"]).server.id == master["id"]
    server = cloud.client().servers.get_by_id(master["id"])
    assert server.private_net[0].alias_ips == ["10.231.0.100"]
    assert cloud.token not in ret.stdout + ret.stderr


@pytest.fixture
def restored(deployed, fakecloud_process):
    """Afterwards the deployment's pillar is back and the hook applied from it again."""
    yield deployed
    deployed.set_pillar(lab_pillar(fakecloud_process.cloud))
    ret = deployed.apply("hcloud_lb.hook")
    assert ret.returncode == 0, ret.stdout


def test_a_token_only_in_the_minion_config_reaches_the_hook(restored, cloud):
    with minion_options(restored, hcloud={"token": cloud.token}):
        restored.set_pillar(pillar_without_token(cloud))
        ret = restored.apply()
        assert ret.returncode == 0, ret.stdout[-3000:]
        assert cloud.token not in ret.stdout + ret.stderr
        assert hook_options()["token"] == cloud.token
        assert_the_hook_fails_over(cloud)


def test_a_token_given_as_an_sdb_uri_reaches_the_hook_resolved(restored, cloud, tmp_path):
    secrets = tmp_path / "secrets.yaml"
    secrets.touch(mode=0o600)
    secrets.write_text(yaml.safe_dump({"hcloud_token": cloud.token}))
    profile = {"driver": "yaml", "files": [str(secrets)]}
    with minion_options(restored, hcloud_secrets=profile):
        restored.set_pillar(pillar_without_token(cloud, "sdb://hcloud_secrets/hcloud_token"))
        ret = restored.apply()
        assert ret.returncode == 0, ret.stdout[-3000:]
        assert cloud.token not in ret.stdout + ret.stderr
        options = hook_options()
        assert options["token"] == cloud.token
        assert "sdb://" not in HOOK_CONFIG.read_text()
        # The failover needs neither the profile nor the secrets file.
        secrets.unlink()
        assert_the_hook_fails_over(cloud)


def test_an_sdb_uri_that_does_not_resolve_fails_the_hook_and_changes_nothing(restored, cloud):
    before = hashlib.sha256(HOOK_CONFIG.read_bytes()).hexdigest()
    restored.set_pillar(pillar_without_token(cloud, "sdb://nosuchprofile/hcloud_token"))
    ret = restored.apply("hcloud_lb.hook")
    assert ret.returncode != 0
    failed = [s["comment"] for s in states(ret).values() if s["result"] is False]
    assert any("nosuchprofile" in comment for comment in failed), failed
    assert hashlib.sha256(HOOK_CONFIG.read_bytes()).hexdigest() == before


def test_the_hook_lists_only_the_floating_ips_of_groups_that_have_one(tmp_path, netns):
    pillar = example_pillar()
    groups = pillar["hcloud_lb"]["groups"]
    first, *others = groups
    expected = [group.get("floating_ip") for name, group in groups.items() if name != first]
    # The first group as a group bound to an address only (an alias IP, say).
    groups[first] = {key: value for key, value in groups[first].items() if key != "floating_ip"} | {
        "address": "10.0.1.1"
    }
    node = FormulaNode(tmp_path, netns=netns)
    node.set_pillar(pillar)
    config = render(node, "hook/files/minion.jinja", "tpldir=hcloud_lb/hook")
    assert others
    assert config["hcloud"]["failover"]["floating_ips"] == expected
