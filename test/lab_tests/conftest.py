"""
The end-to-end tests' lab: built once per module (lab.up(): namespaces, the
emulator, a salt-master, both nodes provisioned by highstate), torn down
afterwards, also when a test fails. Each test starts from the steady state:
lb1 MASTER with every address, the client served through it.
"""

import time

import pytest

from helpers import wait_for
from lab.lab import Lab

PRIMARY, SECONDARY = "lb1", "lb2"


def restore(lab):
    """Back to the steady state after a test: both haproxys up, lb1 MASTER with everything."""
    for role in lab.nodes:
        lab.resume(role)
        if not lab.nodes[role].run("pgrep", "-x", "haproxy").stdout.strip():
            lab.start_haproxy(role)
    lab.heal_vrrp()
    lab.api.clear_faults()
    lab.api.configure(action_duration=lab.action_duration)
    assert wait_for(lambda: lab.master_node() == PRIMARY and lab.all_on(PRIMARY), 90), (
        lab.describe()
    )


@pytest.fixture(scope="module")
def lab_factory():
    labs = []

    def build(**options):
        lab = Lab(name=f"hlt{len(labs)}", **options)
        labs.append(lab)
        lab.up()
        return lab

    yield build
    for lab in labs:
        lab.down(quiet=True)


@pytest.fixture(scope="module")
def running_lab(lab_factory):
    return lab_factory()


@pytest.fixture
def lab(running_lab):
    """The module's lab in its steady state, put back into it after the test."""
    assert running_lab.wait_steady() == PRIMARY, running_lab.describe()
    yield running_lab
    restore(running_lab)


@pytest.fixture
def traffic(lab):
    """Steady requests to the http group and a connection held through the ws group."""
    running = lab.start_traffic(groups=["http"], hold="ws")
    time.sleep(1)
    yield running
    running.stop()
