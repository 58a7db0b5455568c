"""
The demo (``make demo``): a failover and a failback in the lab, as a timeline.

It builds the lab (client, cloud with the API emulator and a salt-master, two
load balancer nodes, two backends; see lab/lab.py), lets the salt-master
apply the formula to both nodes, starts steady traffic to the floating IP,
kills haproxy on the MASTER and prints what happened and when: the health
check failing, the backup becoming MASTER, the failover hook, each address
changing holder in the API (and so in the cloud's routing), the first answer
through the new node, the failover time and the requests that failed. Then
haproxy returns on the first node, which takes its addresses back
(preemption), shown the same way. The lab is torn down at the end, also on
failure or Ctrl-C.
"""

import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab.lab import Lab, LabError
from lab.timeline import failover_report


def say(text=""):
    print(text, flush=True)


def wait_for_switch(lab, traffic, role, since, timeout=60):
    """Until the API has everything on ``role`` and the client got an answer through it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.switched_to(traffic, role, since):
            return True
        time.sleep(0.2)
    return False


def show(report):
    say("\n".join(report.lines()))
    say(f"  => {report.summary()}")
    if report.failed:
        kinds = sorted(
            {r.get("error", f"HTTP {r.get('status')}").split(":")[0] for r in report.failed}
        )
        span = report.failed[-1]["start"] - report.failed[0]["start"]
        say(
            f"     the failed requests ({', '.join(kinds)}) were sent within {span:.2f} s "
            "of each other, while the floating IP still led to the dead haproxy"
        )


def episode(lab, traffic, *, title, fault_text, act, new_role):
    say(f"\n== {title}")
    fault = time.time()
    act()
    switched = wait_for_switch(lab, traffic, new_role, fault)
    time.sleep(2)  # a little traffic after the switch, to show none of it fails
    report = failover_report(lab, fault, fault_text, traffic.records(), new_role)
    show(report)
    if not switched:
        raise LabError(f"no switch to {new_role}: {lab.describe()}")
    return report


def main():
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    lab = Lab(name="hdemo", say=say)
    started = time.monotonic()
    try:
        say(
            "== Building the lab: namespaces, the API emulator, a salt-master, two nodes, "
            "two backends"
        )
        lab.up()
        master = lab.master_node()
        backup = next(role for role in lab.nodes if role != master)
        addresses = ", ".join(f"{name} {ip}" for name, ip in lab.floating_ips.items())
        aliases = "".join(f" and alias {ip}" for ip in lab.alias_ips)
        say(
            f"   up in {time.monotonic() - started:.1f} s; the salt-master applied the formula "
            f"(highstate) to lb1 and lb2"
        )
        say(f"   {master} is MASTER, {backup} BACKUP; {addresses}{aliases} are on {master}")
        say(f"\n== Steady traffic: a new connection every 20 ms to {', '.join(lab.urls())}")
        traffic = lab.start_traffic()
        time.sleep(2)
        warmup = traffic.records()
        ok = [r for r in warmup if r["ok"]]
        say(f'   {len(ok)} of {len(warmup)} answered, e.g. "{ok[-1]["answer"]}"')
        failover = episode(
            lab,
            traffic,
            title=f"Failover: kill -9 haproxy on {master} (the MASTER)",
            fault_text=f"haproxy killed on {master}",
            act=lambda: lab.kill_haproxy(master),
            new_role=backup,
        )
        failback = episode(
            lab,
            traffic,
            title=f"Failback: haproxy starts again on {master}",
            fault_text=f"haproxy started on {master}",
            act=lambda: lab.start_haproxy(master),
            new_role=master,
        )
        traffic.stop()
        say("\n== Summary")
        say(f"   failover: {failover.summary()}")
        say(f"   failback: {failback.summary()}")
        return 0 if not failover.failed_after_switch and not failback.failed_after_switch else 1
    except LabError as exc:
        say(f"\nthe demo failed: {exc}")
        return 1
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    finally:
        say("\n== Tearing the lab down")
        lab.down()


if __name__ == "__main__":
    sys.exit(main())
