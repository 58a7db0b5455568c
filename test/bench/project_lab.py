"""
Benchmark: three load balancer pairs at rest in one project that also holds
1000 other servers and 200 other floating IPs, as production projects do.

The lab (test/lab) brings up pair 0 (lb1, lb2; applied by its salt-master)
in a crowded project and pairs 1 (lb3, lb4) and 2 (lb5, lb6) beside it
(masterless), each with two floating IPs, an alias IP and the formula's
default re-assert every 15 s. Then:

- at rest for --rest seconds: the API requests each node sends (the
  emulator's log), per pair and for the project, per hour; the CPU each
  MASTER spends (every process of the node: haproxy, keepalived and its
  checks, the agent; and the agent alone), per hour and as a share of one
  core. Beside it, what the way before the agent cost: one
  `salt-call hcloud_ip.failover reassert=True` per re-assert, its CPU
  measured on the same node;
- the agent's start to its first assign request, --restarts times on pair
  0's MASTER: with the agent stopped, lab-http is moved to the BACKUP
  through the API, then the agent is killed (-9); its script starts it
  again and it claims everything back.

Prints a markdown report and writes it to results/project-lab.md.

    make bench                                          # after the failover runs
    .venv/bin/python test/bench/project_lab.py --rest 180 --restarts 3
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import markdown_table, write_report
from helpers import REPO, wait_for
from lab.lab import VENV_BIN, Lab, LabError, default_pillar

CROWD = {"servers": 1000, "floating_ips": 200}
REASSERT = 15  # the formula's default hook:reassert_interval
AGENT = "hcloud_ip.agent"
# Every process of the node in its own PID namespace: (pid, command line,
# own CPU seconds, CPU seconds of its waited-for children).
PROCESS_TIMES = """
import json, os
tick = os.sysconf("SC_CLK_TCK")
found = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    if pid == str(os.getpid()):
        continue  # the snapshot itself
    try:
        stat = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
        cmdline = open(f"/proc/{pid}/cmdline").read().replace("\\0", " ")
    except OSError:
        continue
    own = (int(stat[11]) + int(stat[12])) / tick
    children = (int(stat[13]) + int(stat[14])) / tick
    found[pid] = [cmdline, own, children]
print(json.dumps(found))
"""
# The way before the agent, once: a salt-call re-assert, its CPU (children's rusage).
SALT_CALL_CPU = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(usage.ru_utime + usage.ru_stime)
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rest", type=float, default=600, help="seconds at rest (default 600)")
    parser.add_argument("--restarts", type=int, default=5, help="agent restarts measured")
    parser.add_argument("--name", default="hbproj", help="the labs' namespace prefix")
    parser.add_argument("--out", default=str(REPO / "results" / "project-lab.md"))
    return parser.parse_args()


def pair_pillar(pair):
    pillar = default_pillar(pair=pair)
    del pillar["hcloud_lb"]["hook"]  # the formula's defaults: as production runs it
    return pillar


def bring_up(name, labs):
    """The three pairs, each added to ``labs`` before it comes up (to be torn down)."""
    first = Lab(f"{name}0", pillar=pair_pillar(0), crowd=CROWD)
    labs.append(first)
    first.up()
    for pair in (1, 2):
        lab = Lab(
            f"{name}{pair}", pillar=pair_pillar(pair), project=first, pair=pair, masterless=True
        )
        labs.append(lab)
        lab.up()


def process_times(node):
    return json.loads(node.run("/usr/bin/python3", "-c", PROCESS_TIMES, check=True).stdout)


def cpu_between(before, after):
    """CPU seconds the node's processes spent between two process_times snapshots."""
    spent = 0.0
    for pid, (cmdline, own, children) in after.items():
        then = before.get(pid)
        if then and then[0] == cmdline:
            spent += own - then[1] + children - then[2]
        else:
            spent += own + children  # started in between
    return spent


def agent_cpu_between(before, after):
    pids = [pid for pid, (cmdline, *_) in after.items() if AGENT in cmdline]
    return sum(after[p][1] - before.get(p, after[p])[1] for p in pids if p in before)


