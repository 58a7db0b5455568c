"""
Benchmark: what a failover costs in API requests and time, in a small and in
a large project, for hcloud_ip as it is and as it was before the failover
path stopped reading the whole project (commit BEFORE below).

The emulator answers each request after 30 ms, paginates as the API does and
counts. The load balancer (lb-master, lb-backup, a private network) holds two
floating IPs and an alias IP on lb-backup; the small project has one more
floating IP, the large one 1000 more servers and 200 more floating IPs
(`POST /_fakecloud/populate`). Each run puts everything back on lb-backup and
runs `salt-call --local hcloud_ip.failover` on lb-master as the hook does
(the current module with its ID cache filled by `hcloud_ip.resolve`, as the
formula does when it is applied), then a re-assert that finds everything in
place. Prints a markdown table of medians and writes it to
results/failover-cost.md.

    make bench-cost
    .venv/bin/python test/bench/failover_cost.py --repeat 5
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import markdown_table, write_report
from fakecloud.pytest_plugin import FakeCloudProcess
from helpers import REPO, MasterlessNode

# The last commit whose failover listed every server and floating IP each round.
BEFORE = "1511509"
LATENCY = 0.03
CROWD = {"servers": 1000, "floating_ips": 200}
POLLS = ("GET", "/v1/actions")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median taken)")
    parser.add_argument("--out", default=str(REPO / "results" / "failover-cost.md"))
    return parser.parse_args()


def module_before(root):
    """A module dir holding hcloud_ip.py as it was at BEFORE."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{BEFORE}:_modules/hcloud_ip.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (root / "_modules").mkdir(parents=True)
    (root / "_modules" / "hcloud_ip.py").write_text(source)
    return root


def project(cloud, large):
    if large:
        cloud.populate(**CROWD)
    master = cloud.create_server("lb-master")
    backup = cloud.create_server("lb-backup")
    fips = [cloud.create_floating_ip(name, server_id=backup["id"]) for name in ("lb-http", "lb-ws")]
    if not large:
        cloud.create_floating_ip("other")
    net = cloud.create_network("lb-private", ip_range="10.0.0.0/16", subnet="10.0.1.0/24")
    cloud.attach_server(master["id"], net["id"], ip="10.0.1.2")
    cloud.attach_server(backup["id"], net["id"], ip="10.0.1.3", alias_ips=["10.0.1.1"])
    cloud.wait_idle()
    return master, backup, fips, net


def put_back(cloud, master, backup, fips, net):
    """The state a failover finds: everything on lb-backup."""
    client = cloud.client()
    to = client.servers.get_by_id(backup["id"])
    for fip in fips:
        bound = client.floating_ips.get_by_id(fip["id"])
        if bound.server is None or bound.server.id != backup["id"]:
            client.floating_ips.assign(bound, to).wait_until_finished()
    network = client.networks.get_by_id(net["id"])
    here = client.servers.get_by_id(master["id"])
    if "10.0.1.1" in here.private_net_for(network).alias_ips:
        client.servers.change_alias_ips(here, network, []).wait_until_finished()
        client.servers.change_alias_ips(to, network, ["10.0.1.1"]).wait_until_finished()


def measured(cloud, node, *args):
    cloud.clear_requests()
    ret = node.salt_call("hcloud_ip.failover", *args)
    report = json.loads(ret.stdout)["local"]
    if not report["result"]:
        raise RuntimeError(f"failover failed: {report}")
    made = [r for r in cloud.requests() if r["path"].startswith("/v1/")]
    polls = [r for r in made if (r["method"], r["path"]) == POLLS]
    others = [r for r in made if (r["method"], r["path"]) != POLLS]
    assigns = [r["time"] for r in others if r["path"].endswith("/actions/assign")]
    first = assigns[0] - made[0]["time"] if assigns else None
    return {
        "requests": len(others),
        "polls": len(polls),
        "seconds": report["seconds"],
        "first_assign": first,
    }


def bench(version, module_dir, large, args, root):
    with FakeCloudProcess(openapi=None, action_duration=0.5, rate_limit=1_000_000) as cloud:
        master, backup, fips, net = project(cloud, large)
        cloud.configure(latency=LATENCY)
        failover = {
            "floating_ips": ["lb-http", "lb-ws"],
            "alias_ips": {"lb-private": ["10.0.1.1"]},
            "peers": ["lb-backup"],
            "id_cache": str(root / "ids.json"),
        }
        node = MasterlessNode(root, "lb-master", cloud, module_dir=module_dir, failover=failover)
        if version == "now":
            node.salt_call("hcloud_ip.resolve")
        runs, reasserts = [], []
        for _ in range(args.repeat):
            put_back(cloud, master, backup, fips, net)
            runs.append(measured(cloud, node))
            reasserts.append(measured(cloud, node, "reassert=True")["requests"])
    return {
        key: statistics.median(run[key] for run in runs)
        for key in ("requests", "polls", "seconds", "first_assign")
    } | {"reassert": statistics.median(reasserts)}


def table(rows):
    columns = [
        "project",
        "hcloud_ip",
        "requests per failover",
        "polls of actions",
        "failover time",
        "first assign after",
        "requests per re-assert (all in place)",
    ]
    cells = [
        [
            name,
            version,
            f"{cell['requests']:g}",
            f"{cell['polls']:g}",
            f"{cell['seconds']:.2f} s",
            f"{cell['first_assign']:.2f} s",
            f"{cell['reassert']:g}",
        ]
        for (name, version), cell in rows.items()
    ]
    return markdown_table(columns, cells, align="ll" + "r" * 5)


def main():
    args = parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-cost-") as tmp:
        before = module_before(Path(tmp) / "before")
        for large, name in (
            (False, "2 servers, 3 floating IPs"),
            (True, "+1000 servers, +200 floating IPs"),
        ):
            for version, module_dir in ((f"before ({BEFORE})", before), ("now", REPO)):
                root = Path(tmp) / f"{version[:6]}-{large}"
                rows[name, version] = cell = bench(
                    version.split()[0], module_dir, large, args, root
                )
                print(f"  {name}, {version}: {cell}")
    header = (
        f"Medians of {args.repeat} runs; {LATENCY * 1000:g} ms per API answer, 0.5 s actions; "
        "a failover of 2 floating IPs and 1 alias IP, salt-call's start not included in its time"
    )
    write_report(args.out, "What a failover costs", header, table(rows))


if __name__ == "__main__":
    main()
