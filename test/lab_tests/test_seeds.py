"""
The write-ups' setups end to end: for each seed (the write-ups users arrive
from), the pillar README.md's "Coming from a write-up" gives its readers
(read from the README, as test/formula/test_seeds.py reads it), in a lab
of its own, applied by the lab's salt-master with highstate and failed over
once: haproxy is killed on the MASTER, every floating IP and alias IP must
follow to the other node, each balancer of each group answers through it,
and no request fails after the switch.

Only what must change to fit the lab is translated (``to_lab()``: the node
names and addresses, the addresses of floating IPs, alias IPs and backend
servers, the token, and max_connections where this machine's file limit
is below what haproxy needs); everything else is the seed's readers' own.
Seed 004 is a pillar tree: its files go into the lab's pillar root as
files, and Salt compiles them (the salt-master for the nodes, the lab for
its own view). What the seeds ask of the backends the lab's backends serve
as production's would: a PROXY v2 header before HTTP (send-proxy-v2), TLS
for the 443 balancers (ssl-hello-chk checks for it), a web server on each
load balancer at 127.0.0.1 (seed 001's nginx beside haproxy).

Each seed builds its own lab (40-90 s; seed 001's network ID 7578 costs
the emulator's IDs up to it, about 15 s more) and fails over once; the
module takes about 6 minutes.
"""

import fnmatch
import ipaddress
import json
import time

import pytest
import salt.utils.dictupdate
import yaml

from helpers import REPO, readme_seeds
from lab.lab import (
    BACKENDS,
    CLIENT_IP,
    CLIENT_PRIVATE_IP,
    FLOATING_POOL,
    LOOPBACK,
    NODES,
    PUBLIC_NODES,
    Lab,
    max_connections_here,
)
from lab_tests.test_failover import SWITCH_BOUND, assert_none_failed_after_switch, fail_over

PILLARS, FILES = readme_seeds()
SEEDS = sorted([*PILLARS, *FILES])
TOP = "top.sls"
# The lab's nodes have two links: eth0 to the public network, ens10 to the private one.
LAB_ADDRESSES = {"eth0": PUBLIC_NODES, "ens10": NODES}
ALIAS_IPS = "10.241.0.100"  # the first of the lab's alias IPs (its private network)
DEFAULTS = yaml.safe_load((REPO / "hcloud_lb" / "defaults.yaml").read_text())["hcloud_lb"]


def to_lab(documents):
    """
    A seed's pillar fitted to the lab: ``documents`` is {path: data} (one
    whole pillar under any path, or a pillar tree with its ``top.sls``);
    returns the translated documents and what was translated, {what: {seed
    value: lab value}}. Only this changes:

    - the node names: the lab's lb1 and lb2, in the order the seed names
      its nodes (a top file's target naming them too);
    - the node addresses: that node's address in the lab on the seed's VRRP
      interface (eth0: its public address, ens10: its private one);
    - the addresses of floating IPs (a group's ``floating_ip`` or
      ``address``): the lab's 10.240.100.1, .2, ... in order; alias IPs:
      10.241.0.100, .101, ...; backend servers: be1's and be2's addresses in
      order (127.0.0.1, a web server on the load balancer, stays: the lab
      serves it on each node);
    - the token: dropped, the lab gives its own;
    - max_connections: at most what haproxy may have on this machine (its
      file limit, which the lab's processes cannot raise; the seeds'
      10000 needs 20100 files).
    """
    entries = [data.get("hcloud_lb") or {} for path, data in documents.items() if path != TOP]
    names = dict.fromkeys(name for entry in entries for name in entry.get("nodes") or {})
    nodes = dict(zip(names, NODES, strict=True))
    interfaces = [e["vrrp"]["interface"] for e in entries if "interface" in e.get("vrrp", {})]
    interface = (interfaces or [DEFAULTS["vrrp"]["interface"]])[-1]
    aliases = _each(entries, "alias_ips", "*", "ips", "*")
    floating = _each(entries, "groups", "*", ("floating_ip", "address"))
    floating = [address for address in floating if _ipv4(address) and address not in aliases]
    servers = _each(entries, "groups", "*", "balancers", "*", "backend_servers", "*", "host")
    servers = [host for host in servers if host not in LOOPBACK]
    if len(servers) > len(BACKENDS) or len(aliases) > 16:
        raise ValueError(f"more backends or alias IPs than the lab has: {servers} {aliases}")
    table = {
        "nodes": nodes,
        "node addresses": {
            str(node["address"]): LAB_ADDRESSES[interface][nodes[name]]
            for entry in entries
            for name, node in (entry.get("nodes") or {}).items()
        },
        "floating IPs": dict(zip(floating, map(str, _hosts(FLOATING_POOL)), strict=False)),
        "alias IPs": {ip: str(ipaddress.ip_address(ALIAS_IPS) + n) for n, ip in enumerate(aliases)},
        "backends": dict(zip(servers, BACKENDS.values(), strict=False)),
    }
    addresses = {k: v for what, part in table.items() if what != "nodes" for k, v in part.items()}
    translated = {}
    for path, given in documents.items():
        if path == TOP:
            translated[path] = {
                env: {_target(target, nodes): sls for target, sls in top.items()}
                for env, top in given.items()
            }
            continue
        translated[path] = data = _replaced(given, addresses)
        entry = data.get("hcloud_lb") or {}
        if "nodes" in entry:
            entry["nodes"] = {nodes[name]: node for name, node in entry["nodes"].items()}
        if "max_connections" in entry:
            entry["max_connections"] = max_connections_here(entry["max_connections"])
        if "token" in (data.get("hcloud") or {}):
            del data["hcloud"]["token"]
            if not data["hcloud"]:
                del data["hcloud"]
    return translated, table


