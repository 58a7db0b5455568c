"""
A failover tells the master through the local salt-minion, and never waits on it.
"""

import time

import pytest

from helpers import REPO, SaltNode

pytestmark = pytest.mark.salt_call


def test_failover_event_reaches_the_master_through_the_local_minion(
    salt_factories, event_listener, cloud
):
    master = salt_factories.salt_master_daemon(
        "hcloud-master", overrides={"interface": "127.0.0.1"}
    )
    minion = master.salt_minion_daemon(
        "lb-master", overrides={"module_dirs": [str(REPO)], "master": "127.0.0.1"}
    )
    server = cloud.create_server("lb-master")
    backup = cloud.create_server("lb-backup")
    cloud.create_floating_ip("lb-http", server_id=backup["id"])
    cloud.wait_idle()
    with master.started(), minion.started():
        node = SaltNode(minion)
        node.set_options(
            {
                "token": cloud.token,
                "api_endpoint": cloud.api_url,
                "metadata_endpoint": cloud.metadata_url,
                "failover": {"floating_ips": ["lb-http"]},
            }
        )
        started = time.time()
        # --local, as keepalived's hook runs it: the master is not asked for anything.
        ret = node.call("hcloud_ip.failover")
        assert ret.returncode == 0, ret.stdout + ret.stderr
        events = event_listener.wait_for_events(
            [(master.id, "hcloud_lb/failover")], after_time=started, timeout=60
        )
    assert events.found_all_events
    (event,) = events.matches
    assert event.data["id"] == "lb-master"  # the minion that forwarded it
    report = event.data["data"]
    assert report["result"] is True
    assert report["server"] == {"id": server["id"], "name": "lb-master"}
    assert cloud.token not in repr(event.data)
