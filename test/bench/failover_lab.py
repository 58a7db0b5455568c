"""
Benchmark: failover in the lab, end to end, repeated.

For each variant a lab is brought up once (test/lab: client, cloud with the
API emulator, two load balancer nodes lb1/lb2, two backends) and each fault
is repeated on the current MASTER, with steady client traffic (a new
connection every 20 ms to the lab-http floating IP):

- haproxy death: kill -9 of haproxy on the MASTER; then haproxy starts again
  and the lab waits until the preempting original master holds everything;
- node freeze: SIGSTOP to every process of the MASTER (a paused VM); after
  the failover it resumes and the lab waits for the steady state again (the
  seeds' way has nothing that brings the addresses back to a resumed MASTER:
  after 15 s keepalived is restarted there, and the report says so).

Variants: our formula with the default profile (VRRPv2, 1 s adverts) and the
fast profile (VRRPv3, 0.1 s adverts); the seeds' way (the tutorial's
keepalived.conf with `pgrep haproxy` every 2 s and its master.sh moving each
floating IP with the hcloud CLI, installed over our formula on the same
nodes); and our default profile with 1 and with 8 floating IPs (haproxy
death only).

Each run gives the time from the fault to the first answer through the
floating IP from the new node, the time until every address is routed to the
new node, and the failed requests (during the failover and after the switch
completed). Prints a markdown table of p50/p95, the target checks and where
the time goes, and writes them to results/failover-lab.md, with a plot in
results/failover-lab.png and every run's figures in results/failover-lab.json
(--report-only writes the report and plot again from those).

    make bench                                            # 10 runs per cell
    .venv/bin/python test/bench/failover_lab.py --quick   # 3 runs per cell
    .venv/bin/python test/bench/failover_lab.py --runs 5 --variants default,seeds
"""

import argparse
import dataclasses
import datetime
import json
import os
import random
import re
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.lab import API_PORT, GATEWAY, NODES, Lab, LabError, Node, default_pillar
from lab.timeline import failover_report

REPO = Path(__file__).resolve().parents[2]
OUT_MD = REPO / "results" / "failover-lab.md"
OUT_PNG = REPO / "results" / "failover-lab.png"
OUT_JSON = REPO / "results" / "failover-lab.json"

SCENARIOS = {
    "haproxy": "haproxy death",
    "freeze": "node freeze",
}


@dataclasses.dataclass(frozen=True)
class Variant:
    key: str
    title: str
    lab: dict
    scenarios: tuple
    seeds: bool = False

    @property
    def ours(self):
        return not self.seeds


# Each variant's lab options: the lab's default pillar (groups http, ws, extra1...,
# the alias IP), with the profile and number of floating IPs of the variant.
VARIANTS = (
    Variant(
        "default",
        "ours, default profile",
        {"pillar": default_pillar(profile="default")},
        ("haproxy", "freeze"),
    ),
    Variant(
        "fast",
        "ours, fast profile",
        {"pillar": default_pillar(profile="fast")},
        ("haproxy", "freeze"),
    ),
    Variant(
        "seeds",
        "seeds' way",
        {"pillar": default_pillar(profile="default")},
        ("haproxy", "freeze"),
        seeds=True,
    ),
    Variant(
        "ips1",
        "ours, default, 1 floating IP",
        {"pillar": default_pillar(floating_ips=1)},
        ("haproxy",),
    ),
    Variant(
        "ips8",
        "ours, default, 8 floating IPs",
        {"pillar": default_pillar(floating_ips=8)},
        ("haproxy",),
    ),
)

SWITCH_TIMEOUT = 30  # seconds from the fault until the switch must be complete
AFTER_SWITCH = 2.0  # seconds of traffic watched after the switch completed
RESTORE_TIMEOUT = 60  # seconds for the original master to hold everything again
SEEDS_GRACE = 15  # seconds the seeds' way gets to restore itself after a freeze
RESTORE_USUAL = 8  # seconds a return to the steady state takes when all goes well
QUIET = 3.0  # seconds without any address move before a fault
WARMUP = 1.0  # seconds of traffic before the fault...
JITTER = 2.0  # ...plus up to this much more at random, so that the fault falls anywhere
# in the nodes' check and advert cycles (1 and 2 s), not always in the same phase


RANDOM = random.Random()  # noqa: S311 (a benchmark's timing, not a secret)


def say(text=""):
    print(text, flush=True)


# ---- the seeds' way ---------------------------------------------------------------------

