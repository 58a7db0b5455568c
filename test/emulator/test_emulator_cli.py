"""Fidelity: Debian's hcloud CLI works against the emulator."""

import json
import os
import shutil
import subprocess

import pytest

HCLOUD = "/usr/bin/hcloud"

pytestmark = pytest.mark.skipif(not shutil.which(HCLOUD), reason="hcloud CLI not installed")


@pytest.fixture
def hcloud(cloud, tmp_path):
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "HCLOUD_ENDPOINT": cloud.api_url,
        "HCLOUD_TOKEN": cloud.token,
        "HCLOUD_CONFIG": str(tmp_path / "cli.toml"),
    }

    def run(*args):
        result = subprocess.run(
            [HCLOUD, "--poll-interval", "50ms", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, f"hcloud {' '.join(args)}: {result.stderr}"
        return result.stdout

    return run


def test_cli_servers(cloud, hcloud):
    out = hcloud(
        "server",
        "create",
        "--name",
        "cli-1",
        "--type",
        "cx22",
        "--image",
        "ubuntu-24.04",
        "--location",
        "hel1",
    )
    assert "Server" in out and "created" in out
    listed = json.loads(hcloud("server", "list", "-o", "json"))
    assert [(s["name"], s["status"]) for s in listed] == [("cli-1", "running")]
    described = json.loads(hcloud("server", "describe", "cli-1", "-o", "json"))
    assert described["location"]["name"] == "hel1"
    assert hcloud("server", "list", "-o", "noheader", "-o", "columns=name,ipv4").split() == [
        "cli-1",
        described["public_net"]["ipv4"]["ip"],
    ]
    hcloud("server", "delete", "cli-1")
    assert cloud.api("GET", "/servers").json()["servers"] == []


@pytest.mark.parametrize("ip_type", ["ipv4", "ipv6"])
def test_cli_floating_ips(cloud, hcloud, ip_type):
    server = cloud.create_server("holder")
    hcloud("floating-ip", "create", "--type", ip_type, "--home-location", "nbg1", "--name", "vip")
    fip = json.loads(hcloud("floating-ip", "describe", "vip", "-o", "json"))
    assert fip["type"] == ip_type and fip["server"] is None

    hcloud("floating-ip", "assign", "vip", "holder")
    fetched = cloud.api("GET", f"/floating_ips/{fip['id']}").json()["floating_ip"]
    assert fetched["server"] == server["id"]
    listed = hcloud("floating-ip", "list", "-o", "noheader", "-o", "columns=name,server")
    assert listed.split() == ["vip", "holder"]

    hcloud("floating-ip", "unassign", "vip")
    assert cloud.api("GET", f"/floating_ips/{fip['id']}").json()["floating_ip"]["server"] is None
    hcloud("floating-ip", "delete", "vip")
    assert cloud.api("GET", f"/floating_ips/{fip['id']}").status_code == 404


def test_cli_networks_and_alias_ips(cloud, hcloud):
    server = cloud.create_server("node")
    hcloud("network", "create", "--name", "lan", "--ip-range", "10.0.0.0/16")
    hcloud(
        "network",
        "add-subnet",
        "lan",
        "--type",
        "cloud",
        "--network-zone",
        "eu-central",
        "--ip-range",
        "10.0.1.0/24",
    )
    hcloud("server", "attach-to-network", "node", "--network", "lan", "--ip", "10.0.1.5")
    hcloud(
        "server",
        "change-alias-ips",
        "node",
        "--network",
        "lan",
        "--alias-ips",
        "10.0.1.100,10.0.1.101",
    )
    private = cloud.api("GET", f"/servers/{server['id']}").json()["server"]["private_net"]
    assert private[0]["ip"] == "10.0.1.5"
    assert private[0]["alias_ips"] == ["10.0.1.100", "10.0.1.101"]
    network = json.loads(hcloud("network", "describe", "lan", "-o", "json"))
    assert network["servers"] == [server["id"]]
    assert network["subnets"][0]["ip_range"] == "10.0.1.0/24"
