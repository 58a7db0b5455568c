"""
Demo: a failover of floating IPs and an alias IP with hcloud_ip, against the
emulator, as keepalived's hook runs it (`salt-call --local hcloud_ip.failover`).

It builds the seeds' setup in the emulator (lb-master and lb-backup, an http
and a websockets floating IP, an IPv6 one, and an alias IP in a private
network, all on lb-backup), fails over to lb-master while the API answers
`locked` and 503 to the first attempts, and prints a timeline of what the
API saw and when each address changed holder. Then it fails back.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fakecloud.pytest_plugin import FakeCloudProcess
from helpers import MasterlessNode

FLOATING_IPS = ["lb-http", "lb-ws", "lb-v6"]
ALIAS_IPS = {"lb-private": ["10.0.1.1"]}


def build_project(cloud):
    master = cloud.create_server("lb-master")
    backup = cloud.create_server("lb-backup")
    cloud.create_floating_ip("lb-http", server_id=backup["id"])
    cloud.create_floating_ip("lb-ws", server_id=backup["id"])
    cloud.create_floating_ip("lb-v6", type="ipv6", server_id=backup["id"])
    net = cloud.create_network("lb-private", ip_range="10.0.0.0/16", subnet="10.0.1.0/24")
    cloud.attach_server(master["id"], net["id"], ip="10.0.1.2")
    cloud.attach_server(backup["id"], net["id"], ip="10.0.1.3", alias_ips=["10.0.1.1"])
    cloud.wait_idle()
    return {master["id"]: "lb-master", backup["id"]: "lb-backup"}


def fail_over(node):
    started = time.time()
    ret = node.salt_call("hcloud_ip.failover", check=False)
    return started, time.time(), ret


def print_timeline(cloud, names, started, ended, since):
    print(f"  {'t+s':>6}  what")
    rows = [(started, "keepalived's hook starts salt-call --local hcloud_ip.failover")]
    for request in cloud.requests():
        if request["time"] >= started and request["method"] == "POST":
            outcome = f"{request['status']}" + (
                f" ({request['fault']})" if request["fault"] else ""
            )
            rows.append(
                (request["time"], f"API {request['method']} {request['path']} -> {outcome}")
            )
    for event in cloud.events(since=since)["events"]:
        old = names.get(event["old_server_id"], "nobody")
        new = names.get(event["new_server_id"], "nobody")
        where = f" in network {event['network_id']}" if event["kind"] == "alias_ip" else ""
        rows.append((event["time"], f"{event['ip']}{where} now routed to {new} (was {old})"))
    rows.append((ended, "salt-call returns"))
    for when, what in sorted(rows):
        print(f"  {when - started:6.2f}  {what}")


def print_report(ret):
    if ret.returncode != 0:
        print(ret.stdout, ret.stderr)
        raise SystemExit(f"failover failed with exit code {ret.returncode}")
    report = json.loads(ret.stdout)["local"]
    print(f"  result: {report['result']} in {report['seconds']} s (inside salt-call)")
    for kind in ("floating_ips", "alias_ips"):
        for label, entry in report[kind].items():
            state = "moved" if entry["moved"] else entry.get("comment", entry.get("error"))
            print(f"    {label}: {state}")


def main():
    print("Starting the Hetzner Cloud API emulator (actions take 1 s, as on the real API)")
    with (
        FakeCloudProcess(openapi=None, action_duration=1.0) as cloud,
        tempfile.TemporaryDirectory() as tmp,
    ):
        names = build_project(cloud)
        failover = {"floating_ips": FLOATING_IPS, "alias_ips": ALIAS_IPS}
        nodes = {
            name: MasterlessNode(tmp, name, cloud, failover=failover) for name in names.values()
        }
        print("lb-backup holds lb-http, lb-ws, lb-v6 and alias 10.0.1.1; lb-master takes over.")
        print("The API answers 'locked' and then 503 to the first assign attempts.\n")
        cloud.add_fault("/floating_ips/*/actions/assign", count=1, status=423, code="locked")
        cloud.add_fault("/floating_ips/*/actions/assign", count=1, status=503, code="unavailable")
        cloud.clear_requests()
        since = cloud.events()["last"]
        started, ended, ret = fail_over(nodes["lb-master"])
        print_timeline(cloud, names, started, ended, since)
        print_report(ret)

        print("\nFailback: lb-backup takes everything back, with no faults this time.\n")
        cloud.clear_requests()
        since = cloud.events()["last"]
        started, ended, ret = fail_over(nodes["lb-backup"])
        print_timeline(cloud, names, started, ended, since)
        print_report(ret)
        print("\nRunning it again moves nothing: everything is already there.")
        _, _, ret = fail_over(nodes["lb-backup"])
        print_report(ret)


if __name__ == "__main__":
    main()