SEEDS_KEEPALIVED = """\
# The seeds' way (tutorial: keepalived.conf.j2), with this lab's addresses.
global_defs {{
  script_user root
  enable_script_security
}}
vrrp_script chk_haproxy {{
  script "/usr/bin/pgrep haproxy"
  interval 2
}}
vrrp_instance VI_1 {{
  interface {interface}
  state {state}
  priority {priority}
  virtual_router_id {virtual_router_id}
  advert_int 1
  unicast_src_ip {unicast_src_ip}
  unicast_peer {{
    {peer}
  }}
  authentication {{
    auth_type PASS
    auth_pass {auth_pass}
  }}
  track_script {{
    chk_haproxy
  }}
  notify_master /etc/keepalived/master.sh
}}
"""

# The tutorial's master.sh.j2, one block per floating IP; the CLI's Go
# templates (-o format=) instead of its grep/sed on the human output: the same
# API calls. The two logger lines only mark the hook on the lab's timeline.
SEEDS_MASTER_HEAD = """\
#!/bin/bash
export HCLOUD_TOKEN='{token}'
export HCLOUD_ENDPOINT='{endpoint}'
logger -t seeds "failover (notify_master) starting"

ME=$(hcloud server describe -o format='{{{{.ID}}}}' "$(hostname)")
SERVER_ID='{{{{if .Server}}}}{{{{.Server.ID}}}}{{{{end}}}}'
"""

SEEDS_MASTER_IP = """
CURRENT_SERVER_ID=$(hcloud floating-ip describe -o "format=$SERVER_ID" {name})

if [ "$CURRENT_SERVER_ID" != "$ME" ] ; then
  n=0
  while [ $n -lt 10 ]
  do
    hcloud floating-ip unassign {name}
    hcloud floating-ip assign {name} $ME && break
    n=$((n+1))
    sleep 3
  done
fi
"""

SEEDS_MASTER_TAIL = """
logger -t seeds "failover (notify_master) exited with 0"
"""


def rendered_vrrp(node):
    """The VRRP settings of our rendered keepalived.conf on the node."""
    text = node.read("/etc/keepalived/keepalived.conf") or ""

    def value(key):
        found = re.search(rf"^\s*{key}\s+(\S+)", text, re.MULTILINE)
        if not found:
            raise LabError(f"no {key} in {node.role}'s keepalived.conf")
        return found.group(1)

    peers = re.search(r"unicast_peer\s*{([^}]*)}", text)
    if not peers:
        raise LabError(f"no unicast_peer in {node.role}'s keepalived.conf")
    return {
        "interface": value("interface"),
        "state": value("state"),
        "priority": value("priority"),
        "virtual_router_id": value("virtual_router_id"),
        "unicast_src_ip": value("unicast_src_ip"),
        "peer": "\n    ".join(peers.group(1).split()),
        "auth_pass": value("auth_pass"),
    }


class SeedsNode(Node):
    """A node whose VRRP state comes from keepalived's own log lines (the seeds'
    keepalived runs no notify script writing a state file)."""

    since = 0.0

    def vrrp_state(self):
        state = None
        for line in self.syslog().splitlines():
            stamp, _, text = line.partition(" ")
            found = re.search(r"Entering (MASTER|BACKUP|FAULT) STATE", text)
            if not found:
                continue
            try:
                when = datetime.datetime.fromisoformat(stamp).timestamp()
            except ValueError:
                continue
            if when >= self.since:
                state = found.group(1)
        return state


class SeedsLab(Lab):
    """The lab, with our formula replaced by the seeds' keepalived and master.sh."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.nodes = {role: SeedsNode(self, role) for role in NODES}

    def up(self):
        super().up()
        try:
            self.install_seeds()
        except BaseException:
            self.down(quiet=True)
            raise
        return self

    def install_seeds(self):
        settings = {role: rendered_vrrp(node) for role, node in self.nodes.items()}
        head = SEEDS_MASTER_HEAD.format(
            token=self.token, endpoint=f"http://{GATEWAY}:{API_PORT}/v1"
        )
        blocks = [SEEDS_MASTER_IP.format(name=name) for name in self.floating_ips]
        master_sh = head + "".join(blocks) + SEEDS_MASTER_TAIL
        # Lowest priority first: stopping the MASTER first would make the other
        # node MASTER, and our hook would move everything there.
        by_priority = sorted(self.nodes, key=lambda role: priority(self, role))
        for role in by_priority:
            node = self.nodes[role]
            node.run("/etc/init.d/keepalived", "stop", check=True)
            _wait_for(lambda n=node: not live_processes(n, "keepalived"), 20, "keepalived stop")
            # keepalived's stop ends our agent; make sure, and drop its state.
            node.run("pkill", "-f", "hcloud_ip.agent")
            node.run("rm", "-f", "/run/hcloud_lb/state")
        for role, node in self.nodes.items():
            conf = SEEDS_KEEPALIVED.format(**settings[role])
            node.run(
                "sh",
                "-c",
                "umask 077; cat > /etc/keepalived/keepalived.conf",
                input=conf,
                check=True,
            )
            node.run(
                "sh",
                "-c",
                "umask 077; cat > /etc/keepalived/master.sh && chmod 700 /etc/keepalived/master.sh",
                input=master_sh,
                check=True,
            )
        start = time.time()
        for node in self.nodes.values():
            node.since = start
        for role in reversed(by_priority):  # the MASTER-to-be first, as before
            self.nodes[role].run("/etc/init.d/keepalived", "start", check=True)
        wait_restored(self, preferred_role(self), alias=False, timeout=RESTORE_TIMEOUT)

    def restart_keepalived(self, role):
        node = self.nodes[role]
        node.run("/etc/init.d/keepalived", "stop", check=True)
        _wait_for(lambda: not live_processes(node, "keepalived"), 20, "keepalived stop")
        node.run("/etc/init.d/keepalived", "start", check=True)


def live_processes(node, name):
    """The node's running processes called ``name`` (not zombies: those have ended)."""
    found = []
    for pid in node.pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
        if comm == name and state != "Z":
            found.append(pid)
    return found


