"""
Three load balancer pairs in one project, beside 1000 other servers and 200
other floating IPs, as a production project holds them: every tool in it
shares the project's 3600 requests an hour.

Pair 0 (lb1, lb2) is applied by the lab's salt-master, pairs 1 (lb3, lb4)
and 2 (lb5, lb6) masterless, each with its own floating IPs, alias IP and
VRRP router in the same private network, and the formula's default
re-assert interval (15 s) and deadline (30 s). Before the crowd arrives,
pair 0 fails over once: what that asks of the API is the empty project's
price, which a failover beside the crowd must not exceed.
"""

import datetime
import time

import pytest
import yaml

from helpers import REPO, wait_for
from lab.lab import Lab, default_pillar

CROWD = {"servers": 1000, "floating_ips": 200}
HOOK = yaml.safe_load((REPO / "hcloud_lb" / "defaults.yaml").read_text())["hcloud_lb"]["hook"]
REASSERT = HOOK["reassert_interval"]  # the formula's defaults: 15 s
DEADLINE = HOOK["deadline"]  # 30 s
AT_REST = 180  # seconds the project is watched at rest
PACED = 150  # seconds it is watched with a bucket below the reserve
SWITCH_BOUND = 30  # generous: the lab measures a few seconds; a loaded machine must not flake


def pair_pillar(pair):
    """The lab's pillar for one pair, with the formula's own re-assert interval and deadline."""
    pillar = default_pillar(pair=pair)
    del pillar["hcloud_lb"]["hook"]
    return pillar


def other(lab, role):
    return next(r for r in lab.nodes if r != role)


def hook_ends(lab, role):
    return lab.nodes[role].syslog().count("failover (notify_master) exited with")


def requests_of(labs, since=0.0):
    """{role: [API and metadata requests sent from that node since ``since``]}, every pair."""
    found = {role: [] for lab in labs for role in lab.nodes}
    for request in labs[0].api.requests():
        if request["time"] < since:
            continue
        for lab in labs:
            role = lab.role_at(request["client"])
            if role:
                found[role].append(request)
    return found


def backups_quiet(labs, seconds):
    """No BACKUP sent a request for ``seconds``."""
    start = time.time()
    time.sleep(seconds)
    sent = requests_of(labs, start)
    masters = {lab.master_node() for lab in labs}
    return not [r for role, requests in sent.items() if role not in masters for r in requests]


def work_of(requests):
    """
    What a failover asks of the API: its answered requests, apart from
    polling its actions (as many as their duration takes) and from the
    metadata service (link-local, outside the rate limit).
    """
    return [
        (r["method"], r["path"])
        for r in requests
        if r["path"].startswith("/v1/")
        and not r["path"].startswith("/v1/actions")
        and r["status"] is not None
        and r["status"] < 400
    ]


def fail_over(lab):
    """
    Kill haproxy on the pair's MASTER and wait until everything is on the
    other node and its notify_master hook has ended: (seconds from the fault
    until the API said everything was there, the requests the new MASTER
    sent, in the order they arrived; the old one may have been re-asserting
    at the fault, which is no part of the failover).
    """
    master = lab.master_node()
    assert master and lab.all_on(master), lab.describe()
    new = other(lab, master)
    ends = hook_ends(lab, new)
    fault = time.time()
    lab.kill_haproxy(master)
    assert wait_for(lambda: lab.all_on(new), SWITCH_BOUND), lab.describe(logs=30)
    switched = time.time() - fault
    assert wait_for(lambda: hook_ends(lab, new) > ends, 60), lab.describe(logs=30)
    return switched, sorted(requests_of([lab], fault)[new], key=lambda r: r["time"])


def restore(lab, role):
    """haproxy back on ``role``, which preempts and holds everything again."""
    lab.start_haproxy(role)
    assert wait_for(lambda: lab.master_node() == role and lab.all_on(role), 90), lab.describe()


@pytest.fixture(scope="module")
def project():
    first = Lab("hlp0", pillar=pair_pillar(0))
    labs = [first]
    try:
        first.up()
        master = first.wait_steady()
        _seconds, sent = fail_over(first)
        restore(first, master)
        first.empty_project_failover = work_of(sent)
        first.api.populate(**CROWD)
        for pair in (1, 2):
            lab = Lab(
                f"hlp{pair}", pillar=pair_pillar(pair), project=first, pair=pair, masterless=True
            )
            labs.append(lab)
            lab.up()
        # A node's agent checks its cached IDs when it starts (after the
        # apply's keepalived reload): the project is at rest once that is over.
        assert wait_for(lambda: backups_quiet(labs, 20), 180), "the BACKUPs kept sending requests"
        yield labs
    finally:
        for lab in reversed(labs):
            lab.down(quiet=True)


