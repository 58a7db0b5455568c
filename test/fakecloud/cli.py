"""Command line: parse options, start the listeners, run until SIGTERM/SIGINT."""

import argparse
import ipaddress
import os
import signal
import sys
import threading

from fakecloud.hooks import HookRunner
from fakecloud.server import Emulator, make_server, serve_in_thread
from fakecloud.state import Cloud, Settings


def host_port(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def cidr(version):
    def parse(text):
        try:
            network = ipaddress.ip_network(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if network.version != version:
            raise argparse.ArgumentTypeError(f"{text} is not an IPv{version} range")
        return text

    return parse


def parser():
    p = argparse.ArgumentParser(
        prog="fakecloud",
        description="Stateful local emulator of the Hetzner Cloud API "
        "(API under /v1, metadata under /hetzner/v1/metadata, control API under /_fakecloud).",
    )
    p.add_argument(
        "--listen",
        type=host_port,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="address of the API listener (default 127.0.0.1:0, a free port; "
        "the ready line names the actual one)",
    )
    token = p.add_mutually_exclusive_group(required=True)
    token.add_argument("--token", help="the API token clients must send as Bearer token")
    token.add_argument("--token-file", metavar="FILE", help="read the API token from FILE")
    p.add_argument(
        "--metadata-listen",
        type=host_port,
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="extra listener serving only the metadata service (repeatable), "
        "e.g. 169.254.169.254:80 in a lab",
    )
    p.add_argument(
        "--action-duration",
        type=float,
        default=0.2,
        metavar="SECONDS",
        help="how long actions run before they finish (default 0.2)",
    )
    p.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay added to every API and metadata response (default 0)",
    )
    p.add_argument(
        "--rate-limit",
        type=int,
        default=3600,
        metavar="N",
        help="rate limit bucket size in requests (default 3600)",
    )
    p.add_argument(
        "--rate-refill",
        type=float,
        default=1.0,
        metavar="PER_SECOND",
        help="requests added back to the bucket per second (default 1)",
    )
    p.add_argument(
        "--openapi",
        metavar="PATH",
        help="validate every API response against this OpenAPI spec (hcloud.json); "
        "violations go to stderr and GET /_fakecloud/violations",
    )
    p.add_argument(
        "--on-change",
        metavar="CMD",
        help="shell command run when a floating IP or alias IP changes holder; "
        "gets FAKECLOUD_KIND, FAKECLOUD_IP, FAKECLOUD_NETWORK_ID, FAKECLOUD_OLD_SERVER_ID, "
        "FAKECLOUD_NEW_SERVER_ID, FAKECLOUD_NEW_SERVER_IPV4, FAKECLOUD_NEW_SERVER_PRIVATE_IP",
    )
    p.add_argument(
        "--server-ipv4-pool",
        type=cidr(4),
        default="203.0.113.0/24",
        metavar="CIDR",
        help="public IPv4 addresses of servers (default 203.0.113.0/24)",
    )
    p.add_argument(
        "--floating-ipv4-pool",
        type=cidr(4),
        default="198.51.100.0/24",
        metavar="CIDR",
        help="IPv4 floating IPs (default 198.51.100.0/24)",
    )
    p.add_argument(
        "--ipv6-pool",
        type=cidr(6),
        default="2001:db8::/32",
        metavar="CIDR",
        help="carved into /64s for servers and IPv6 floating IPs (default 2001:db8::/32)",
    )
    return p


def read_token(args):
    if args.token is not None:
        return args.token
    with open(args.token_file, encoding="utf-8") as handle:
        return handle.read().strip()


def build(args):
    """The emulator described by the parsed options (no listeners yet)."""
    validator = None
    if args.openapi:
        # Imported only when asked for: jsonschema is an optional dependency.
        from fakecloud.schema import Validator  # noqa: PLC0415

        validator = Validator(args.openapi)
    hooks = HookRunner(args.on_change) if args.on_change else None
    settings = Settings(
        action_duration=args.action_duration,
        latency=args.latency,
        rate_limit=args.rate_limit,
        rate_refill=args.rate_refill,
    )
    pools = {
        "server_ipv4": args.server_ipv4_pool,
        "floating_ipv4": args.floating_ipv4_pool,
        "ipv6": args.ipv6_pool,
    }
    cloud = Cloud(settings, pools, on_event=hooks)
    return Emulator(cloud, read_token(args), validator), hooks


def main(argv=None):
    options = parser()
    args = options.parse_args(argv)
    if args.openapi and not os.path.isfile(args.openapi):
        options.error(f"--openapi: no such file: {args.openapi}")
    emulator, hooks = build(args)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    scheduler = threading.Thread(
        target=emulator.cloud.run_scheduler, args=(stop,), name="fakecloud-actions", daemon=True
    )
    scheduler.start()
    servers = [make_server(emulator, *args.listen)]
    servers += [make_server(emulator, *addr, metadata_only=True) for addr in args.metadata_listen]
    for server in servers:
        serve_in_thread(server)
    host, port = servers[0].server_address[:2]
    print(f"fakecloud: listening on http://{_url_host(host)}:{port}", flush=True)
    stop.wait()
    for server in servers:
        server.shutdown()
        server.server_close()
    with emulator.cloud.changed:
        emulator.cloud.changed.notify_all()
    scheduler.join(5)
    if hooks:
        hooks.stop()
    return 0


def _url_host(host):
    return f"[{host}]" if ":" in host else host


if __name__ == "__main__":
    sys.exit(main())