def _wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise LabError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ---- one run ------------------------------------------------------------------------------


def priority(lab, role):
    return int(lab.settings["nodes"][role]["priority"])


def preferred_role(lab):
    return max(lab.nodes, key=lambda role: priority(lab, role))


def other_role(role):
    return next(r for r in NODES if r != role)


def moved(lab, role, alias):
    """Every floating IP (and, for our formula, the alias IP) is routed to ``role``."""
    return set(lab.holders(alias=alias).values()) == {role}


def steady_on(lab, role, alias):
    """``role`` MASTER, the other BACKUP, everything on ``role``, the client served by it."""
    if lab.master_node() != role or lab.nodes[other_role(role)].vrrp_state() != "BACKUP":
        return False
    if not moved(lab, role, alias):
        return False
    ok, answer = lab.answers()
    return ok and lab.node_of(answer) == role


def wait_restored(lab, role, *, alias, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if steady_on(lab, role, alias):
            return True
        time.sleep(0.3)
    raise LabError(f"{role} did not hold everything again within {timeout} s: {lab.describe()}")


def wait_quiet(lab, role, *, alias, timeout=RESTORE_TIMEOUT):
    """Steady on ``role`` and no address moved for QUIET seconds (a hook still fighting
    over the addresses would spoil the next measurement); returns the seconds waited."""
    started = time.monotonic()
    while True:
        if steady_on(lab, role, alias) and not lab.api_events(time.time() - QUIET):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise LabError(f"the lab did not settle on {role} within {timeout} s")
        time.sleep(0.5)


def wait_for_switch(lab, traffic, role, since, *, alias, timeout=SWITCH_TIMEOUT):
    """Until everything is routed to ``role`` and the client got an answer through it."""
    deadline = since + timeout
    answered = False
    while time.time() < deadline:
        answered = answered or any(
            r["kind"] == "request"
            and r["ok"]
            and r["start"] >= since
            and lab.node_of(r.get("answer")) == role
            for r in traffic.records()
        )
        if answered and moved(lab, role, alias):
            return True
        time.sleep(0.2)
    return False


@dataclasses.dataclass
class Run:
    variant: str
    scenario: str
    number: int
    master: str | None
    new_role: str | None = None
    failover: float | None = None  # fault -> first answer through the new node
    all_moved: float | None = None  # fault -> last address routed to the new node
    floating_moved: float | None = None  # fault -> last floating IP routed to the new node
    phases: dict = dataclasses.field(default_factory=dict)
    requests: int = 0
    failed: int = 0
    failed_after: int = 0
    restore: float | None = None
    restore_moves: int | None = None  # address moves until the steady state was back
    settle: float | None = None  # seconds waited before the fault for the lab to be quiet
    error: str | None = None
    notes: list = dataclasses.field(default_factory=list)
    timeline: list = dataclasses.field(default_factory=list)  # (seconds after fault, who, what)
    traffic: list = dataclasses.field(default_factory=list)  # (seconds after fault, ok, via)
    syslog: dict = dataclasses.field(default_factory=dict)  # role -> lines around the fault


def phases_of(report, lab, new_role):
    """When the new node became MASTER, its hook started, lab-http reached it (after the fault)."""
    marks = {}
    http_ip = lab.groups["http"].moves
    for when, who, what in report.timeline:
        offset = when - report.fault
        if who == new_role and what == "becomes MASTER":
            marks.setdefault("master", offset)
        elif who == new_role and what == "failover hook starts":
            marks.setdefault("hook", offset)
        elif who == "API" and what.endswith(f"assigned to {new_role}"):
            marks.setdefault("first_move", offset)
            if f" {http_ip} " in what:
                marks.setdefault("http_move", offset)
        elif who == "client" and what.startswith("first answer"):
            marks.setdefault("answer", offset)
    return marks


def one_run(lab, variant, scenario, number):
    """One fault on the current MASTER, its failover measured, then the steady state again."""
    master = lab.master_node()
    run = Run(variant.key, scenario, number, master)
    if master is None:
        run.error = f"no single MASTER at the start: {lab.describe()}"
        return run
    backup = run.new_role = other_role(master)
    alias = variant.ours  # the seeds' way moves no alias IP
    try:
        run.settle = wait_quiet(lab, master, alias=alias)
    except LabError as exc:
        run.error = str(exc)
        return run
    traffic = lab.start_traffic(groups=["http"])
    try:
        time.sleep(WARMUP + RANDOM.uniform(0, JITTER))
        fault = time.time()
        if scenario == "haproxy":
            lab.kill_haproxy(master)
            text = f"haproxy killed on {master}"
        else:
            lab.freeze(master)
            text = f"{master} frozen (SIGSTOP to all its processes)"
        switched = wait_for_switch(lab, traffic, backup, fault, alias=alias)
        if switched:
            time.sleep(AFTER_SWITCH)
        watched_until = time.time()
        records = [r for r in traffic.stop() if r["start"] < watched_until]
        measure(run, lab, failover_report(lab, fault, text, records, backup), records)
        if not switched:
            run.error = f"no complete switch to {backup} within {SWITCH_TIMEOUT} s"
    finally:
        traffic.stop()
        restore_start, restore_time = time.monotonic(), time.time()
        if scenario == "freeze":
            lab.resume(master)
        else:
            lab.start_haproxy(master)
    try:
        if variant.seeds and scenario == "freeze":
            seeds_restore(lab, run)
        else:
            wait_restored(lab, master, alias=alias, timeout=RESTORE_TIMEOUT)
        run.restore = time.monotonic() - restore_start
        run.restore_moves = len(lab.api_events(restore_time))
    except LabError as exc:
        run.error = (run.error + "; " if run.error else "") + f"restore: {exc}"
    return run


def seeds_restore(lab, run):
    """After a freeze the resumed node is MASTER again with no transition, so the seeds'
    notify_master does not run and nothing brings the addresses back: if they stay on
    the other node, an operator restarts keepalived on the master."""
    try:
        wait_restored(lab, run.master, alias=False, timeout=SEEDS_GRACE)
        return
    except LabError:
        if lab.master_node() != run.master:
            raise
    run.notes.append(
        f"{run.master} MASTER again but the floating IPs stayed on {run.new_role} for "
        f"{SEEDS_GRACE} s: keepalived restarted on {run.master}"
    )
    lab.restart_keepalived(run.master)
    wait_restored(lab, run.master, alias=False, timeout=RESTORE_TIMEOUT)


def measure(run, lab, report, records):
    fault, backup = report.fault, report.new_role
    run.failover = report.failover_seconds
    if report.switch_done is not None:
        run.all_moved = report.switch_done - fault
    floating = set(lab.floating_ips.values())
    last_move = {}
    for event in lab.api_events(fault):
        if event["ip"] in floating and lab.server_role(event["new_server_id"]) == backup:
            last_move[event["ip"]] = max(event["time"], last_move.get(event["ip"], 0.0))
        elif event["ip"] in lab.alias_ips and run.variant == "seeds":
            # the seeds' way has nothing that moves it: say so if something did
            holder = lab.server_role(event["new_server_id"]) or "nobody"
            run.notes.append(f"alias IP moved to {holder} (not by the seeds' master.sh)")
    if set(last_move) == floating:
        run.floating_moved = max(last_move.values()) - fault
    run.phases = phases_of(report, lab, backup)
    run.requests = report.requests
    run.failed = len(report.failed)
    run.failed_after = len(report.failed_after_switch)
    run.timeline = [(when - fault, who, what) for when, who, what in report.timeline]
    run.traffic = [
        (r["start"] - fault, r["ok"], lab.node_of(r.get("answer")))
        for r in records
        if r["kind"] == "request"
    ]
    warmup = [r for r in records if r["kind"] == "request" and r["start"] < fault]
    bad = [r for r in warmup if not r["ok"] or lab.node_of(r.get("answer")) != run.master]
    if bad:
        run.notes.append(f"{len(bad)} requests before the fault not answered through {run.master}")
    if any(who == run.new_role and what == "enters FAULT" for _, who, what in run.timeline):
        run.notes.append(f"{run.new_role}'s health check failed during the failover (FAULT)")
    moves = [e for e in lab.api_events(fault - QUIET) if e["time"] < fault]
    if moves:
        run.notes.append(f"{len(moves)} address moves in the {QUIET:g} s before the fault")
    end = records[-1]["start"] if records else fault
    run.syslog = {role: syslog_window(node, fault - 5, end + 1) for role, node in lab.nodes.items()}


def syslog_window(node, start, end):
    """The node's syslog lines stamped between start and end (for a look at odd runs)."""
    lines = []
    for line in node.syslog().splitlines():
        try:
            when = datetime.datetime.fromisoformat(line.partition(" ")[0]).timestamp()
        except ValueError:
            continue
        if start <= when <= end:
            lines.append(line[:400])
    return lines


def recover(lab, variant, master):
    """After a failed restore: everything running again, and the seeds' MASTER re-run."""
    for role in lab.nodes:
        lab.resume(role)
        if not live_processes(lab.nodes[role], "haproxy"):
            lab.start_haproxy(role)
    if variant.seeds and lab.master_node() == master:
        # MASTER without a transition runs no notify_master: restart it to get one.
        lab.restart_keepalived(master)
    wait_restored(lab, master, alias=variant.ours, timeout=RESTORE_TIMEOUT)


# ---- the whole benchmark ------------------------------------------------------------------


def bench_variant(variant, args):
    lab_class = SeedsLab if variant.seeds else Lab
    lab = lab_class(name=args.name, say=say, **variant.lab)
    runs = []
    started = time.monotonic()
    try:
        lab.up()
        addresses = ", ".join(lab.floating_ips)
        say(
            f"   lab up in {time.monotonic() - started:.1f} s ({addresses}; "
            f"API actions take {lab.action_duration:g} s)"
        )
        for scenario in variant.scenarios:
            for number in range(1, args.runs + 1):
                run = one_run(lab, variant, scenario, number)
                runs.append(run)
                say("   " + run_line(run))
                if run.error and "restore" in run.error:
                    say("   recovering: everything running again, the original master back")
                    recover(lab, variant, run.master)
    finally:
        lab.down(quiet=True)
    say(f"   {variant.title}: {time.monotonic() - started:.0f} s")
    return runs


def run_line(run):
    text = (
        f"{run.variant:<8} {SCENARIOS[run.scenario]:<14} #{run.number:<2} "
        f"{run.master}->{run.new_role}: first answer {fmt(run.failover)}, "
        f"all moved {fmt(run.all_moved)}, failed {run.failed} of {run.requests} "
        f"({run.failed_after} after the switch)"
    )
    if run.restore is not None:
        text += f", steady again in {run.restore:.1f} s"
    for note in run.notes:
        text += f"; {note}"
    if run.error:
        text += f"  ERROR: {run.error}"
    return text


def fmt(seconds, unit=" s"):
    return "-" if seconds is None else f"{seconds:.2f}{unit}"


def percentile(values, q):
    """Linear interpolation between the closest ranks (numpy's default)."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    rank = (len(values) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def cells_of(runs):
    """{(variant, scenario): [runs]} in the order they ran."""
    cells = {}
    for run in runs:
        cells.setdefault((run.variant, run.scenario), []).append(run)
    return cells


def table_head(header):
    """A markdown table's first two lines: two text columns, then figures aligned right."""
    return ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]