@pytest.fixture
def steady(project):
    """Every pair with one MASTER holding its addresses; the bucket full again afterwards."""
    masters = {lab.name: lab.wait_steady() for lab in project}
    yield masters
    project[0].api.configure(rate_remaining=3600)
    for lab in project:
        for role in lab.nodes:
            if not lab.nodes[role].run("pgrep", "-x", "haproxy").stdout.strip():
                lab.start_haproxy(role)
        assert wait_for(lambda lab=lab: lab.master_node() and lab.all_on(lab.master_node()), 90)


def test_at_rest_each_master_spends_one_request_per_reassert_and_backups_none(project, steady):
    project[0].api.clear_requests()
    start = time.time()
    time.sleep(AT_REST)
    sent = requests_of(project, start)
    rounds = AT_REST / REASSERT
    for lab in project:
        master = steady[lab.name]
        own = f"/v1/servers/{lab.servers[master]['id']}"
        # One read of its own server per re-assert: nothing else, and not the crowd.
        assert {(r["method"], r["path"]) for r in sent[master]} == {("GET", own)}, sent[master]
        assert rounds - 2 <= len(sent[master]) <= rounds + 1, (master, len(sent[master]))
        assert sent[other(lab, master)] == [], sent[other(lab, master)]
    per_hour = sum(map(len, sent.values())) * 3600 / AT_REST
    # Three pairs at 15 s: 720 an hour, a fifth of the project's budget.
    assert per_hour <= 3 * (3600 / REASSERT) * 1.1, per_hour


def test_a_bucket_below_the_reserve_slows_every_master_to_one_check_a_minute(project, steady):
    api = project[0].api
    # 100 left: below the reserve (300). The bucket refills 1 a second, and
    # the masters' checks must leave that to the failovers.
    api.configure(rate_remaining=100)
    time.sleep(REASSERT + 2)  # each master's next check sees the low bucket
    start = time.time()
    time.sleep(PACED)
    sent = requests_of(project, start)
    for lab in project:
        master = steady[lab.name]
        checks = len(sent[master])
        # At least once a minute, and no more: not the 10 of the full bucket.
        assert PACED // 60 <= checks <= PACED // 60 + 1, (master, checks, sent[master])
        assert lab.all_on(master), lab.describe()


def test_one_pair_fails_over_while_the_others_reassert_at_the_empty_project_cost(project, steady):
    failing, *others = project
    start = time.time()
    seconds, sent = fail_over(failing)
    assert seconds <= SWITCH_BOUND
    cost, empty = work_of(sent), failing.empty_project_failover
    # Beside 1000 servers and 200 floating IPs, the failover asks nothing it
    # did not ask in the empty project: the same moves, and reads of the
    # pair's own servers and floating IPs only (none of the crowd, no list).
    own = {f"/v1/servers/{server['id']}" for server in failing.servers.values()}
    assert sorted(r for r in cost if r[0] == "POST") == sorted(r for r in empty if r[0] == "POST")
    assert {r for r in cost if r[0] != "POST"} <= {r for r in empty if r[0] != "POST"} | {
        ("GET", path) for path in own
    }, (cost, empty)
    # As many requests, give or take a re-read of the pair's two servers
    # while the moves interleave (the agent's and the hook's).
    assert len(cost) <= len(empty) + 2, (cost, empty)
    # The first assign leaves after reads of the pair's own servers alone.
    first = next(i for i, (_method, path) in enumerate(cost) if path.endswith("/actions/assign"))
    assert first <= 3 and {path for _method, path in cost[:first]} <= own, cost
    # The other pairs kept their addresses and kept re-asserting meanwhile.
    during = requests_of(others, start)
    for lab in others:
        master = steady[lab.name]
        assert lab.all_on(master), lab.describe()
        assert all(r["method"] == "GET" for r in during[master]), during[master]
    restore(failing, steady[failing.name])


def test_an_exhausted_bucket_at_the_fault_still_moves_everything_within_the_deadline(
    project, steady
):
    lab = project[1]
    deadline = DEADLINE
    master = steady[lab.name]
    new = other(lab, master)
    project[0].api.configure(rate_remaining=0)
    fault = time.time()
    lab.kill_haproxy(master)
    assert wait_for(lambda: lab.all_on(new), deadline + 10), lab.describe(logs=30)
    # The agent's own account: the failover succeeded, inside its deadline.
    line = wait_for(lambda: _agent_failover_line(lab, new, fault), 30)
    assert line and " succeeded in " in line, lab.describe(logs=30)
    assert float(line.split(" succeeded in ")[1].split("s;")[0]) <= deadline, line
    # The bucket ran dry: the failover met 429s and waited for the refill.
    statuses = [r["status"] for r in requests_of([lab], fault)[new]]
    assert 429 in statuses, statuses
    project[0].api.configure(rate_remaining=3600)
    restore(lab, master)


def _agent_failover_line(lab, role, since):
    for line in lab.nodes[role].syslog().splitlines():
        stamp = line.partition(" ")[0]
        if f"failover to {role} " in line and _stamp(stamp) >= since:
            return line
    return None


def _stamp(text):
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0