def at_rest(labs, seconds):
    api = labs[0].api
    masters = {lab.name: lab.wait_steady() for lab in labs}
    before = {lab.name: process_times(lab.nodes[masters[lab.name]]) for lab in labs}
    api.clear_requests()
    start = time.time()
    time.sleep(seconds)
    elapsed = time.time() - start
    log = [r for r in api.requests() if r["time"] >= start]
    rows = []
    for lab in labs:
        master = masters[lab.name]
        after = process_times(lab.nodes[master])
        sent = {role: [r for r in log if lab.role_at(r["client"]) == role] for role in lab.nodes}
        rows.append(
            {
                "pair": lab.name,
                "master": master,
                "requests_master": len(sent[master]),
                "requests_backup": sum(len(v) for r, v in sent.items() if r != master),
                "node_cpu": cpu_between(before[lab.name], after),
                "agent_cpu": agent_cpu_between(before[lab.name], after),
                "paths": sorted({f"{r['method']} {r['path']}" for r in sent[master]}),
            }
        )
    return elapsed, rows


def salt_call_reassert_cpu(lab, role, times=3):
    """CPU seconds of one re-assert as the way before the agent ran it: a salt-call each."""
    argv = [
        str(VENV_BIN / "salt-call"),
        "-c",
        "/etc/hcloud_lb/salt",
        "--local",
        "--out=quiet",
        "hcloud_ip.failover",
        "reassert=True",
    ]
    node = lab.nodes[role]
    spent = [
        float(node.run("/usr/bin/python3", "-c", SALT_CALL_CPU, *argv, check=True).stdout)
        for _ in range(times)
    ]
    return statistics.median(spent)


# When a process of the node started (seconds since the epoch): boot time plus its start ticks.
STARTED = """
import os, sys
stat = open(f"/proc/{sys.argv[1]}/stat").read().rpartition(")")[2].split()
boot = next(int(l.split()[1]) for l in open("/proc/stat") if l.startswith("btime "))
print(boot + int(stat[19]) / os.sysconf("SC_CLK_TCK"))
"""


def agent_pid(node):
    pids = node.run("pgrep", "-f", f"salt-call.*{AGENT}").stdout.split()
    return pids[0] if len(pids) == 1 else None


def agent_restart(lab, role):
    """
    Seconds from the restarted agent's process start (salt-call's) to its
    "agent started" line and to its first assign request, lab-http moved away.
    """
    node, other = lab.nodes[role], next(r for r in lab.nodes if r != role)
    fip_id = lab.floating_ip_addresses[lab.groups["http"].moves]
    pid = wait_for(lambda: agent_pid(node), 30)
    node.run("kill", "-STOP", pid, check=True)
    lab.api.api(
        "POST",
        f"/floating_ips/{fip_id}/actions/assign",
        {"server": lab.servers[other]["id"]},
    )
    lab.api.wait_idle()
    lab.api.clear_requests()
    node.run("kill", "-KILL", pid, check=True)
    killed = time.time()
    own_ip = lab.servers[role]["public_net"]["ipv4"]["ip"]

    def first_assign():
        return next(
            (
                r["time"]
                for r in lab.api.requests()
                if r["client"] == own_ip and r["path"].endswith("/actions/assign")
            ),
            None,
        )

    assigned = wait_for(first_assign, 60)
    if not assigned or not wait_for(lambda: lab.all_on(role), 30):
        raise LabError(f"the restarted agent did not claim lab-http back: {lab.describe(logs=20)}")
    new = agent_pid(node)
    started = _stamped(node, "agent started on", killed)
    if new is None or started is None:
        raise LabError(f"the agent's restart is not in {role}'s log: {lab.describe(logs=20)}")
    process = float(node.run("/usr/bin/python3", "-c", STARTED, new, check=True).stdout)
    return started - process, assigned - process


def _stamped(node, text, since):
    for line in node.syslog().splitlines():
        if text in line:
            try:
                when = datetime.datetime.fromisoformat(line.partition(" ")[0]).timestamp()
            except ValueError:
                continue
            if when >= since - 1:
                return when
    return None