def summary_table(runs, planned):
    header = [
        "variant",
        "scenario",
        "runs",
        "first answer p50",
        "p95",
        "all addresses moved p50",
        "p95",
        "failed requests during failover (median per run; total)",
        "failed after the switch (total)",
    ]
    lines = table_head(header)
    titles = {v.key: v.title for v in VARIANTS}
    for (variant, scenario), cell in cells_of(runs).items():
        good = [r for r in cell if r.failover is not None]
        failed = [r.failed for r in cell]
        count = f"{len(good)}" if len(good) == planned else f"{len(good)} of {planned}"
        row = [
            titles[variant],
            SCENARIOS[scenario],
            count,
            fmt(percentile([r.failover for r in cell], 50)),
            fmt(percentile([r.failover for r in cell], 95)),
            fmt(percentile([r.all_moved for r in cell], 50)),
            fmt(percentile([r.all_moved for r in cell], 95)),
            f"{percentile(failed, 50):g}; {sum(failed)}",
            str(sum(r.failed_after for r in cell)),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def phase_table(runs):
    """Where the time goes: medians of each step, from the nodes' logs and the API events."""
    header = [
        "variant",
        "scenario",
        "fault -> new MASTER",
        "-> hook starts",
        "-> lab-http routed",
        "-> first answer",
        "floating IPs moved",
    ]
    lines = table_head(header)
    titles = {v.key: v.title for v in VARIANTS}
    steps = (
        (None, "master"),
        ("master", "hook"),
        ("hook", "http_move"),
        ("http_move", "answer"),
    )
    for (variant, scenario), cell in cells_of(runs).items():
        row = [titles[variant], SCENARIOS[scenario]]
        for start, end in steps:
            deltas = [
                r.phases[end] - (r.phases[start] if start else 0.0)
                for r in cell
                if end in r.phases and (start is None or start in r.phases)
            ]
            row.append(fmt(percentile(deltas, 50)))
        row.append(fmt(percentile([r.floating_moved for r in cell], 50)))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def p50(runs, variant, scenario, attribute="failover"):
    values = [getattr(r, attribute) for r in runs if (r.variant, r.scenario) == (variant, scenario)]
    return percentile(values, 50)


def target_checks(runs):
    """[(ok or None when not measured, text)]"""
    checks = []

    def absolute(variant, scenario, limit, what):
        value = p50(runs, variant, scenario)
        ok = None if value is None else value <= limit
        checks.append((ok, f"{what}: p50 {fmt(value)} <= {limit:g} s"))

    # The limit: detection plus one 0.5 s action is about 0.7 s.
    absolute("default", "haproxy", 0.8, "haproxy death, our defaults")
    absolute("default", "freeze", 4.0, "node freeze, our default profile")
    absolute("fast", "freeze", 1.5, "node freeze, our fast profile")

    def relative(value, base, factor, what, describe):
        """value <= factor x base, or not measured when either is missing."""
        if value is None or base is None:
            checks.append((None, f"{what}: not measured"))
        else:
            checks.append((value <= factor * base, f"{what}: {describe} = {value / base:.2f}x"))

    ours, seeds = p50(runs, "default", "haproxy"), p50(runs, "seeds", "haproxy")
    relative(
        ours,
        seeds,
        0.6,
        "haproxy death, ours <= 0.6x the seeds' way",
        f"{fmt(ours)} vs {fmt(seeds)}",
    )
    one = p50(runs, "ips1", "haproxy", "all_moved")
    eight = p50(runs, "ips8", "haproxy", "all_moved")
    relative(
        eight,
        one,
        1.2,
        "8 floating IPs (all addresses moved) <= 1.2x 1 floating IP",
        f"p50 {fmt(eight)} vs {fmt(one)}",
    )
    failed = [r.failed for r in runs if (r.variant, r.scenario) == ("default", "haproxy")]
    worst = max(failed) if failed else None
    checks.append(
        (
            None if worst is None else worst <= 40,
            f"failed requests per haproxy death at 50 requests/s, our defaults: at most "
            f"{worst if worst is not None else '-'} <= 40 (median "
            f"{percentile(failed, 50) if failed else '-'})",
        )
    )
    ours_runs = [r for r in runs if r.variant != "seeds"]
    after = sum(r.failed_after for r in ours_runs)
    incomplete = [r for r in ours_runs if r.all_moved is None]
    text = f"zero failed requests after the switch completed (ours, all variants): {after}"
    if incomplete:
        text += f" ({len(incomplete)} runs never completed the switch)"
    checks.append((None if not ours_runs else after == 0 and not incomplete, text))
    return checks


def check_lines(checks):
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}
    return [f"- **{verdict[ok]}** {text}" for ok, text in checks]


