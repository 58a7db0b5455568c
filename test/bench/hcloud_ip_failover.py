"""
Benchmark: how long moving N floating IPs to this node takes.

Against the emulator (no added latency, actions that take a realistic time),
it measures `salt-call --local hcloud_ip.failover` for 1, 4 and 16 floating
IPs, and beside it the seeds' way: the hcloud CLI describing, unassigning and
assigning each floating IP, one after another. Prints a table of medians and
writes it to results/bench-hcloud-ip.md.

    make bench-hcloud-ip                      # defaults below
    .venv/bin/python test/bench/hcloud_ip_failover.py --repeat 3 --durations 0.5
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import markdown_table, write_report
from fakecloud.pytest_plugin import FakeCloudProcess
from helpers import REPO, MasterlessNode

HCLOUD_CLI = "/usr/bin/hcloud"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per cell (median taken)")
    parser.add_argument(
        "--seeds-repeat", type=int, default=3, help="runs per cell for the slow seeds' way"
    )
    parser.add_argument("--durations", default="0.5,2", help="action durations in seconds")
    parser.add_argument("--counts", default="1,4,16", help="numbers of floating IPs")
    parser.add_argument("--out", default=str(REPO / "results" / "bench-hcloud-ip.md"))
    return parser.parse_args()


def timed(func):
    start = time.monotonic()
    func()
    return time.monotonic() - start


def put_back_on_backup(client, names, backup):
    """Start each run from the state a failover finds: the IPs on the other node."""

    def move(name):
        fip = client.floating_ips.get_by_name(name)
        if fip.server is None or fip.server.id != backup.id:
            client.floating_ips.assign(fip, backup).wait_until_finished()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(move, names))


def ours(node, names):
    ret = node.salt_call("hcloud_ip.failover", "floating_ips=" + ",".join(names))
    report = json.loads(ret.stdout)["local"]
    if not report["result"]:
        raise RuntimeError(f"failover failed: {report}")


def seeds_way(cloud, names):
    """The seeds' hook: find this server, then per IP describe, unassign, assign, in turn."""
    env = {**os.environ, "HCLOUD_ENDPOINT": cloud.api_url, "HCLOUD_TOKEN": cloud.token}
    env["HCLOUD_CONFIG"] = os.devnull

    def cli(*args):
        return subprocess.run(
            [HCLOUD_CLI, *args], env=env, capture_output=True, text=True, check=True
        ).stdout

    me = json.loads(cli("server", "describe", "lb-master", "-o", "json"))["id"]
    for name in names:
        current = json.loads(cli("floating-ip", "describe", name, "-o", "json"))["server"]
        if current != me:
            cli("floating-ip", "unassign", name)
            cli("floating-ip", "assign", name, str(me))


def median_of(runs, reset, measure):
    samples = []
    for _ in range(runs):
        reset()
        samples.append(timed(measure))
    return statistics.median(samples)


def bench_duration(duration, counts, args, root):
    with FakeCloudProcess(openapi=None, action_duration=duration, rate_limit=1_000_000) as cloud:
        client = cloud.client()
        cloud.create_server("lb-master")
        backup_id = cloud.create_server("lb-backup")["id"]
        backup = client.servers.get_by_id(backup_id)
        names = [f"lb-{n}" for n in range(max(counts))]
        for name in names:
            cloud.create_floating_ip(name, server_id=backup_id)
        cloud.wait_idle()
        node = MasterlessNode(root / f"{duration:g}s", "lb-master", cloud)
        startup = median_of(args.repeat, lambda: None, lambda: node.salt_call("test.true"))
        rows = []
        for count in counts:
            subset = names[:count]

            def reset(subset=subset):
                put_back_on_backup(client, subset, backup)

            ours_s = median_of(args.repeat, reset, lambda s=subset: ours(node, s))
            seeds_s = median_of(args.seeds_repeat, reset, lambda s=subset: seeds_way(cloud, s))
            rows.append((count, ours_s, seeds_s))
            print(
                f"  {duration:g}s actions, {count:>2} IPs: ours {ours_s:.2f}s, seeds {seeds_s:.2f}s"
            )
        return startup, rows


def table(results):
    columns = [
        "action duration",
        "floating IPs",
        "`salt-call hcloud_ip.failover`",
        "seeds' way (CLI, one by one)",
        "seeds / ours",
    ]
    cells = [
        [
            f"{duration:g} s",
            count,
            f"{ours_s:.2f} s",
            f"{seeds_s:.2f} s",
            f"{seeds_s / ours_s:.1f}x",
        ]
        for duration, (_, rows) in results.items()
        for count, ours_s, seeds_s in rows
    ]
    lines = [*markdown_table(columns, cells, align="r" * len(columns)), ""]
    for duration, (startup, rows) in results.items():
        by_count = {count: ours_s for count, ours_s, _ in rows}
        if len(by_count) > 1:
            most, least = max(by_count), min(by_count)
            ratio = by_count[most] / by_count[least]
            verdict = "meets" if ratio <= 1.3 else "MISSES"
            lines.append(
                f"- {duration:g} s actions: {most} IPs take {ratio:.2f}x the time of {least} "
                f"({verdict} the <= 1.3x target)"
            )
        lines.append(
            f"- salt-call start-up overhead (`salt-call --local test.true`), included above: "
            f"{startup:.2f} s"
        )
    return "\n".join(lines)


def main():
    args = parse_args()
    durations = [float(d) for d in args.durations.split(",")]
    counts = sorted(int(c) for c in args.counts.split(","))
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-hcloud-ip-") as tmp:
        for duration in durations:
            results[duration] = bench_duration(duration, counts, args, Path(tmp))
    header = (
        f"Medians of {args.repeat} runs (seeds' way: {args.seeds_repeat}), emulator on loopback"
    )
    write_report(args.out, "hcloud_ip failover benchmark", header, table(results))


if __name__ == "__main__":
    main()
