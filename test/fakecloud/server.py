"""HTTP front end: one handler for the API, the metadata service and the control API."""

import json
import secrets
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from fakecloud import api, control, metadata
from fakecloud.errors import ApiError

METADATA_PREFIX = "/hetzner/v1/metadata"


class Emulator:
    """Everything a request handler needs; shared by all listeners of one process."""

    def __init__(self, cloud, token, validator=None):
        self.cloud = cloud
        self.token = token
        self.validator = validator
        self.limiter = control.RateLimiter()
        self.faults = control.Faults()
        self.log = control.RequestLog()
        self.violations = []
        self.metadata_sources = {}
        self.reset()

    def reset(self):
        with self.cloud.lock:
            self.cloud.reset()
            self.limiter.reset(self.cloud.settings)
            self.metadata_sources.clear()
        self.faults.clear()
        self.log.clear()
        self.violations.clear()

    def map_metadata_sources(self, mapping):
        if not isinstance(mapping, dict) or not all(
            v is None or isinstance(v, int) for v in mapping.values()
        ):
            raise ApiError(400, "invalid_input", "expected {address: server_id or null}")
        # Metadata lookups read the mapping under the same lock.
        with self.cloud.lock:
            for address, server_id in mapping.items():
                if server_id is None:
                    self.metadata_sources.pop(address, None)
                else:
                    self.metadata_sources[address] = server_id
            return dict(self.metadata_sources)

    def record_violation(self, method, path, status, errors):
        violation = {
            "time": time.time(),
            "method": method,
            "path": path,
            "status": status,
            "errors": errors,
        }
        self.violations.append(violation)
        print(f"fakecloud: schema violation: {json.dumps(violation)}", file=sys.stderr, flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; without this, Nagle plus
    # delayed ACKs add 40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    emulator = None
    metadata_only = False

    def log_message(self, format, *args):
        """Silence the per-request stderr line; /_fakecloud/requests has the log."""

    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def dispatch(self):
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if url.path == METADATA_PREFIX or url.path.startswith(METADATA_PREFIX + "/"):
            self.serve_metadata(url.path[len(METADATA_PREFIX) :].strip("/"))
        elif self.metadata_only:
            self.send(404, b"not found\n", "text/plain")
        elif url.path.startswith("/_fakecloud/"):
            self.serve_control(url.path[len("/_fakecloud/") :], query, raw)
        elif url.path.startswith("/v1/"):
            self.serve_api(url, query, raw)
        else:
            self.send(404, b"not found\n", "text/plain")

    # ---- API ---------------------------------------------------------------------

    def serve_api(self, url, query, raw):
        emulator = self.emulator
        begin = time.monotonic()
        path = url.path[len("/v1") :]
        correlation_id = secrets.token_hex(8)
        fault = emulator.faults.take(self.command, path)
        entry = {
            "time": time.time(),
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "client": self.client_address[0],
            "correlation_id": correlation_id,
            "fault": fault.describe() if fault else None,
        }
        if fault and fault.drop:
            # Answer nothing at all: the client sees the connection reset.
            self.close_connection = True
            emulator.log.add({**entry, "status": None, "duration": time.monotonic() - begin})
            return
        time.sleep(emulator.cloud.settings.latency + ((fault and fault.latency) or 0))
        allowed, headers = emulator.limiter.take(emulator.cloud.settings)
        status, body = self.api_answer(path, query, raw, allowed, fault)
        if emulator.validator:
            errors = emulator.validator.check(self.command, path, status, body)
            if errors:
                emulator.record_violation(self.command, path, status, errors)
        headers["X-Correlation-Id"] = correlation_id
        payload = None if body is None else json.dumps(body).encode()
        # Logged before answering: a client that got its answer finds it in the log.
        emulator.log.add({**entry, "status": status, "duration": time.monotonic() - begin})
        self.send(status, payload, "application/json", headers)

    def api_answer(self, path, query, raw, allowed, fault):
        try:
            if fault and fault.error():
                raise fault.error()
            if not allowed:
                raise ApiError(429, "rate_limit_exceeded", "limit of requests per hour reached")
            if not self.authorized():
                raise ApiError(401, "unauthorized", "unable to authenticate")
            request = api.Request(self.command, path, query, _json_body(raw))
            with self.emulator.cloud.lock:
                return api.dispatch(self.emulator.cloud, request)
        except ApiError as error:
            return error.status, error.body()
        except Exception:
            # An emulator bug: answer like the real API's internal errors and keep serving.
            traceback.print_exc()
            return 500, ApiError(500, "service_error", "internal emulator error").body()

    def authorized(self):
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(
            token.strip().encode(), self.emulator.token.encode()
        )

    # ---- metadata ----------------------------------------------------------------

    def serve_metadata(self, leaf):
        emulator = self.emulator
        begin = time.monotonic()
        time.sleep(emulator.cloud.settings.latency)
        try:
            with emulator.cloud.lock:
                text = metadata.answer(
                    emulator.cloud, leaf, self.client_address[0], emulator.metadata_sources
                )
            status = 200
        except ApiError as error:
            status, text = error.status, f"{error.message}\n"
        emulator.log.add(
            {
                "time": time.time(),
                "method": self.command,
                "path": METADATA_PREFIX + (f"/{leaf}" if leaf else ""),
                "query": "",
                "client": self.client_address[0],
                "correlation_id": None,
                "fault": None,
                "status": status,
                "duration": time.monotonic() - begin,
            }
        )
        self.send(status, text.encode(), "text/plain; charset=utf-8")

    # ---- control -----------------------------------------------------------------

    def serve_control(self, path, query, raw):
        try:
            status, body = control.handle(
                self.emulator, self.command, path.strip("/"), query, _json_body(raw)
            )
        except ApiError as error:
            status, body = error.status, error.body()
        except Exception:
            traceback.print_exc()
            status, body = 500, ApiError(500, "service_error", "internal emulator error").body()
        self.send(status, json.dumps(body).encode(), "application/json")

    # ---- plumbing ----------------------------------------------------------------

    def send(self, status, payload, content_type, headers=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if payload is not None:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
        elif status != 204:
            self.send_header("Content-Length", "0")
        self.end_headers()
        if payload is not None:
            self.wfile.write(payload)


def _json_body(raw):
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(400, "json_error", "request body is not valid JSON") from None


def make_server(emulator, host, port, metadata_only=False):
    handler = type(
        "BoundHandler", (Handler,), {"emulator": emulator, "metadata_only": metadata_only}
    )
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(server):
    # A short poll interval makes shutdown (SIGTERM) quick.
    thread = threading.Thread(
        target=server.serve_forever, args=(0.1,), name="fakecloud-http", daemon=True
    )
    thread.start()
    return thread