def representative(cell):
    """The run whose first answer came closest to the median."""
    good = [r for r in cell if r.failover is not None and r.traffic]
    if not good:
        return None
    middle = percentile([r.failover for r in good], 50)
    return min(good, key=lambda r: abs(r.failover - middle))


def plot(runs, path, runs_per_cell):
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    titles = {v.key: v.title for v in VARIANTS}
    cells = cells_of(runs)
    keys = list(cells)
    panels = len(keys)
    rows = (panels + 1) // 2
    figure = plt.figure(figsize=(15, 4 + 2.6 * rows), layout="constrained")
    grid = figure.add_gridspec(rows + 1, 2, height_ratios=[1.6] + [1] * rows)

    # Top: every run's times, per variant and scenario.
    box = figure.add_subplot(grid[0, :])
    labels = [f"{titles[v]}\n{SCENARIOS[s]}" for v, s in keys]
    positions = list(range(len(keys)))
    first = [[r.failover for r in cells[k] if r.failover is not None] for k in keys]
    moved = [[r.all_moved for r in cells[k] if r.all_moved is not None] for k in keys]
    for data, offset, color, name in (
        (first, -0.18, "tab:blue", "fault -> first answer through the new node"),
        (moved, 0.18, "tab:orange", "fault -> every address routed to the new node"),
    ):
        where = [p + offset for p, d in zip(positions, data, strict=True) if d]
        values = [d for d in data if d]
        if values:
            parts = box.boxplot(
                values, positions=where, widths=0.3, patch_artist=True, showfliers=False
            )
            for patch in parts["boxes"]:
                patch.set(facecolor=color, alpha=0.35)
            for x, d in zip(where, values, strict=True):
                box.scatter([x] * len(d), d, s=10, color=color, zorder=3)
        box.plot([], [], color=color, linewidth=6, alpha=0.5, label=name)
    targets = {("default", "haproxy"): 2.0, ("default", "freeze"): 4.0, ("fast", "freeze"): 1.5}
    for index, key in enumerate(keys):
        if key in targets:
            box.hlines(targets[key], index - 0.4, index + 0.4, colors="red", linestyles="--")
    box.plot([], [], color="red", linestyle="--", label="target (p50)")
    box.set_xticks(positions, labels, fontsize=8)
    box.set_ylabel("seconds after the fault")
    box.set_ylim(bottom=0)
    box.grid(axis="y", alpha=0.3)
    box.legend(loc="upper left", fontsize=8)
    box.set_title(f"Failover times in the lab ({runs_per_cell} runs per cell)")

    # Below: one representative run per cell, each request on the timeline.
    marks = (
        ("master", "tab:purple", "--", "new MASTER"),
        ("hook", "tab:gray", ":", "failover hook starts"),
        ("http_move", "tab:orange", "--", "API: lab-http assigned to the new node"),
        ("answer", "tab:green", "--", "first answer through the new node"),
    )
    chosen = {key: representative(cells[key]) for key in keys}
    right = max((t for run in chosen.values() if run for t, _, _ in run.traffic), default=5)
    handles = {}
    for index, key in enumerate(keys):
        axis = figure.add_subplot(grid[1 + index // 2, index % 2])
        run = chosen[key]
        axis.set_title(f"{titles[key[0]]}: {SCENARIOS[key[1]]}", fontsize=9)
        if run is None:
            axis.text(0.5, 0.5, "no complete run", ha="center", transform=axis.transAxes)
            continue
        level = {run.master: 2, run.new_role: 1}
        ok = [(t, level.get(via, 0)) for t, good, via in run.traffic if good]
        bad = [t for t, good, _ in run.traffic if not good]
        if ok:
            axis.scatter(*zip(*ok, strict=True), s=5, color="tab:green", label="request answered")
        if bad:
            axis.scatter(bad, [0] * len(bad), s=5, color="tab:red", label="request failed")
        axis.axvline(0, color="black", linewidth=1.5, label="fault")
        for phase, color, style, name in marks:
            if phase in run.phases:
                axis.axvline(run.phases[phase], color=color, linestyle=style, label=name)
        if run.all_moved is not None:
            axis.axvline(
                run.all_moved, color="tab:brown", linestyle="-.", label="every address moved"
            )
        axis.set_yticks([0, 1, 2], ["failed", f"via {run.new_role}", f"via {run.master}"])
        axis.set_ylim(-0.5, 2.5)
        axis.set_xlim(-1, right + 0.1)
        axis.set_xlabel(
            f"request sent, seconds after the fault (run {run.number}: first answer "
            f"{fmt(run.failover)}, {run.failed} requests failed)",
            fontsize=8,
        )
        axis.grid(axis="x", alpha=0.3)
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    if handles:
        figure.legend(
            handles.values(), handles.keys(), loc="outside lower center", ncol=4, fontsize=8
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def notes(runs, variants):
    lines = []
    masters = {}
    for run in runs:
        masters[run.master] = masters.get(run.master, 0) + 1
    lines.append(
        "- Master at each run's start (always the node faulted): "
        + ", ".join(f"{role} {count}x" for role, count in sorted(masters.items(), key=str))
    )
    noted = {}
    for run in runs:
        for note in run.notes:
            noted.setdefault((run.variant, run.scenario, note), []).append(run.number)
    for (variant, scenario, note), numbers in noted.items():
        planned = sum(1 for r in runs if (r.variant, r.scenario) == (variant, scenario))
        lines.append(f"- {variant} {SCENARIOS[scenario]}, {len(numbers)} of {planned} runs: {note}")
    errors = [r for r in runs if r.error]
    for run in errors:
        lines.append(f"- {run.variant} {SCENARIOS[run.scenario]} #{run.number}: {run.error}")
    slow = [r for r in runs if r.settle is not None and r.settle > QUIET + 2]
    if slow:
        lines.append(
            f"- {len(slow)} runs waited for the lab to settle (no address move for {QUIET:g} s) "
            "before the fault: "
            + ", ".join(
                f"{r.variant} {SCENARIOS[r.scenario]} #{r.number} {r.settle:.0f} s" for r in slow
            )
        )
    restores = {}
    for run in runs:
        if run.restore is not None:
            restores.setdefault((run.variant, run.scenario), []).append(run.restore)
    slow = [r for r in runs if r.restore is not None and r.restore > 2 * RESTORE_USUAL]
    slow = [r for r in slow if not (r.variant == "seeds" and r.scenario == "freeze")]
    if slow:
        lines.append(
            f"- Slow returns to the steady state (over {2 * RESTORE_USUAL:g} s): "
            + ", ".join(
                f"{r.variant} {SCENARIOS[r.scenario]} #{r.number} {r.restore:.1f} s"
                + (f" ({r.restore_moves} address moves)" if r.restore_moves is not None else "")
                for r in slow
            )
        )
    if restores:
        lines.append(
            "- Back to the steady state after each run (median): "
            + "; ".join(
                f"{v} {SCENARIOS[s]} {percentile(t, 50):.1f} s" for (v, s), t in restores.items()
            )
        )
    if any(v.seeds for v in variants):
        lines.append(
            "- The seeds' way: the tutorial's keepalived.conf (VRRPv2, advert_int 1, PASS auth, "
            "`pgrep haproxy` every 2 s, keepalived's default fall/rise) and master.sh (hcloud "
            "CLI: describe, then unassign + assign per floating IP, one after another) "
            "installed over our formula on both nodes; our haproxy config stays. It moves no "
            "alias IP, so its 'all addresses' are the floating IPs."
        )
    return lines


def parse_args():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10, help="runs per variant and scenario")
    parser.add_argument("--quick", action="store_true", help="3 runs per variant and scenario")
    parser.add_argument(
        "--variants",
        default=",".join(v.key for v in VARIANTS),
        help="comma-separated subset of: " + ", ".join(v.key for v in VARIANTS),
    )
    parser.add_argument("--name", default="hbench", help="the lab's namespace prefix")
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the random delay before each fault"
    )
    parser.add_argument("--out", default=str(OUT_MD), help="markdown report")
    parser.add_argument("--plot", default=str(OUT_PNG), help="plot (PNG)")
    parser.add_argument("--data", default=str(OUT_JSON), help="every run's figures (JSON)")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="no lab: write the report and plot again from the runs saved in --data",
    )
    args = parser.parse_args()
    if args.quick:
        args.runs = 3
    known = {v.key: v for v in VARIANTS}
    wanted = [key.strip() for key in args.variants.split(",") if key.strip()]
    unknown = [key for key in wanted if key not in known]
    if unknown:
        parser.error(f"unknown variants: {', '.join(unknown)}")
    args.variants = [known[key] for key in wanted]
    return args


