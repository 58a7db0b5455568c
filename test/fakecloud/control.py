"""Test-only machinery: rate limiting, fault injection, the request log and /_fakecloud/*."""

import dataclasses
import fnmatch
import math
import threading
import time

from fakecloud.errors import ApiError

MAX_LOG = 10000
CONFIG_KEYS = {
    "action_duration",
    "action_durations",
    "action_result",
    "latency",
    "rate_limit",
    "rate_refill",
}


class RateLimiter:
    """Token bucket like the real API's: ``capacity`` requests, refilled continuously."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tokens = None
        self.stamp = time.monotonic()

    def reset(self, settings, tokens=None):
        with self.lock:
            self.tokens = float(settings.rate_limit if tokens is None else tokens)
            self.stamp = time.monotonic()

    def take(self, settings):
        """Spend one token: (allowed, headers for the response)."""
        with self.lock:
            now = time.monotonic()
            capacity = settings.rate_limit
            self.tokens = min(capacity, self.tokens + (now - self.stamp) * settings.rate_refill)
            self.stamp = now
            allowed = self.tokens >= 1
            if allowed:
                self.tokens -= 1
            missing = capacity - self.tokens
            reset = time.time() + (missing / settings.rate_refill if settings.rate_refill else 0)
            headers = {
                "RateLimit-Limit": str(capacity),
                "RateLimit-Remaining": str(int(self.tokens)),
                "RateLimit-Reset": str(math.ceil(reset)),
            }
            return allowed, headers


@dataclasses.dataclass
class Fault:
    path: str
    method: str = None
    count: int = 1
    status: int = None
    code: str = None
    message: str = None
    latency: float = None
    drop: bool = False

    def matches(self, method, path):
        return (self.method is None or self.method.upper() == method) and fnmatch.fnmatchcase(
            path, self.path
        )

    def error(self):
        """The injected API error, or None when this fault only delays or drops."""
        if self.status is None and self.code is None:
            return None
        return ApiError(
            self.status or 500,
            self.code or "service_error",
            self.message or "fault injected by fakecloud",
        )

    def describe(self):
        return {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, False)}


class Faults:
    def __init__(self):
        self.lock = threading.Lock()
        self.items = []

    def add(self, spec):
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str):
            raise ApiError(400, "invalid_input", "a fault needs a path glob")
        try:
            fault = Fault(**spec)
        except TypeError as exc:
            raise ApiError(400, "invalid_input", str(exc)) from None
        if fault.error() is None and fault.latency is None and not fault.drop:
            raise ApiError(400, "invalid_input", "a fault needs status/code, latency or drop")
        with self.lock:
            self.items.append(fault)

    def clear(self):
        with self.lock:
            self.items.clear()

    def describe(self):
        with self.lock:
            return [fault.describe() for fault in self.items]

    def take(self, method, path):
        """Consume one use of the first fault matching this request."""
        with self.lock:
            for fault in self.items:
                if fault.matches(method, path):
                    fault.count -= 1
                    if fault.count <= 0:
                        self.items.remove(fault)
                    return fault
        return None


class RequestLog:
    def __init__(self):
        self.lock = threading.Lock()
        self.entries = []

    def add(self, entry):
        with self.lock:
            self.entries.append(entry)
            del self.entries[:-MAX_LOG]

    def list(self):
        with self.lock:
            return list(self.entries)

    def clear(self):
        with self.lock:
            self.entries.clear()


def apply_config(emulator, changes):
    """PUT /_fakecloud/config: change settings until the next reset."""
    if not isinstance(changes, dict):
        raise ApiError(400, "invalid_input", "config must be a JSON object")
    unknown = set(changes) - CONFIG_KEYS - {"rate_remaining"}
    if unknown:
        raise ApiError(400, "invalid_input", f"unknown config keys: {sorted(unknown)}")
    if changes.get("action_result", "success") not in ("success", "error"):
        raise ApiError(400, "invalid_input", "action_result must be success or error")
    settings = emulator.cloud.settings
    for key in CONFIG_KEYS & set(changes):
        if key == "action_durations":
            settings.action_durations.update(changes[key])
        else:
            setattr(settings, key, changes[key])
    if "rate_remaining" in changes:
        emulator.limiter.reset(settings, changes["rate_remaining"])
    return dataclasses.asdict(settings)


def handle(emulator, method, path, query, body):
    """Answer /_fakecloud/<path>: (status, JSON body)."""
    cloud = emulator.cloud
    key = (method, path)
    if key == ("POST", "reset"):
        emulator.reset()
        return 200, {"ok": True}
    if key == ("POST", "faults"):
        for spec in body if isinstance(body, list) else [body]:
            emulator.faults.add(spec)
        return 201, {"faults": emulator.faults.describe()}
    if key == ("GET", "faults"):
        return 200, {"faults": emulator.faults.describe()}
    if key == ("DELETE", "faults"):
        emulator.faults.clear()
        return 200, {"ok": True}
    if key == ("GET", "requests"):
        return 200, {"requests": emulator.log.list()}
    if key == ("DELETE", "requests"):
        emulator.log.clear()
        return 200, {"ok": True}
    if key == ("PUT", "config"):
        with cloud.lock:
            return 200, {"config": apply_config(emulator, body)}
    if key == ("POST", "populate"):
        with cloud.lock:
            return 201, cloud.populate(_count(body, "servers"), _count(body, "floating_ips"))
    if key == ("PUT", "metadata-sources"):
        return 200, {"metadata_sources": emulator.map_metadata_sources(body)}
    if key == ("GET", "events"):
        return 200, _wait_events(cloud, query)
    if key == ("GET", "idle"):
        return 200, _wait_idle(cloud, query)
    if key == ("GET", "violations"):
        return 200, {"violations": list(emulator.violations)}
    if key == ("GET", "holders"):
        with cloud.lock:
            return 200, cloud.holders()
    if key == ("GET", "state"):
        with cloud.lock:
            return 200, cloud.dump()
    raise ApiError(404, "not_found", f"no control endpoint {method} /_fakecloud/{path}")


def _count(body, name):
    value = body.get(name, 0) if isinstance(body, dict) else None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 10000:
        raise ApiError(400, "invalid_input", f"{name} must be an integer from 0 to 10000")
    return value


def _number(query, name, default):
    try:
        return float(query.get(name, [default])[-1])
    except ValueError:
        raise ApiError(400, "invalid_input", f"{name} must be a number") from None


def _wait_events(cloud, query):
    """Long-poll: return as soon as there are events after ``since`` or ``timeout`` passes."""
    since = int(_number(query, "since", 0))
    deadline = time.monotonic() + _number(query, "timeout", 0)
    with cloud.changed:
        while not cloud.events_since(since) and time.monotonic() < deadline:
            cloud.changed.wait(deadline - time.monotonic())
        return {"events": cloud.events_since(since), "last": cloud.event_seq}


def _wait_idle(cloud, query):
    deadline = time.monotonic() + _number(query, "timeout", 0)
    with cloud.changed:
        while cloud.running_actions() and time.monotonic() < deadline:
            cloud.changed.wait(deadline - time.monotonic())
        return {"idle": not cloud.running_actions()}