def _each(entries, *path):
    """
    The values at ``path`` in the entries, each once, in order of appearance:
    a step is a key, a tuple of keys, or "*" (every value of a mapping or list).
    """
    found = entries
    for step in path:
        found = [child for item in found for child in _children(item, step)]
    return list(dict.fromkeys(found))


def _children(item, step):
    if step == "*":
        return (
            list(item.values())
            if isinstance(item, dict)
            else item
            if isinstance(item, list)
            else []
        )
    keys = step if isinstance(step, tuple) else (step,)
    return [item[key] for key in keys if key in item] if isinstance(item, dict) else []


def _hosts(network):
    return ipaddress.ip_network(network).hosts()


def _replaced(value, addresses):
    """A copy of ``value`` with each address of ``addresses`` replaced."""
    if isinstance(value, dict):
        return {key: _replaced(item, addresses) for key, item in value.items()}
    if isinstance(value, list):
        return [_replaced(item, addresses) for item in value]
    return addresses.get(value, value) if isinstance(value, str) else value


def _target(target, nodes):
    """A top file's target for the seed's nodes, for the lab's: all of them (lb*), or one."""
    matched = [nodes[name] for name in nodes if fnmatch.fnmatchcase(name, target)]
    if not matched or target == "*":
        return target
    if len(matched) == len(nodes):
        return "lb*"
    (node,) = matched
    return node


def _ipv4(value):
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        return None


def lab_for(seed):
    """The seed's lab (not up yet), the pillar the lab must see, and what was translated."""
    if seed in FILES:
        parsed = {
            path.removeprefix("pillar/"): yaml.safe_load(text) for path, text in FILES[seed].items()
        }
        files, table = to_lab(parsed)
        texts = {path: yaml.safe_dump(data, sort_keys=False) for path, data in files.items()}
        lab = Lab(name=f"hsd{seed}", pillar_files=texts)
        # What Salt must make of them: the top file's SLS merged in its order.
        expected = {}
        for sls in next(iter(files[TOP]["base"].values())):
            expected = salt.utils.dictupdate.merge(expected, files[sls.replace(".", "/") + ".sls"])
        return lab, expected, table
    documents, table = to_lab({"pillar": PILLARS[seed]})
    return Lab(name=f"hsd{seed}", pillar=documents["pillar"]), documents["pillar"], table


def _json(value):
    """As it comes back from Salt (keys are strings there: the alias network 7578)."""
    return json.loads(json.dumps(value))


def says(answer, words):
    """The answer has each of ``words`` (one ending in "=": with any value)."""
    have = answer.split()
    return all(any(h == w or (w.endswith("=") and h.startswith(w)) for h in have) for w in words)


def answer_says(balancer, url, client):
    """What a backend learned of the client, as its answer must say for this balancer."""
    says = []
    if all(
        "send-proxy-v2" in server.get("options", "")
        for server in balancer["backend_servers"].values()
    ):
        says.append(f"proxy={client}")
    if url.startswith("https:"):
        says.append("tls=")  # and the version
    if "forwardfor" in (balancer.get("options") or []):
        says.append(f"xff={client}")
    return says


@pytest.mark.parametrize("seed", SEEDS)
def test_a_seeds_pillar_applied_by_highstate_fails_over_when_haproxy_dies(seed):
    lab, expected, table = lab_for(seed)
    moves = {*table["floating IPs"].values(), *table["alias IPs"].values()}
    traffic = None
    try:
        lab.up()
        # The lab sees the seed's pillar, translated, and the nodes got it from
        # the salt-master with only the lab's own added.
        assert _json(lab.user_pillar) == _json(expected)
        for role in lab.nodes:
            got = lab.salt(role, "pillar.get", "hcloud_lb")["returns"].get(role)
            assert got == _json(lab.pillar()["hcloud_lb"]), role
        master = lab.master_node()
        other = next(role for role in lab.nodes if role != master)
        assert lab.holders() == dict.fromkeys(moves, master), lab.describe()

        # Every balancer of every group answers through the MASTER, with what
        # the backend learned of the client (PROXY v2, TLS, X-Forwarded-For).
        settings = lab.settings
        urls = {}
        for name, group in settings["groups"].items():
            client = CLIENT_PRIVATE_IP if group.get("address") in lab.alias_ips else CLIENT_IP
            for bname, balancer in group["balancers"].items():
                url = lab.groups[name].balancer_urls.get(bname)
                assert url, f"the lab serves no URL for {name}:{bname}: {lab.groups[name]}"
                urls[url] = answer_says(balancer, url, client)
        for url, learned in urls.items():
            ok, answer = lab.http("client", url)
            assert ok and lab.node_of(answer) == master, (url, answer)
            assert says(answer, learned), (url, answer, learned)

        traffic = lab.start_traffic()
        time.sleep(1)
        report = fail_over(lab, traffic, lambda: lab.kill_haproxy(master), "haproxy killed", other)
        assert report.failover_seconds < SWITCH_BOUND, report.lines()
        assert lab.master_node() == other, lab.describe()
        # A failing check puts the node in FAULT, or with a weight lowers its priority.
        node = settings["nodes"][master]
        weight = node.get("check_weight", settings["vrrp"].get("check", {}).get("weight", 0))
        assert lab.nodes[master].vrrp_state() == ("BACKUP" if weight else "FAULT"), lab.describe()
        assert lab.holders() == dict.fromkeys(moves, other), lab.describe()
        records = traffic.records()
        for url, learned in urls.items():
            through = lab.answers_through(records, other, report.switch_done, url)
            assert through, (url, report.lines())
            assert says(through[-1]["answer"], learned), (url, through[-1], learned)
        assert_none_failed_after_switch(lab, report)
    finally:
        if traffic:
            traffic.stop()
        lab.down(quiet=True)