def main():
    args = parse_args()
    if args.report_only:
        saved = json.loads(Path(args.data).read_text())
        meta = saved["meta"]
        args.runs = meta["runs_per_cell"]
        args.variants = [v for v in VARIANTS if v.key in meta["variants"]]
        return report([Run(**run) for run in saved["runs"]], args, meta)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    RANDOM.seed(args.seed)
    started = time.monotonic()
    load_before = os.getloadavg()[1]
    action_duration = Lab(name=args.name).action_duration
    say(
        f"== Failover lab benchmark: {args.runs} runs per cell, emulator actions take "
        f"{action_duration:g} s, {os.cpu_count()} CPUs"
    )
    runs = []
    try:
        for variant in args.variants:
            say(f"\n== {variant.title}: {', '.join(SCENARIOS[s] for s in variant.scenarios)}")
            runs += bench_variant(variant, args)
    except LabError as exc:
        say(f"\nthe benchmark failed: {exc}")
        if not runs:
            return 1
        say("reporting the runs so far")
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    meta = {
        "date": f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        "load": f"{load_before:.1f} / {os.getloadavg()[1]:.1f}",
        "runs_per_cell": args.runs,
        "variants": [v.key for v in args.variants],
        "action_duration": action_duration,
        "elapsed": time.monotonic() - started,
    }
    data = Path(args.data)
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text(json.dumps({"meta": meta, "runs": [dataclasses.asdict(r) for r in runs]}))
    return report(runs, args, meta)