def report(elapsed, rows, salt_call_cpu, restarts, meta):
    hour = 3600 / elapsed
    columns = [
        "pair",
        "MASTER",
        "requests/h, MASTER",
        "requests/h, BACKUP",
        "requests/h, pair",
        "CPU s/h, MASTER node",
        "of one core",
        "CPU s/h, its agent",
    ]
    cells = [
        [
            row["pair"],
            row["master"],
            f"{row['requests_master'] * hour:.0f}",
            f"{row['requests_backup'] * hour:.0f}",
            f"{(row['requests_master'] + row['requests_backup']) * hour:.0f}",
            f"{row['node_cpu'] * hour:.1f}",
            f"{row['node_cpu'] / elapsed:.2%}",
            f"{row['agent_cpu'] * hour:.1f}",
        ]
        for row in rows
    ]
    project = sum(r["requests_master"] + r["requests_backup"] for r in rows) * hour
    worst = max(r["node_cpu"] / elapsed for r in rows)
    old_way = salt_call_cpu * 3600 / REASSERT
    started = [s for s, _ in restarts]
    assigned = [a for _, a in restarts]
    checks = [
        (
            all(r["paths"] == [f"GET /v1/servers/{r['server_id']}"] for r in rows),
            "a MASTER at rest sends nothing but the read of its own server",
        ),
        (project <= 3 * 3600 / REASSERT * 1.05, f"project at rest: {project:.0f} requests/h"),
        (worst < 0.01, f"a MASTER at rest under 1 % of one core: at most {worst:.2%}"),
    ]
    verdict = {True: "PASS", False: "FAIL"}
    return [
        f"{meta['date']}, {os.cpu_count()} CPUs (5-minute load average at the start / end: "
        f"{meta['load']}); three pairs at rest for {elapsed:.0f} s in a project of "
        f"{CROWD['servers']} other servers and {CROWD['floating_ips']} other floating IPs, "
        f"re-assert every {REASSERT} s (the default); figures per hour from that window.",
        markdown_table(columns, cells, align="ll" + "r" * 6),
        "\n".join(
            [
                f"- The project at rest: {project:.0f} requests an hour of its 3600 "
                f"({project / 36:.0f} %); a pair at rest costs one MASTER's re-asserts, "
                f"{3600 / REASSERT:.0f} an hour at {REASSERT} s.",
                f"- The way before the agent, one salt-call per re-assert: {salt_call_cpu:.2f} "
                f"CPU s each (median of 3 on {rows[0]['master']}), {old_way:.0f} CPU s/h "
                f"({old_way / 3600:.1%} of one core) at {REASSERT} s.",
                f"- The agent restarted (kill -9, its script starts it again), {len(restarts)} "
                f"times on {rows[0]['master']} with lab-http moved away: "
                f"salt-call's start to the agent running {_median(started)}, to its first "
                f"assign request {_median(assigned)} (medians; "
                f"{', '.join(f'{a:.2f}' for a in assigned)} s).",
                *(f"- **{verdict[ok]}** {text}" for ok, text in checks),
            ]
        ),
    ], all(ok for ok, _ in checks)


def _median(values):
    return f"{statistics.median(values):.2f} s" if values else "-"


def main():
    args = parse_args()
    load = os.getloadavg()[1]
    labs = []
    try:
        print(f"== three pairs in a crowded project, at rest for {args.rest:g} s", flush=True)
        started = time.monotonic()
        bring_up(args.name, labs)
        print(f"   up in {time.monotonic() - started:.0f} s", flush=True)
        elapsed, rows = at_rest(labs, args.rest)
        for lab, row in zip(labs, rows, strict=True):
            row["server_id"] = lab.servers[row["master"]]["id"]
        first = labs[0]
        salt_call_cpu = salt_call_reassert_cpu(first, rows[0]["master"])
        restarts = [agent_restart(first, rows[0]["master"]) for _ in range(args.restarts)]
    except (LabError, subprocess.CalledProcessError) as exc:
        print(f"the benchmark failed: {exc}")
        return 1
    finally:
        for lab in reversed(labs):
            lab.down(quiet=True)
    meta = {
        "date": f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        "load": f"{load:.1f} / {os.getloadavg()[1]:.1f}",
    }
    sections, ok = report(elapsed, rows, salt_call_cpu, restarts, meta)
    write_report(args.out, "Three pairs at rest in one project", *sections)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
