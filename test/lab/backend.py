"""
A lab backend: services on ports, each HTTP answering "NAME via PEER" or a
line service that greets with "NAME" and echoes every line (the long-lived
connections of the websockets group), either of them optionally behind a
PROXY protocol header (as haproxy's ``send-proxy``/``send-proxy-v2`` sends
it) and TLS (what a ``tcp`` balancer on 443 passes through, and what
``option ssl-hello-chk`` checks for).

    python3 backend.py NAME [--address ADDR] [--cert CERT --key KEY] SERVICE...

Each SERVICE is ``PORT=KIND[+proxy-v1|+proxy-v2][+tls]`` with KIND ``http``
or ``lines``, e.g. ``8080=http 8081=lines 30443=http+proxy-v2+tls``.

A port with a PROXY header takes none but connections that begin with one,
as a server configured for the protocol does (nginx's ``proxy_protocol``):
anything else is closed. The HTTP answer adds what the backend learned of
the client: ``proxy=ADDR`` (the header's source address; a health check
sends a LOCAL header, without one), ``xff=ADDR`` (an X-Forwarded-For
header) and ``tls=VERSION``, e.g. ``be1 via 10.241.0.11 proxy=10.240.1.100
tls=TLSv1.3``.
"""

import argparse
import http.server
import ipaddress
import socket
import socketserver
import ssl
import struct
import sys
import threading

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


class NoHeader(ConnectionError):
    """The connection did not begin with the PROXY header the port requires."""


def receive(sock, count):
    """Exactly ``count`` bytes (nothing more is read: TLS starts right after a header)."""
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise NoHeader("closed within the PROXY header")
        data += chunk
    return data


def proxy_v2_source(sock):
    """The client address of a PROXY v2 header (None for LOCAL, as health checks send)."""
    head = receive(sock, 16)
    if head[:12] != PROXY_V2_SIGNATURE or head[12] >> 4 != 2:
        raise NoHeader("no PROXY v2 header")
    command, family = head[12] & 0x0F, head[13]
    body = receive(sock, struct.unpack("!H", head[14:16])[0])
    if command == 0:  # LOCAL
        return None
    if family == 0x11 and len(body) >= 12:
        return str(ipaddress.IPv4Address(body[:4]))
    if family == 0x21 and len(body) >= 36:
        return str(ipaddress.IPv6Address(body[:16]))
    raise NoHeader(f"PROXY v2 family {family:#x} is not TCP over IPv4 or IPv6")


def proxy_v1_source(sock):
    """The client address of a PROXY v1 line (None for UNKNOWN)."""
    line = b""
    while not line.endswith(b"\r\n"):
        line += receive(sock, 1)
        if len(line) > 107:
            raise NoHeader("PROXY v1 line too long")
    words = line.decode("ascii", "replace").split()
    if words[:1] != ["PROXY"] or len(words) < 2:
        raise NoHeader("no PROXY v1 line")
    return words[2] if words[1] in ("TCP4", "TCP6") and len(words) == 6 else None


class Service:
    """What comes before the protocol on a connection: a PROXY header, a TLS handshake."""

    proxy = None  # "v1", "v2" or None
    tls = None  # an ssl.SSLContext or None

    def setup(self):
        self.connection = self.request
        self.connection.settimeout(30)
        self.proxied = None
        if self.proxy:
            read = proxy_v2_source if self.proxy == "v2" else proxy_v1_source
            self.proxied = read(self.connection)
        if self.tls:
            self.request = self.connection = self.tls.wrap_socket(self.connection, server_side=True)
        super().setup()

    def learned(self):
        """What the backend knows of the client beside the peer: proxy=, tls=."""
        words = []
        if self.proxied:
            words.append(f"proxy={self.proxied}")
        if self.tls:
            words.append(f"tls={self.connection.version()}")
        return words


class Answer(Service, http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        words = [self.server.name, "via", self.client_address[0]]
        words += self.learned()
        if self.headers.get("X-Forwarded-For"):
            words.append(f"xff={self.headers['X-Forwarded-For']}")
        body = (" ".join(words) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        """Quiet: thousands of requests a minute would bury everything else."""


class Echo(Service, socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(f"{self.server.name}\n".encode())
        for line in self.rfile:
            self.wfile.write(line)


class Threaded(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        """Quiet: health checks end TLS handshakes early and probe without a request."""


def parse_service(text):
    """``PORT=KIND[+proxy-v1|+proxy-v2][+tls]`` as (port, kind, proxy, tls)."""
    port, _, spec = text.partition("=")
    kind, *flags = spec.split("+")
    unknown = set(flags) - {"proxy-v1", "proxy-v2", "tls"}
    if kind not in ("http", "lines") or unknown or not port.isdigit():
        raise SystemExit(f"backend: cannot serve {text!r}")
    proxy = next((flag.removeprefix("proxy-") for flag in flags if flag.startswith("proxy")), None)
    return int(port), kind, proxy, "tls" in flags


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("services", nargs="+")
    parser.add_argument("--address", default="0.0.0.0")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    servers = []
    for text in args.services:
        port, kind, proxy, tls = parse_service(text)
        context = None
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(args.cert, args.key)
        handler = type(f"{kind}-{port}", (Answer if kind == "http" else Echo,), {})
        handler.proxy, handler.tls = proxy, context
        family = socket.AF_INET6 if ":" in args.address else socket.AF_INET
        server_class = type("Server", (Threaded,), {"address_family": family})
        server = server_class((args.address, port), handler)
        server.name = args.name
        servers.append(server)
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("backend: ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