def report(runs, args, meta):
    checks = target_checks(runs)
    text = [
        "# Failover lab benchmark",
        "",
        f"{meta['date']}, {os.cpu_count()} CPUs (5-minute load average at the start / end: "
        f"{meta['load']}), {args.runs} runs per cell, emulator actions take "
        f"{meta['action_duration']:g} s, total runtime {meta['elapsed'] / 60:.1f} min. "
        "Client traffic: a new connection every 20 ms "
        f"to the lab-http floating IP (timeout 1 s); each fault {WARMUP:g} s plus a random "
        f"0-{JITTER:g} s after the traffic started, the lab quiet. Times are from the fault; "
        "'first answer' is the first answer through the new node, 'all addresses moved' "
        "the last API move (floating IPs and alias IP) to it.",
        "",
        *summary_table(runs, args.runs),
        "",
        "## Targets",
        "",
        *check_lines(checks),
        "",
        "## Where the time goes (medians)",
        "",
        *phase_table(runs),
        "",
        "## Notes",
        "",
        *notes(runs, args.variants),
        "",
    ]
    say("\n" + "\n".join(text))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text))
    plot(runs, Path(args.plot), args.runs)
    say(f"written to {out} and {args.plot}")
    cells = {(r.variant, r.scenario) for r in runs}
    planned = sum(len(v.scenarios) for v in args.variants)
    broken = any(r.error for r in runs) or len(cells) < planned
    return 1 if broken or any(ok is False for ok, _ in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
