"""
What happened during a failover in the lab, from its five witnesses: the
fault's own time, the nodes' syslogs (keepalived's state changes, the
failover hook), the emulator's event log (each address changing holder, the
moment its action completed), the cloud's route log (the moment traffic
follows) and the client's request log.
"""

import dataclasses
import datetime

# keepalived and hook log lines worth a place on the timeline, and what they mean.
SYSLOG_MARKS = (
    ("VRRP_Script(", " failed", "health check fails"),
    ("Entering FAULT STATE", "", "enters FAULT"),
    ("Entering BACKUP STATE", "", "becomes BACKUP"),
    ("Entering MASTER STATE", "", "becomes MASTER"),
    ("failover (notify_master) starting", "", "failover hook starts"),
    ("failover (notify_master) exited with 0", "", "failover hook done"),
    ("keepalived: ", " is MASTER", "agent: MASTER"),
    ("failover to ", " in ", "agent: failover done"),
    ("re-assert to ", " in ", "agent: re-assert moved"),
)


@dataclasses.dataclass
class Report:
    fault: float
    new_role: str
    timeline: list  # (time, who, what), sorted
    failover_seconds: float | None  # fault -> first answer through the new node
    switch_done: float | None  # the cloud routes the last address to the new node
    requests: int
    failed: list
    failed_after_switch: list

    def lines(self):
        out = []
        for when, who, what in self.timeline:
            out.append(f"  +{when - self.fault:7.3f} s  {who:<7} {what}")
        return out

    def summary(self):
        if self.failover_seconds is None:
            return f"no answer through {self.new_role} yet"
        return (
            f"switch time {self.failover_seconds:.2f} s (fault to first answer through "
            f"{self.new_role}); requests failed: {len(self.failed)} of {self.requests}, "
            f"{len(self.failed_after_switch)} after the switch completed"
        )


def syslog_events(lab, since):
    events = []
    for role, node in lab.nodes.items():
        for line in node.syslog().splitlines():
            stamp, _, text = line.partition(" ")
            try:
                when = datetime.datetime.fromisoformat(stamp).timestamp()
            except ValueError:
                continue
            if when < since:
                continue
            for needle, also, meaning in SYSLOG_MARKS:
                if needle in text and also in text:
                    events.append((when, role, meaning))
                    break
    return events


def api_events(lab, since):
    events = []
    for event in lab.api_events(since):
        role = lab.server_role(event["new_server_id"])
        what = "alias IP" if event["kind"] != "floating_ip" else "floating IP"
        done = f"assigned to {role}" if role else "released"
        events.append((event["time"], "API", f"{what} {event['ip']} {done}"))
    return events


def failover_report(lab, fault, fault_text, records, new_role):
    """The timeline and figures of one failover to ``new_role`` that started at ``fault``."""
    window = [r for r in records if r["kind"] == "request" and r["start"] >= fault]
    through_new = lab.answers_through(window, new_role, fault)
    first = min(through_new, key=lambda r: r["end"]) if through_new else None
    # The switch is done when the cloud routes the last address to the new
    # node, not when the API reports the move: requests in between still go
    # the old way.
    routed = [e for e in lab.route_events(fault) if e["role"] == new_role]
    switch_done = max((e["time"] for e in routed), default=None)
    failed = [r for r in window if not r["ok"]]
    after = [r for r in failed if switch_done is not None and r["start"] >= switch_done]
    timeline = [(fault, "lab", fault_text)]
    timeline += syslog_events(lab, fault) + api_events(lab, fault)
    if switch_done is not None:
        timeline.append((switch_done, "cloud", f"routes the last address moved to {new_role}"))
    if first:
        timeline.append(
            (first["end"], "client", f'first answer through {new_role}: "{first["answer"]}"')
        )
    timeline.sort()
    return Report(
        fault=fault,
        new_role=new_role,
        timeline=timeline,
        failover_seconds=(first["end"] - fault) if first else None,
        switch_done=switch_done,
        requests=len(window),
        failed=failed,
        failed_after_switch=after,
    )
