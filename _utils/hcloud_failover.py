"""
The failover engine beneath the ``hcloud_ip`` execution module: the API
client, this node's identity and the ID cache, and the convergence that
moves floating IPs and alias IPs until the API confirms them, including
the resident agent on keepalived's notify FIFO.

A Salt utils module (``_utils``): a highstate or ``saltutil.sync_utils``
brings it to minions, salt-ssh (3007 and later) ships it, and the
``hcloud_lb`` formula copies it into the failover hook's own config
directory beside ``hcloud_ip``, so a failover needs no master. The README's
"Layers" section says why this and not a salt-pip extension package.

Its public functions are ``hcloud_ip``'s, documented there, and each takes
the calling module's loader first (``loader(__salt__, __opts__,
__context__)``): options are read with that module's ``config.get``, the
client and the IDs live in its ``__context__``, and salt-call's retcode is
set there. The loader is bound for the call (a context variable, copied
into the threads a call starts), so the engine's functions below need not
pass it along.

:depends: hcloud (hcloud-python) >= 2.0
"""

import collections
import concurrent.futures
import contextlib
import contextvars
import fcntl
import functools
import hashlib
import ipaddress
import itertools
import json
import logging
import math
import os
import queue
import random
import re
import signal
import syslog
import threading
import time
from pathlib import Path

from salt.exceptions import CommandExecutionError

try:
    import hcloud
    import requests
    from hcloud import APIException
    from hcloud.floating_ips import FloatingIP
    from hcloud.locations import Location
    from hcloud.networks import Network
    from hcloud.servers import Server
    from requests.adapters import HTTPAdapter

    HAS_HCLOUD = True
except ImportError:
    HAS_HCLOUD = False
    HTTPAdapter = object  # only subclassed below; the module does not load without hcloud

log = logging.getLogger(__name__)

HCLOUD_MISSING = (
    "the hcloud Python library is not installed in the Python that runs Salt "
    "(salt-pip install hcloud on onedir installs)"
)

DEFAULT_API_ENDPOINT = "https://api.hetzner.cloud/v1"
DEFAULT_METADATA_ENDPOINT = "http://169.254.169.254/hetzner/v1/metadata"
DEFAULT_REQUEST_TIMEOUT = 5.0
DEFAULT_DEADLINE = 30.0
# No deadline or timeout may exceed a day: no failover needs longer, and
# sockets refuse timeouts of about 300 years and more.
MAX_SECONDS = 86400.0
# What a person types as seconds: ASCII digits with an optional fraction.
SECONDS_PATTERN = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
# The metadata service answers in milliseconds on Hetzner; off Hetzner the
# address may black-hole, so give up quickly and fall back to the minion id.
METADATA_TIMEOUT = 1.0
# The least time a request gets when the deadline is (nearly) up: see _capped_timeout.
REQUEST_TIMEOUT_FLOOR = 0.5
# More parallel requests than this gain nothing (actions run server-side) and
# would overflow requests' default connection pool.
MAX_PARALLEL_REQUESTS = 8
EVENT_TAG = "hcloud_lb/failover"
# A running minion answers on its local socket in milliseconds.
EVENT_CONNECT_TIMEOUT = 0.25
EVENT_WAIT = 1.0
# Actions take 0.5-2 s: poll often at first, then ease off so a long wait
# costs at most two requests a second however many actions are pending.
POLL_FIRST = 0.1
POLL_GROWTH = 1.25
POLL_MAX = 0.5
LOW_BUDGET = 10  # requests left in the bucket below which polls wait for its refill

# Error codes worth another try: the API is busy, the resource is locked by a
# running action, or the rate limit is exhausted. Anything else (unauthorized,
# not_found, invalid_input, forbidden...) will not get better by retrying.
TRANSIENT_ERROR_CODES = {
    "locked",
    "conflict",
    "rate_limit_exceeded",
    "service_error",
    "server_error",
    "timeout",
    "bad_gateway",
    "maintenance",
    "unavailable",
    "resource_unavailable",
}


def __virtual__():
    if not HAS_HCLOUD:
        return (False, HCLOUD_MISSING)
    return True


# --------------------------------------------------------------------------
# The calling module's loader, bound for the length of a call
# --------------------------------------------------------------------------

_Loader = collections.namedtuple("_Loader", "config_get opts context")
_LOADER = contextvars.ContextVar("hcloud_failover_loader")


def loader(salt, opts, context):
    """What a public function below needs of its caller: pass it first."""
    return _Loader(salt["config.get"], opts, context)


def _entry(func):
    """A public function: binds the caller's loader (its first argument) while it runs."""

    @functools.wraps(func)
    def bound(caller, *args, **kwargs):
        token = _LOADER.set(caller)
        try:
            return func(*args, **kwargs)
        finally:
            _LOADER.reset(token)

    return bound


def _context():
    """The calling module's __context__: the client and the IDs outlive one call there."""
    return _LOADER.get().context


def _opts():
    return _LOADER.get().opts


# --------------------------------------------------------------------------
# Options and the API client
# --------------------------------------------------------------------------


def _option(key, default=None):
    value = _LOADER.get().config_get(f"hcloud:{key}", None)
    return default if value in (None, "") else value


def _failover_option(key, default=None):
    """One entry of hcloud:failover, the block the failover reads as a whole."""
    block = _option("failover", {})
    if not isinstance(block, dict):
        raise CommandExecutionError(
            f"hcloud:failover must be a mapping (floating_ips:, alias_ips:, deadline: ...), "
            f"got {_shown(block)}"
        )
    value = block.get(key)
    return default if value in (None, "") else value


def _token():
    """
    hcloud:token, checked without ever being shown.

    An API token is printable ASCII. Anything else (a pasted umlaut, a line
    break inside it) would go into the Authorization header, where
    http.client refuses a line break, cannot encode most non-ASCII, and sends
    the rest as Latin-1 for the API to refuse: one line naming what is wrong
    and where says more than any of those, and never shows the token.
    """
    token = _option("token")
    if not token:
        raise CommandExecutionError(
            "hcloud:token is not set: put a Hetzner Cloud API token (read/write) "
            "under hcloud:token in pillar or the minion config"
        )
    if not isinstance(token, str):
        raise CommandExecutionError(
            f"hcloud:token must be a string (quote it in YAML), not a {type(token).__name__}"
        )
    token = token.strip()  # a token file's final line break
    for position, char in enumerate(token, 1):
        if not char.isascii():
            raise CommandExecutionError(
                f"hcloud:token is not ASCII (character {position}): an API token is printable "
                "ASCII; was it pasted with a stray character?"
            )
        if not "!" <= char <= "~":
            kind = "a line break" if char in "\r\n" else "a space or control character"
            raise CommandExecutionError(
                f"hcloud:token is not printable ASCII (character {position} is {kind}): "
                "an API token has no spaces, line breaks or control characters"
            )
    return token


def _request_timeout():
    return _seconds(_option("request_timeout", DEFAULT_REQUEST_TIMEOUT), "hcloud:request_timeout")


def _shown(value):
    """A value for an error message: one line, and not too long."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _seconds(value, name):
    """
    A number of seconds greater than 0 and at most MAX_SECONDS, from a
    number or a plain decimal string.

    Refused, with a one-line error naming ``name``: inf (a deadline that never
    comes) and nan (every comparison with it is false, so it never comes
    either), bools (True is 1 to Python), and strings float() would take but a
    person typing seconds does not mean (" 30", "2_000", "1e3", Arabic-Indic
    digits). salt-call and YAML already hand over ``deadline=30`` as a number.
    """
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int too big for a float
            number = None
    elif isinstance(value, str) and SECONDS_PATTERN.fullmatch(value):
        number = float(value)
    if number is None or not (math.isfinite(number) and 0 < number <= MAX_SECONDS):
        raise CommandExecutionError(
            f"{name} must be a number of seconds greater than 0 and at most {MAX_SECONDS:g}, "
            f"got {_shown(value)}"
        )
    return number


def _string_option(key, default=None):
    """An option that must be a string (an URL, a path), if set."""
    value = _option(key, default)
    if value is not None and not isinstance(value, str):
        raise CommandExecutionError(f"hcloud:{key} must be a string, got {_shown(value)}")
    return value


# --------------------------------------------------------------------------
# Argument values (hcloud_ip checks the argument list itself)
#
# A wrong value is an expected failure like a wrong token: one
# CommandExecutionError line ("Error running 'hcloud_ip.assign': deadline
# must be ..."), which states show as their comment.
# --------------------------------------------------------------------------


A_FLOATING_IP = "the name, ID or address of a floating IP"
A_SERVER = "the name or ID of a server"
A_NETWORK = "the name or ID of a private network"


def _ref(value, name, what, required=True):
    """
    A name, ID or address given as argument ``name``, as a stripped string;
    None for an optional one not given (or blank).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # salt-call reads an ID as a number
    if isinstance(value, str) and value.strip():
        return value.strip()
    if value is None or isinstance(value, str):
        if required:
            raise CommandExecutionError(f"{name} is required: {what}")
        return None
    raise CommandExecutionError(f"{name} must be {what}, got {_shown(value)}")


def _text(value, name):
    """Free text such as a description: a string, or None for not given."""
    if value is None or isinstance(value, str):
        return value
    raise CommandExecutionError(f"{name} must be a string, got {_shown(value)}")


def _flag(value, name):
    if isinstance(value, bool):
        return value
    raise CommandExecutionError(f"{name} must be True or False, got {_shown(value)}")


def _labels(value):
    if value is None or isinstance(value, dict):
        return value
    raise CommandExecutionError(
        f"labels must be a mapping of label names to values, got {_shown(value)}"
    )


def _split(values, name):
    """
    Names, IDs or addresses from a list, or a comma-separated string from the
    command line (a lone number is an ID).
    """
    if values is None:
        return []
    if isinstance(values, str):
        values = values.split(",")
    elif isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(value, (str, int)) and not isinstance(value, bool) for value in values
    ):
        raise CommandExecutionError(
            f"{name} must be a list (or a comma-separated string) of names, IDs or addresses, "
            f"got {_shown(values)}"
        )
    return [str(value).strip() for value in values if str(value).strip()]


def _alias_map(value, name):
    """{network name or ID: [alias IPs]} from a mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CommandExecutionError(
            f"{name} must map a network name or ID to a list of IPs, got {_shown(value)}"
        )
    return {
        _ref(network, f"a network in {name}", "a network name or ID"): _split(
            ips, f"{name}:{network}"
        )
        for network, ips in value.items()
    }


class _ApiTrace(threading.local):
    """The correlation id of the last API response on this thread."""

    correlation_id = None


class _RateLimit:
    """
    (limit, remaining, reset) from the last response's RateLimit-* headers,
    whichever thread got it: the budget is the project's, not the thread's.
    """

    last = None


_TRACE = _ApiTrace()


def _trace_response(response, *args, **kwargs):
    """requests response hook: remember and log what hcloud's exceptions do not carry."""
    headers = response.headers
    _TRACE.correlation_id = headers.get("X-Correlation-Id")
    try:
        _RateLimit.last = (
            int(headers["RateLimit-Limit"]),
            int(headers["RateLimit-Remaining"]),
            int(headers["RateLimit-Reset"]),
        )
    except (KeyError, ValueError):
        _RateLimit.last = None
    _FailoverLock.heartbeat()
    request = response.request
    log.debug(
        "hcloud API %s %s -> %s in %.3fs (correlation id %s)",
        request.method,
        request.path_url,
        response.status_code,
        response.elapsed.total_seconds(),
        _TRACE.correlation_id,
    )


def _instrument(client):
    """
    Take over retries, bound request timeouts by the deadline, observe responses.

    hcloud-python retries some errors itself for up to minutes, which would
    blow a failover's deadline; our own loop retries within it instead. It
    sends every request with the one timeout the client was built with; the
    session's transport cuts that to what the deadline leaves (the client is
    cached and shared by calls with different deadlines, so the cut is made
    per request, from the calling context). These knobs are private
    attributes, so a library without them keeps working, just without the
    trace and the cut.
    """
    base = getattr(client, "_client", None)
    if hasattr(base, "_retry_max_retries"):
        base._retry_max_retries = 0
    session = getattr(base, "_session", None)
    if session is not None:
        session.hooks["response"].append(_trace_response)
        adapter = _DeadlineAdapter()
        session.mount("https://", adapter)
        session.mount("http://", adapter)


def _client():
    """The hcloud client for the configured endpoint and token, in the caller's __context__."""
    token = _token()
    endpoint = _string_option("api_endpoint", DEFAULT_API_ENDPOINT)
    timeout = _request_timeout()
    # The cache key proves the token is the same without keeping it in clear.
    fingerprint = hashlib.sha256(f"{endpoint}\0{token}\0{timeout}".encode()).hexdigest()
    cached = _context().get("hcloud_ip.client")
    if cached and cached[0] == fingerprint:
        return cached[1]
    client = hcloud.Client(
        token=token,
        api_endpoint=endpoint,
        application_name="salt-hcloud_ip",
        timeout=timeout,
    )
    _instrument(client)
    _context()["hcloud_ip.client"] = (fingerprint, client)
    _context().pop("hcloud_ip.whoami", None)
    return client


def _api_error(exc, doing):
    """One line for an expected failure, naming what we were doing."""
    if isinstance(exc, APIException):
        if exc.code == "unauthorized":
            return (
                f"{doing}: the API refused the token (unauthorized, correlation id "
                f"{exc.correlation_id}): check hcloud:token"
            )
        return f"{doing}: {exc.message} ({exc.code}, correlation id {exc.correlation_id})"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"{doing}: the API did not answer in time ({exc.__class__.__name__})"
    if isinstance(exc, requests.exceptions.RequestException):
        return f"{doing}: cannot reach the API ({exc.__class__.__name__})"
    return f"{doing}: {exc}"


# True while a re-assert runs: it leaves a spent bucket to the failovers.
_PERIODIC = contextvars.ContextVar("hcloud_failover_periodic", default=False)


def _is_transient(exc):
    """
    Whether to retry ``exc`` within the deadline. A re-assert does not retry
    a spent rate limit: its retries would take, request by request, the
    refill that a failover elsewhere in the project waits for; its next
    check comes soon enough.
    """
    if isinstance(exc, APIException):
        if _PERIODIC.get() and exc.code in (429, "rate_limit_exceeded"):
            return False
        if isinstance(exc.code, int):
            return exc.code >= 500 or exc.code in (409, 423, 429)
        return exc.code in TRANSIENT_ERROR_CODES
    return isinstance(exc, (requests.exceptions.RequestException, _ActionFailed))


class _Clock:
    """
    A call's deadline. While entered (``with clock:``) it also bounds every API
    request the call sends, from this thread or from a worker thread started
    in a copy of its context (``_run_steps``): see ``_capped_timeout``.
    """

    def __init__(self, deadline):
        self.deadline = deadline
        self.start = time.monotonic()
        self._running = None

    def elapsed(self):
        return time.monotonic() - self.start

    def remaining(self):
        return self.deadline - self.elapsed()

    def __enter__(self):
        self._running = _RUNNING_CLOCK.set(self)
        return self

    def __exit__(self, *exc_info):
        _RUNNING_CLOCK.reset(self._running)


# The clock of the call running in this context (None outside deadline-bound calls).
_RUNNING_CLOCK = contextvars.ContextVar("hcloud_ip_running_clock", default=None)


def _capped_timeout(timeout):
    """
    The timeout for a request sent now: ``timeout`` (hcloud:request_timeout,
    from the client), cut to what the running call's deadline leaves, but
    never below REQUEST_TIMEOUT_FLOOR.

    Why cut: the timeout applies to each request on its own, so a request
    sent 1 s before a failover's deadline could otherwise hang request_timeout
    (5 s) past it, holding up keepalived's hook (and whoever waits for it)
    while the deadline promised to be done. Why a floor: a request is still
    sent with the deadline (nearly) up when its answer is needed (the last
    read verifies the moves and is what the report says), a timeout near zero
    would fail it even on a healthy API, and urllib3 refuses zero or less. So
    a call ends at most about REQUEST_TIMEOUT_FLOOR past its deadline per
    request it still needs then, not request_timeout.
    """
    clock = _RUNNING_CLOCK.get()
    if clock is None or isinstance(timeout, tuple):
        return timeout
    left = max(REQUEST_TIMEOUT_FLOOR, clock.remaining())
    return left if timeout is None else min(timeout, left)


class _DeadlineAdapter(HTTPAdapter):
    """requests' HTTP transport, each request's timeout cut by ``_capped_timeout``."""

    def send(self, request, timeout=None, **kwargs):
        return super().send(request, timeout=_capped_timeout(timeout), **kwargs)


def _backoff(attempt, clock, requests_next=1):
    """
    Full-jitter exponential backoff, never past the deadline. When the rate
    limit is spent, wait until the bucket has refilled what the next try
    sends (``requests_next``), and more the longer it lasts: a round needs a
    few requests in a row, and waiting for just one would let each attempt
    spend it on its first request (a read) and fail on the moves after it.
    """
    delay = random.uniform(0.05, min(3.0, 0.2 * 2**attempt))  # noqa: S311 (jitter, not crypto)
    if _RateLimit.last:
        limit, remaining, reset = _RateLimit.last
        if remaining <= 0 and limit > 0:
            per_request = _seconds_per_refill(limit, remaining, reset)
            delay = max(delay, per_request * max(attempt + 1, requests_next))
    time.sleep(max(0.0, min(delay, clock.remaining())))


def _refill_wait():
    """
    Seconds the bucket takes to refill one request when it is all but spent
    (fewer than LOW_BUDGET left), else 0: a poll must not take the request
    that the next move needs.
    """
    if not _RateLimit.last:
        return 0.0
    limit, remaining, reset = _RateLimit.last
    if remaining >= LOW_BUDGET or limit <= 0:
        return 0.0
    return _seconds_per_refill(limit, remaining, reset)


def _seconds_per_refill(limit, remaining, reset):
    """The bucket refills evenly until Reset: one request's worth takes this long."""
    return max(0.0, reset - time.time()) / max(1, limit - remaining)


def _retry(doing, func, clock=None):
    """
    Run one API read; with a clock, retry transient failures until its deadline.

    Expected failures end as a one-line CommandExecutionError.
    """
    attempt = 0
    while True:
        try:
            return func()
        except (hcloud.HCloudException, requests.exceptions.RequestException) as exc:
            if clock is None or not _is_transient(exc) or clock.remaining() <= 0:
                raise CommandExecutionError(_api_error(exc, doing)) from None
            log.warning("hcloud_ip: t+%.2fs %s", clock.elapsed(), _api_error(exc, doing))
        _backoff(attempt, clock)
        attempt += 1


# --------------------------------------------------------------------------
# Looking things up
# --------------------------------------------------------------------------


def _by_name_or_id(resource_client, ref, kind):
    ref = str(ref).strip()
    if ref.isdigit():
        try:
            return resource_client.get_by_id(int(ref))
        except APIException as exc:
            if exc.code != "not_found":
                raise
    found = resource_client.get_by_name(ref)
    if found is None:
        raise CommandExecutionError(f"{kind} {ref!r} not found (looked up by name and ID)")
    return found


def _floating_ip_matches(fip, ref):
    if ref in (str(fip.id), fip.name, fip.ip):
        return True
    try:
        address = ipaddress.ip_address(ref)
    except ValueError:
        return False
    # An IPv6 floating IP is a /64; any address in it names it.
    return address in ipaddress.ip_network(fip.ip, strict=False)


def _find_floating_ip(floating_ips, ref):
    ref = str(ref).strip()
    for fip in floating_ips:
        if _floating_ip_matches(fip, ref):
            return fip
    raise CommandExecutionError(
        f"floating IP {ref!r} not found (looked up by name, ID and address)"
    )


class _Ids:
    """
    The IDs of what the failover names (floating IPs, networks, servers by
    name, ID or address), kept in the file hcloud:failover:id_cache between
    runs: a failover then reads nothing to know what to move, and no lookup
    costs more in a project of a thousand servers than in an empty one. An
    entry goes when the API says its ID is gone (``forget``), and
    ``hcloud_ip.resolve`` checks every entry against the API. The file
    belongs to one project: entries from another token or endpoint are
    ignored.
    """

    def __init__(self, path, project):
        self.path = path
        self.project = project
        self.entries = {}
        self.lock = threading.Lock()  # goals are resolved in parallel
        if path:
            try:
                with open(path, encoding="utf-8") as cache:
                    stored = json.load(cache)
                if isinstance(stored, dict) and stored.get("project") == project:
                    self.entries = dict(stored.get("ids") or {})
            except FileNotFoundError:
                pass
            except (OSError, ValueError) as exc:
                log.warning("hcloud_ip: ignoring the ID cache %s: %s", path, exc)

    def get(self, kind, ref):
        with self.lock:
            return self.entries.get(f"{kind}:{ref}")

    def put(self, kind, ref, record):
        with self.lock:
            if self.entries.get(f"{kind}:{ref}") != record:
                self.entries[f"{kind}:{ref}"] = record
                self._save()

    def forget(self, kind, ref):
        with self.lock:
            if self.entries.pop(f"{kind}:{ref}", None) is not None:
                self._save()

    def forget_kind(self, kind):
        with self.lock:
            gone = [key for key in self.entries if key.startswith(f"{kind}:")]
            for key in gone:
                del self.entries[key]
            if gone:
                self._save()

    def _save(self):
        """Write the file whole (a crash leaves the old one), root only like the hook's config."""
        if not self.path:
            return
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as cache:
                json.dump({"project": self.project, "ids": self.entries}, cache, sort_keys=True)
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("hcloud_ip: cannot write the ID cache %s: %s", self.path, exc)


def _ids():
    """This process's ID cache (the agent keeps it warm), one per project."""
    endpoint = _string_option("api_endpoint", DEFAULT_API_ENDPOINT)
    project = hashlib.sha256(f"{endpoint}\0{_token()}".encode()).hexdigest()[:16]
    path = _failover_option("id_cache")
    if path is not None and not isinstance(path, str):
        raise CommandExecutionError(
            f"hcloud:failover:id_cache must be a file's path, got {_shown(path)}"
        )
    cached = _context().get("hcloud_ip.ids")
    if cached is None or (cached.path, cached.project) != (path, project):
        cached = _context()["hcloud_ip.ids"] = _Ids(path, project)
    return cached


def _is_address(ref):
    try:
        ipaddress.ip_address(ref)
    except ValueError:
        return False
    return True


def _look_up_floating_ip(client, ref):
    """
    The floating IP a name, ID or address names. By name or ID the API finds
    it (one request); by address it cannot (it filters floating IPs by name
    only), so that lists the project's floating IPs, once: the ID is cached.
    """
    if ref.isdigit():
        try:
            return client.floating_ips.get_by_id(int(ref))
        except APIException as exc:
            if exc.code != "not_found":
                raise
    if not _is_address(ref):
        found = client.floating_ips.get_by_name(ref)
        if found is not None:
            return found
    return _find_floating_ip(client.floating_ips.get_all(), ref)


def _resolved_floating_ip(client, ref, ids, clock):
    """A FloatingIP (id, name, ip) for ref, from the ID cache or looked up once."""
    ref = str(ref).strip()
    record = ids.get("floating_ip", ref)
    if record is None:
        fip = _retry(
            f"looking up floating IP {ref!r}", lambda: _look_up_floating_ip(client, ref), clock
        )
        record = {"id": fip.id, "name": fip.name, "ip": fip.ip}
        ids.put("floating_ip", ref, record)
    return FloatingIP(id=record["id"], name=record["name"], ip=record["ip"])


def _resolved_network(client, ref, ids, clock):
    """A Network (id, name, ip_range) for ref, from the ID cache or looked up once."""
    ref = str(ref).strip()
    record = ids.get("network", ref)
    if record is None:
        net = _retry(
            f"looking up network {ref!r}",
            lambda: _by_name_or_id(client.networks, ref, "network"),
            clock,
        )
        record = {"id": net.id, "name": net.name, "ip_range": net.ip_range}
        ids.put("network", ref, record)
    return Network(id=record["id"], name=record["name"], ip_range=record["ip_range"])


def _resolved_server(client, ref, ids, clock, what="server"):
    """A Server (id, name) for a name or ID, from the ID cache or looked up once."""
    ref = str(ref).strip()
    record = ids.get("server", ref)
    if record is None:
        server = _retry(
            f"looking up {what} {ref!r}", lambda: _by_name_or_id(client.servers, ref, what), clock
        )
        record = {"id": server.id, "name": server.name}
        ids.put("server", ref, record)
    return Server(id=record["id"], name=record["name"])


def _metadata_instance_id():
    """
    This server's ID from the metadata service, read once per process: a
    server's ID does not change while it runs, and the resident agent's
    re-assert is then its one API request and nothing else. A failed read
    is not kept, so the next call asks again.
    """
    endpoint = _string_option("metadata_endpoint", DEFAULT_METADATA_ENDPOINT).rstrip("/")
    known = _context().get("hcloud_ip.instance_id")
    if known and known[0] == endpoint:
        return known[1]
    try:
        response = requests.get(
            f"{endpoint}/instance-id", timeout=_capped_timeout(METADATA_TIMEOUT)
        )
        response.raise_for_status()
        instance_id = int(response.text.strip())
    except (requests.exceptions.RequestException, ValueError) as exc:
        log.debug("hcloud_ip: metadata service gave no instance-id: %s", exc)
        return None
    _context()["hcloud_ip.instance_id"] = (endpoint, instance_id)
    return instance_id


def _identify_this_server(client):
    """hcloud:server, else the metadata service's instance-id, else the minion id."""
    configured = _option("server")
    if configured is not None:
        return _by_name_or_id(client.servers, configured, "server (hcloud:server)"), "hcloud:server"
    instance_id = _metadata_instance_id()
    if instance_id is not None:
        try:
            return client.servers.get_by_id(instance_id), "metadata instance-id"
        except APIException as exc:
            if exc.code != "not_found":
                raise
            log.warning("hcloud_ip: metadata instance-id %s is not in this project", instance_id)
    minion_id = _opts().get("id")
    server = client.servers.get_by_name(minion_id) if minion_id else None
    if server is None:
        raise CommandExecutionError(
            "cannot tell which server this node is: set hcloud:server, or run on a Hetzner "
            f"Cloud server of this project, or name the server like the minion ({minion_id!r})"
        )
    return server, "minion id"


def _this_server(client, clock=None):
    """(server, how it was found), cached for as long as hcloud:server stays the same."""
    configured = _option("server")
    cached = _context().get("hcloud_ip.whoami")
    if cached is None or cached[0] != configured:
        server, source = _retry(
            "finding this node's server", lambda: _identify_this_server(client), clock
        )
        cached = _context()["hcloud_ip.whoami"] = (configured, server, source)
    return cached[1:]


def _target_server(client, server, clock=None):
    if server is None:
        return _this_server(client, clock)[0]
    return _retry(
        "looking up the server", lambda: _by_name_or_id(client.servers, server, "server"), clock
    )


# --------------------------------------------------------------------------
# Describing
# --------------------------------------------------------------------------


def _server_ref(server, names):
    if server is None:
        return None
    return {"id": server.id, "name": names.get(server.id)}


def _describe_floating_ip(fip, names):
    return {
        "id": fip.id,
        "name": fip.name,
        "ip": fip.ip,
        "type": fip.type,
        "server": _server_ref(fip.server, names),
        "home_location": fip.home_location.name if fip.home_location else None,
        "description": fip.description,
        "labels": dict(fip.labels or {}),
        "blocked": fip.blocked,
        "delete_protection": bool((fip.protection or {}).get("delete")),
    }


def _server_names(client):
    return {server.id: server.name for server in client.servers.get_all()}


def _describe_server(server):
    return {
        "id": server.id,
        "name": server.name,
        "public_ipv4": server.public_net.ipv4.ip if server.public_net.ipv4 else None,
        "private_networks": {
            private.network.id: {"ip": private.ip, "alias_ips": sorted(private.alias_ips or [])}
            for private in server.private_net or []
        },
    }


@_entry
def whoami():
    """hcloud_ip.whoami: see its documentation there."""
    server, source = _this_server(_client())
    return {**_describe_server(server), "found_by": source}


@_entry
def server_info(server=None):
    """hcloud_ip.server_info: see its documentation there."""
    server = _ref(server, "server", A_SERVER, required=False)
    return _describe_server(_target_server(_client(), server))


@_entry
def resolve():
    """hcloud_ip.resolve: see its documentation there."""
    fip_refs, alias_map = _failover_addresses(None, None)
    client = _client()
    ids = _ids()
    with _clock(None) as clock:
        _check_cached_ids(client, ids, clock)
        me = _this_server_ref(client, ids, clock)
        peers = _peer_ids(client, ids, clock)
        fips = {ref: _resolved_floating_ip(client, ref, ids, clock).id for ref in fip_refs}
        networks = {ref: _resolved_network(client, ref, ids, clock).id for ref in alias_map}
    return {"server": me.id, "peers": peers, "floating_ips": fips, "networks": networks}


def _check_cached_ids(client, ids, clock):
    """Forget each cached entry whose ID is gone or no longer answers to its name."""
    readers = {
        "floating_ip": client.floating_ips.get_by_id,
        "network": client.networks.get_by_id,
        "server": client.servers.get_by_id,
    }
    for key, record in dict(ids.entries).items():
        kind, _, ref = key.partition(":")
        if kind not in readers or not isinstance(record, dict) or "id" not in record:
            ids.forget(kind, ref)
            continue
        try:
            found = _retry(
                f"checking {kind} {ref!r}", lambda k=kind, r=record: readers[k](r["id"]), clock
            )
        except CommandExecutionError as exc:
            if "not_found" not in str(exc):
                raise
            found = None
        if found is None or not _still_named(kind, ref, found):
            log.info(
                "hcloud_ip: %s %r is no longer ID %s: looking it up again", kind, ref, record["id"]
            )
            ids.forget(kind, ref)


def _still_named(kind, ref, found):
    if kind == "floating_ip":
        return _floating_ip_matches(found, ref)
    if kind == "server" and ref.startswith("instance-id "):
        return True
    name = ref.removeprefix("minion ")
    return name in (str(found.id), found.name)


@_entry
def list_():
    """hcloud_ip.list: see its documentation there."""
    client = _client()
    fips = _retry("listing floating IPs", client.floating_ips.get_all)
    names = _retry("listing servers", lambda: _server_names(client))
    return {fip.name: _describe_floating_ip(fip, names) for fip in fips}


@_entry
def describe(ip):
    """hcloud_ip.describe: see its documentation there."""
    ip = _ref(ip, "ip", A_FLOATING_IP)
    client = _client()
    fips = _retry("listing floating IPs", client.floating_ips.get_all)
    fip = _find_floating_ip(fips, ip)
    names = _retry("listing servers", lambda: _server_names(client))
    return _describe_floating_ip(fip, names)


@_entry
def network_aliases(network):
    """hcloud_ip.network_aliases: see its documentation there."""
    network = _ref(network, "network", A_NETWORK)
    client = _client()
    net = _retry(
        "looking up the network", lambda: _by_name_or_id(client.networks, network, "network")
    )
    servers = _retry("listing servers", client.servers.get_all)
    return {
        server.name: sorted(private.alias_ips or [])
        for server in servers
        for private in server.private_net or []
        if private.network.id == net.id
    }


@_entry
def create(name, type="ipv4", home_location=None, description=None, labels=None):
    """hcloud_ip.create: see its documentation there."""
    name = _ref(name, "name", "the name of the new floating IP")
    if type not in ("ipv4", "ipv6"):
        raise CommandExecutionError(f"type must be ipv4 or ipv6, got {_shown(type)}")
    home_location = _ref(
        home_location,
        "home_location",
        f"the location floating IP {name} is routed from best (nbg1, fsn1, hel1...)",
    )
    description = _text(description, "description")
    labels = _labels(labels)
    client = _client()
    response = _retry(
        f"creating floating IP {name}",
        lambda: client.floating_ips.create(
            type=type,
            name=name,
            home_location=Location(name=home_location),
            description=description,
            labels=labels,
        ),
    )
    return _describe_floating_ip(response.floating_ip, {})


@_entry
def update(ip, description=None, labels=None):
    """hcloud_ip.update: see its documentation there."""
    ip = _ref(ip, "ip", A_FLOATING_IP)
    description = _text(description, "description")
    labels = _labels(labels)
    client = _client()
    fip = _find_floating_ip(_retry("listing floating IPs", client.floating_ips.get_all), ip)
    updated = _retry(
        f"updating floating IP {fip.name}",
        lambda: client.floating_ips.update(fip, description=description, labels=labels),
    )
    return _describe_floating_ip(updated, {})


# --------------------------------------------------------------------------
# Converging: move addresses until the API confirms they are where we want
# --------------------------------------------------------------------------


class _ActionFailed(Exception):
    """An action the API accepted ended in status error; worth another round."""


class _ServerGone(CommandExecutionError):
    """A server read by its (cached) ID is gone."""


class _Snapshot:
    """
    One read of where the goals' addresses are, taken each round.

    It reads the servers that may hold them, never the project: the target
    server at once (its floating IP IDs and alias IPs say what is here), and
    the load balancer's other nodes (hcloud:failover:peers) only when
    something is not here and who holds it matters (``complete``). So a
    round that finds everything here costs one request, and no round costs
    more in a project of a thousand servers than in an empty one. Without
    peers (the module's own functions), or for an alias IP that a server
    outside the load balancer holds (``wide``), ``complete`` reads every
    server instead. Floating IPs in ``fip_ids`` are read themselves (a move
    to a server other than the target's peers, or off every server).
    """

    def __init__(self, client, clock, target_id, *, peer_ids=None, wide=False, fip_ids=()):
        self._client = client
        self._clock = clock
        self._peer_ids = peer_ids
        self._wide = wide or peer_ids is None
        self.target_id = target_id
        self.servers = {}
        self.fips = {}
        self.completed = False
        self.names = {}
        reads = [lambda fid=fid: self._read_floating_ip(fid) for fid in fip_ids]
        if wide:
            reads.append(self._read_all_servers)
            self.completed = True
        elif target_id is not None:
            reads.append(lambda: self._read_server(target_id))
        _read_in_parallel(reads, clock)

    def _read_server(self, server_id):
        def read():
            try:
                return self._client.servers.get_by_id(server_id)
            except APIException as exc:
                if exc.code == "not_found":
                    message = f"server {server_id} is not in this project (any more)"
                    raise _ServerGone(message) from None
                raise

        server = _retry(f"reading server {server_id}", read, self._clock)
        self.servers[server.id] = server
        self.names[server.id] = server.name

    def _read_all_servers(self):
        for server in _retry("reading servers", self._client.servers.get_all, self._clock):
            self.servers[server.id] = server
            self.names[server.id] = server.name

    def _read_floating_ip(self, fip_id):
        self.fips[fip_id] = _retry(
            f"reading floating IP {fip_id}",
            lambda: self._client.floating_ips.get_by_id(fip_id),
            self._clock,
        )

    def complete(self):
        """Read the servers besides the target that may hold the addresses (once per round)."""
        if self.completed:
            return
        self.completed = True
        if self._wide:
            self._read_all_servers()
        else:
            unread = [pid for pid in self._peer_ids if pid not in self.servers]
            _read_in_parallel(
                [lambda pid=pid: self._read_server(pid) for pid in unread], self._clock
            )

    def holds(self, server_id, fip_id):
        """Whether a server read this round holds the floating IP (False when unread)."""
        if fip_id in self.fips:
            held_by = self.fips[fip_id].server
            return (held_by.id if held_by else None) == server_id
        server = self.servers.get(server_id)
        return server is not None and fip_id in {f.id for f in server.public_net.floating_ips or []}

    def floating_ip_holder(self, fip_id):
        """The ID of the server holding the floating IP; None for none (or none we read)."""
        if fip_id in self.fips:
            return self.fips[fip_id].server.id if self.fips[fip_id].server else None
        if self.holds(self.target_id, fip_id):
            return self.target_id
        self.complete()
        return next((sid for sid in self.servers if self.holds(sid, fip_id)), None)

    def aliases(self, server_id, network_id):
        """The server's alias IPs in the network, or None if it is not attached."""
        if server_id not in self.servers:
            self.complete()
        server = self.servers.get(server_id)
        private = server.private_net_for(Network(id=network_id)) if server else None
        return list(private.alias_ips or []) if private else None

    def alias_holders(self, network_id, ips):
        """{server_id: all its aliases} for the servers holding any of ips in the network."""
        mine = self.aliases(self.target_id, network_id) or []
        if self.target_id is not None and set(ips) <= set(mine):
            return {self.target_id: mine}
        self.complete()
        holders = {}
        for server_id in self.servers:
            aliases = self.aliases(server_id, network_id) or []
            if set(aliases) & set(ips):
                holders[server_id] = aliases
        return holders

    def is_one_of(self, server_id, refs):
        """Whether refs name the server, by name or ID."""
        return server_id is not None and bool({str(server_id), self.names.get(server_id)} & refs)


def _read_in_parallel(reads, clock):
    """Run reads (each retried by itself) at once, in copies of this context: one round trip."""
    if len(reads) <= 1:
        for read in reads:
            read()
        return
    with concurrent.futures.ThreadPoolExecutor(min(len(reads), MAX_PARALLEL_REQUESTS)) as pool:
        futures = [pool.submit(contextvars.copy_context().run, read) for read in reads]
        for future in futures:
            future.result()


class _OutrankingPeers:
    """
    The servers in hcloud:failover:yield_to, and the one acting as MASTER.

    In a split brain (VRRP between the nodes cut) every node is MASTER and runs
    the failover; the highest-ranked must end with the addresses, or they go to
    and fro until the deadlines. A peer in yield_to shows that it acts as
    MASTER by holding one of the addresses when this run is a re-assert (it
    runs while MASTER, after this node's own claim), or by taking one back
    that this run moved (notify_master: a peer that merely holds them may be
    the master that just died, and still holds them while its API calls fail
    with locked or 503). From then on this run leaves every address that is
    not on this node to that peer, wherever it is: that peer is taking them
    all, and claiming any meanwhile would start the tug of war again (it
    releases an alias IP from this node, then claims it in its next round).
    """

    def __init__(self, refs=frozenset(), reassert=False):
        self.refs = refs
        self.reassert = reassert
        self.acting = None  # ID of the peer acting as MASTER by the last read

    def notice(self, goals, snapshot):
        """Find the peer acting as MASTER by this read, if any (see the class)."""
        if not self.refs or not (self.reassert or any(goal.moved for goal in goals)):
            # Nothing to find: no peer outranks this node, or (notify_master)
            # none can have taken back what this run has not moved yet. So
            # the first round moves after one read, of this node's server.
            self.acting = None
            return
        self.acting = next(
            (
                holder
                for goal in goals
                for ip, holder in goal.holder_ids(snapshot).items()
                if snapshot.is_one_of(holder, self.refs)
                and (self.reassert or goal.took_back(ip, holder))
            ),
            None,
        )


class _Goal:
    """What both kinds of goal share: the target, and the peers to leave addresses to."""

    def __init__(self, target, peers):
        self.target_id = target.id if target else None
        self.target_name = target.name if target else None
        self.peers = peers or _OutrankingPeers()
        self.seen = collections.defaultdict(set)  # address -> its holders during this run
        self.initial = None  # {address: holder ID} by the run's first read
        self.names = {}  # server ID -> name, of every server read during this run
        self.moved = False
        self.stood_down = None
        self.wide = False  # an address held outside the load balancer: read every server

    def observe(self, snapshot):
        """Remember who holds each address by this read (see ``took_back``)."""
        holders = self.holder_ids(snapshot)
        self.names.update(snapshot.names)
        if self.initial is None:
            self.initial = holders
        for ip, holder in holders.items():
            self.seen[ip].add(holder)
        self.target_name = self.names.get(self.target_id, self.target_name)

    def server_ref(self, server_id, snapshot):
        """{id, name} of a server; its name read with the others if no read so far had it."""
        if server_id is None:
            return None
        if server_id not in self.names:
            snapshot.complete()
            self.names.update(snapshot.names)
        return {"id": server_id, "name": self.names.get(server_id)}

    def took_back(self, ip, holder):
        """Whether holder took ip during this run, one that has moved this goal's addresses."""
        return self.moved and bool(self.seen[ip] - {holder})

    def leaves(self, holder):
        """Whether an address on holder is left to an outranking peer (``_OutrankingPeers``)."""
        return holder != self.target_id and self.peers.acting is not None


class _FloatingIPGoal(_Goal):
    """
    A floating IP that must end up on target (or on no server, if target is
    None), unless it is left to an outranking peer (``_OutrankingPeers``).
    """

    kind = "floating_ip"

    def __init__(self, ref, target, peers=None, read_itself=False):
        super().__init__(target, peers)
        self.ref = ref
        self.fip = None
        # Read the floating IP itself each round: it may be on any server.
        self.read_itself = read_itself

    @property
    def label(self):
        return f"{self.fip.name} ({self.fip.ip})" if self.fip else str(self.ref)

    def resolve(self, snapshot, client, ids, clock):
        self.fip = _resolved_floating_ip(client, self.ref, ids, clock)

    def forget(self, ids):
        ids.forget("floating_ip", str(self.ref).strip())
        self.fip = None

    def holder_ids(self, snapshot):
        return {self.fip.ip: snapshot.floating_ip_holder(self.fip.id)}

    def here(self, snapshot):
        return snapshot.holds(self.target_id, self.fip.id) or (
            self.target_id is None and snapshot.floating_ip_holder(self.fip.id) is None
        )

    def yielded(self, snapshot):
        """{address: holder's name, None for no server} when it is left to a peer."""
        if self.peers.acting is None or self.here(snapshot):
            return {}
        holder = snapshot.floating_ip_holder(self.fip.id)
        return {self.fip.ip: snapshot.names.get(holder)} if self.leaves(holder) else {}

    def steps(self, snapshot, client):
        if self.here(snapshot) or self.yielded(snapshot):
            return []
        fip = self.fip
        if self.target_id is None:
            return [(f"unassign {self.label}", lambda: client.floating_ips.unassign(fip))]
        target = Server(id=self.target_id)
        return [
            (
                f"assign {self.label} to {self.target_name or self.target_id}",
                lambda: client.floating_ips.assign(fip, target),
            )
        ]

    def outcome(self, snapshot):
        if self.fip is None:
            return {"ip": str(self.ref)}
        self.names.update(snapshot.names)
        return {
            "ip": self.fip.ip,
            "from": self.server_ref((self.initial or {}).get(self.fip.ip), snapshot),
            "to": self.server_ref(snapshot.floating_ip_holder(self.fip.id), snapshot),
        }


class _AliasGoal(_Goal):
    """
    Alias IPs in a network that must end up on target, taken from any other
    holder first, except those left to an outranking peer (``_OutrankingPeers``).
    """

    kind = "alias_ip"

    def __init__(self, network_ref, ips, target, peers=None):
        super().__init__(target, peers)
        self.network_ref = network_ref
        self.ips = ips
        self.network = None

    @property
    def label(self):
        name = self.network.name if self.network else self.network_ref
        return f"{', '.join(self.ips)} in {name}"

    def resolve(self, snapshot, client, ids, clock):
        self.network = _resolved_network(client, self.network_ref, ids, clock)
        if snapshot.aliases(self.target_id, self.network.id) is None:
            # Maybe the cached ID is of a network since deleted and made anew
            # under its name: look it up before saying the server is not in it.
            self.forget(ids)
            self.network = _resolved_network(client, self.network_ref, ids, clock)
        for ip in self.ips:
            _validate_alias_ip(ip, self.network)
        if snapshot.aliases(self.target_id, self.network.id) is None:
            name = snapshot.names.get(self.target_id, self.target_name)
            raise CommandExecutionError(
                f"server {name} is not attached to network {self.network.name}"
            )

    def forget(self, ids):
        ids.forget("network", str(self.network_ref).strip())
        self.network = None

    def _holders(self, snapshot, holder_ids=None):
        """{ip: name of the server holding it} for our IPs that a server holds."""
        holder_ids = self.holder_ids(snapshot) if holder_ids is None else holder_ids
        self.names.update(snapshot.names)
        return {
            ip: self.names.get(holder) for ip, holder in holder_ids.items() if holder is not None
        }

    def holder_ids(self, snapshot):
        """{ip: ID of the server holding it, or None} for our IPs."""
        holders = dict.fromkeys(self.ips)
        for server_id, aliases in snapshot.alias_holders(self.network.id, self.ips).items():
            holders.update((ip, server_id) for ip in aliases if ip in self.ips)
        return holders

    def yielded(self, snapshot):
        """{alias IP: holder's name, None for no server} for ours left to a peer."""
        if self.peers.acting is None:
            return {}
        return {
            ip: snapshot.names.get(holder)
            for ip, holder in self.holder_ids(snapshot).items()
            if self.leaves(holder)
        }

    def steps(self, snapshot, client):
        yielded = self.yielded(snapshot)
        wanted = [ip for ip in self.ips if ip not in yielded]
        holders = snapshot.alias_holders(self.network.id, wanted)
        others = {sid: aliases for sid, aliases in holders.items() if sid != self.target_id}
        if others:
            # The API refuses an alias IP that another server in the network holds,
            # so the others let go first and we claim in the next round.
            return [
                (
                    f"release {self.label} from {snapshot.names.get(server_id, server_id)}",
                    self._change(client, server_id, [ip for ip in aliases if ip not in wanted]),
                )
                for server_id, aliases in others.items()
            ]
        mine = snapshot.aliases(self.target_id, self.network.id) or []
        missing = [ip for ip in wanted if ip not in mine]
        if not missing:
            return []
        return [
            (
                f"claim {self.label} on {self.target_name or self.target_id}",
                self._change(client, self.target_id, mine + missing),
            )
        ]

    def _change(self, client, server_id, alias_ips):
        server = Server(id=server_id)
        return lambda: client.servers.change_alias_ips(server, self.network, alias_ips)

    def outcome(self, snapshot):
        if self.network is None:
            return {"network": str(self.network_ref)}
        return {
            "network": self.network.name,
            "from": self._holders(snapshot, self.initial or {}),
            "to": self._holders(snapshot),
        }


def _validate_alias_ip(ip, network):
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise CommandExecutionError(f"alias IP {ip!r} is not an IP address") from None
    if address not in ipaddress.ip_network(network.ip_range):
        raise CommandExecutionError(
            f"alias IP {ip} is outside network {network.name} ({network.ip_range})"
        )


def _with_correlation_id(step):
    """Run a step in a worker thread and bring back the correlation id it saw there."""
    return step(), _TRACE.correlation_id


def _run_steps(steps, clock, while_sending=lambda: None):
    """
    Send every step's request at once, each as soon as it is known; return
    the started actions and the errors. ``steps`` may be a generator: a step
    needing another read (an alias IP's holder) is worked out while the ones
    before it are on their way. ``while_sending`` runs once all are sent,
    before their answers are awaited.
    """
    actions, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(MAX_PARALLEL_REQUESTS) as pool:
        # Each worker runs in a copy of this context, so its requests see the clock.
        futures = {}
        for goal, what, step in steps:
            future = pool.submit(contextvars.copy_context().run, _with_correlation_id, step)
            futures[future] = (goal, what)
        while_sending()
        for future in concurrent.futures.as_completed(futures):
            goal, what = futures[future]
            try:
                action, correlation_id = future.result()
            except (hcloud.HCloudException, requests.exceptions.RequestException) as exc:
                log.warning("hcloud_ip: t+%.2fs %s", clock.elapsed(), _api_error(exc, what))
                errors.append((goal, what, exc))
                continue
            log.info(
                "hcloud_ip: t+%.2fs %s requested (action %s, correlation id %s)",
                clock.elapsed(),
                what,
                action.id,
                correlation_id,
            )
            actions.append((goal, what, action))
    return actions, errors


def _wait_for_actions(client, actions, clock):
    """
    Poll all running actions with one request per poll until they finish.

    Returns (goal, what, _ActionFailed) for those that ended in error.
    """
    running = {action.id: (goal, what) for goal, what, action in actions}
    failed = []
    interval = POLL_FIRST
    while running and clock.remaining() > 0:
        time.sleep(min(max(interval, _refill_wait()), clock.remaining()))
        interval = min(interval * POLL_GROWTH, POLL_MAX)
        try:
            page = client.request("GET", "/actions", params={"id": list(running), "per_page": 50})
        except (hcloud.HCloudException, requests.exceptions.RequestException) as exc:
            if not _is_transient(exc):
                raise
            # Logged like every API error the hook meets: the node's log is
            # where a user looks for why a failover took long.
            log.warning(
                "hcloud_ip: t+%.2fs %s", clock.elapsed(), _api_error(exc, "polling actions")
            )
            continue
        for action in page.get("actions", []):
            if action["status"] == "running" or action["id"] not in running:
                continue
            goal, what = running.pop(action["id"])
            if action["status"] == "error":
                error = (action.get("error") or {}).get("message", "unknown error")
                exc = _ActionFailed(f"{what}: action {action['id']} failed: {error}")
                log.warning("hcloud_ip: t+%.2fs %s", clock.elapsed(), exc)
                failed.append((goal, what, exc))
            else:
                log.info(
                    "hcloud_ip: t+%.2fs %s done (action %s)", clock.elapsed(), what, action["id"]
                )
    return failed


def _converge(client, goals, clock, view, *, left_master=lambda: None, periodic=False):
    """
    Read, act, wait and re-read until every goal holds or the deadline passes.

    Each round starts from a fresh read (``_Snapshot``, of the servers in
    ``view``), so the verification of one round's moves is the next round's
    read, and a move undone meanwhile (by the other node) is noticed; so is
    one still under way when every goal seems to hold. The run ends only on
    a read taken after a check found no such move: one that finished
    between the read and the check is seen by that read. A ``periodic``
    caller (the re-assert) that finds everything in place stops at its
    first read, one request: its next run is the next check, and the
    project's 3600 requests an hour are shared. Transient failures are
    retried after a jittered backoff; permanent ones end that goal; what the
    API says is gone is looked up again. Before each round ``left_master()``
    is asked; a state it returns ends the run, the goals left marked
    ``stood_down``. Returns ({goal: error}, last snapshot).
    """
    ids = _ids() if view.cached else _Ids(None, None)
    snapshot = view.read(client, clock, goals)
    failures = {}
    attempt = 0
    settled = False  # no move was under way elsewhere just before this read
    while True:
        _resolve_goals(client, goals, snapshot, ids=ids, clock=clock, failures=failures)
        live = [goal for goal in goals if goal not in failures]
        for peers in {goal.peers for goal in live}:
            peers.notice(live, snapshot)
        steps = _pending_steps(client, goals, snapshot, failures)
        first = next(steps, None)
        if first is None:
            _observe(goals, failures, snapshot)
            if settled or (periodic and not any(goal.moved for goal in goals)):
                break
            settled = not _waited_for_moves_in_flight(client, goals, failures, clock)
            if settled and periodic:
                break
        else:
            settled = False
            steps = itertools.chain([first], steps)
            if state := left_master():
                _stand_down(list(steps), state, clock)
                _observe(goals, failures, snapshot)
                break
            if clock.remaining() <= 0:
                for goal, what, _ in steps:
                    failures.setdefault(goal, f"{what}: not done within {clock.deadline:g}s")
                break
            # Who held what is read while the moves are on their way, before
            # they take effect: the next round compares with it.
            observe = functools.partial(_observe, goals, failures, snapshot)
            failed = _act(client, steps, clock, failures, ids=ids, while_sending=observe)
            if failed:
                # The next round reads this node and a peer, then sends the failed steps again.
                _backoff(attempt, clock, requests_next=failed + 2)
                attempt += 1
        try:
            snapshot = view.read(client, clock, goals)
        except CommandExecutionError as exc:
            for goal in goals:
                failures.setdefault(goal, str(exc))
            break
    log.info("hcloud_ip: t+%.2fs done, %d failure(s)", clock.elapsed(), len(failures))
    return failures, snapshot


class _View:
    """
    What each round reads (``_Snapshot``): the target server, the load
    balancer's other nodes (``peer_ids``; None: every server), and the
    floating IPs of goals that read themselves. ``cached``: IDs from the
    ID cache (the failover) rather than looked up each call.
    """

    def __init__(self, target_id, peer_ids=None, cached=False):
        self.target_id = target_id
        self.peer_ids = peer_ids
        self.cached = cached

    def read(self, client, clock, goals):
        return _Snapshot(
            client,
            clock,
            self.target_id,
            peer_ids=self.peer_ids,
            wide=any(goal.wide for goal in goals),
            fip_ids=[
                g.fip.id for g in goals if g.kind == "floating_ip" and g.fip and g.read_itself
            ],
        )


def _waited_for_moves_in_flight(client, goals, failures, clock):
    """
    Wait for moves of the goals' addresses that another node started; True if any ran.

    Every goal holds by the last read, but a move still running elsewhere (a
    node that lost mastership in the middle of its own failover) would undo
    that the moment it finishes, after this run reported success. So wait for
    it; the caller then reads again and takes back what it moved.
    """
    if clock.remaining() <= 0:
        return False
    try:
        in_flight = _moves_in_flight(client, [g for g in goals if g not in failures], clock)
    except CommandExecutionError as exc:
        log.warning(
            "hcloud_ip: t+%.2fs cannot tell whether a move is under way: %s", clock.elapsed(), exc
        )
        return False
    if not in_flight:
        return False
    for _, what, action in in_flight:
        log.warning(
            "hcloud_ip: t+%.2fs waiting for %s (action %s)", clock.elapsed(), what, action.id
        )
    _wait_for_actions(client, in_flight, clock)
    return True


def _moves_in_flight(client, goals, clock):
    """(goal, what, action) for each running action that may move a goal's addresses."""
    by_fip = {g.fip.id: g for g in goals if g.kind == "floating_ip"}
    by_network = {g.network.id: g for g in goals if g.kind == "alias_ip"}
    found = []
    if by_fip:
        running = _retry(
            "listing running floating IP actions",
            lambda: client.floating_ips.actions.get_all(status=["running"]),
            clock,
        )
        found += _concerning(running, "floating_ip", by_fip)
    if by_network:
        running = _retry(
            "listing running server actions",
            lambda: client.servers.actions.get_all(status=["running"]),
            clock,
        )
        alias_changes = [a for a in running if a.command == "change_alias_ips"]
        found += _concerning(alias_changes, "network", by_network)
    return found


def _concerning(actions, resource_type, goals_by_id):
    found = []
    for action in actions:
        for resource in action.resources or []:
            goal = goals_by_id.get(resource["id"]) if resource["type"] == resource_type else None
            if goal:
                found.append((goal, f"{action.command} of {goal.label} started elsewhere", action))
                break
    return found


def _stand_down(steps, state, clock):
    log.warning(
        "hcloud_ip: t+%.2fs this node is %s now, no longer MASTER: failover stopped, "
        "the new master takes the addresses",
        clock.elapsed(),
        state,
    )
    for goal, _, _ in steps:
        goal.stood_down = state


def _resolve_goals(client, goals, snapshot, *, ids, clock, failures):
    """
    Find what each goal names (once, or again once forgotten), all at once;
    those not found fail.
    """

    def resolve(goal):
        try:
            goal.resolve(snapshot, client, ids, clock)
        except CommandExecutionError as exc:
            failures[goal] = str(exc)

    unresolved = [
        goal
        for goal in goals
        if goal not in failures and not (goal.fip if goal.kind == "floating_ip" else goal.network)
    ]
    _read_in_parallel([functools.partial(resolve, goal) for goal in unresolved], clock)


def _observe(goals, failures, snapshot):
    """Record who holds what by this read."""
    for goal in goals:
        if goal not in failures:
            goal.observe(snapshot)


def _pending_steps(client, goals, snapshot, failures):
    """
    (goal, what, step) for every move still to make, floating IPs first:
    they need no read but this node's server, so they leave at once.
    """
    for goal in sorted(goals, key=lambda g: g.kind != "floating_ip"):
        if goal in failures:
            continue
        try:
            goal_steps = goal.steps(snapshot, client)
        except CommandExecutionError as exc:  # a read it needed failed past the deadline
            failures[goal] = str(exc)
            continue
        for what, step in goal_steps:
            yield goal, what, step


def _act(client, steps, clock, failures, *, ids, while_sending=lambda: None):
    """Run one round of steps; permanent errors fail their goal. How many steps failed."""

    def moving():
        for goal, what, step in steps:
            goal.moved = True
            yield goal, what, step

    actions, errors = _run_steps(moving(), clock, while_sending)
    errors += _wait_for_actions(client, actions, clock)
    for goal, what, exc in errors:
        if _is_gone(exc):
            # A floating IP or network deleted (and maybe made anew under
            # its name) since its ID was cached: look it up again.
            log.warning("hcloud_ip: t+%.2fs %s: gone, looking it up again", clock.elapsed(), what)
            goal.forget(ids)
        elif _held_outside(exc) and not goal.wide:
            log.warning(
                "hcloud_ip: t+%.2fs %s: held by a server outside the load balancer; "
                "reading every server to find it",
                clock.elapsed(),
                what,
            )
            goal.wide = True
        elif not _is_transient(exc):
            failures[goal] = _api_error(exc, what)
    return len(errors)


def _is_gone(exc):
    return isinstance(exc, APIException) and exc.code == "not_found"


def _held_outside(exc):
    return isinstance(exc, APIException) and exc.code == "ip_not_available"


def _report(goal, failures, snapshot):
    error = failures.get(goal)
    entry = {"result": error is None, "moved": goal.moved and error is None}
    entry.update(goal.outcome(snapshot))
    if error:
        entry["error"] = error
    elif goal.stood_down:
        entry["comment"] = f"left where it is: this node became {goal.stood_down} meanwhile"
    elif yielded := goal.yielded(snapshot):
        entry["comment"] = _left_there(yielded, goal.peers, snapshot)
    elif not goal.moved:
        entry["comment"] = "already here"
    return entry


def _left_there(yielded, peers, snapshot):
    """Say which of a goal's addresses were left to the outranking peer, and why."""
    acting = snapshot.names.get(peers.acting)
    why = "re-assert" if peers.reassert else "split brain"
    took = "" if peers.reassert else " and took back what this run moved"
    parts = []
    for holder in sorted(set(yielded.values()), key=lambda name: name or ""):
        ips = ", ".join(ip for ip, h in yielded.items() if h == holder)
        if holder == acting:
            parts.append(f"{ips} held by {acting}, which outranks this node{took}; left there")
        else:
            parts.append(
                f"{ips} on {holder or 'no server'} while {acting}, which outranks this node{took}, "
                "takes the addresses; left for it"
            )
    return "; ".join(f"{part} ({why})" for part in parts)


def _clock(deadline):
    if deadline is None:
        return _Clock(
            _seconds(_failover_option("deadline", DEFAULT_DEADLINE), "hcloud:failover:deadline")
        )
    return _Clock(_seconds(deadline, "deadline"))


# --------------------------------------------------------------------------
# Moving
# --------------------------------------------------------------------------


def _move_one(ip, server, deadline, unassigning=False):
    ip = _ref(ip, "ip", A_FLOATING_IP)
    server = _ref(server, "server", A_SERVER, required=False)
    client = _client()
    with _clock(deadline) as clock:
        target = None if unassigning else _target_server(client, server, clock)
        goal = _FloatingIPGoal(ip, target, read_itself=True)
        view = _View(target.id if target else None)
        failures, snapshot = _converge(client, [goal], clock, view)
    if goal in failures:
        raise CommandExecutionError(failures[goal])
    outcome = goal.outcome(snapshot)
    return {
        "name": goal.fip.name,
        "ip": goal.fip.ip,
        "changed": goal.moved,
        "old": outcome["from"],
        "new": outcome["to"],
        "seconds": round(clock.elapsed(), 3),
    }


@_entry
def assign(ip, server=None, deadline=None):
    """hcloud_ip.assign: see its documentation there."""
    return _move_one(ip, server, deadline)


@_entry
def unassign(ip, deadline=None):
    """hcloud_ip.unassign: see its documentation there."""
    return _move_one(ip, None, deadline, unassigning=True)


@_entry
def alias_ips(network, ips=None, server=None, deadline=None):
    """hcloud_ip.alias_ips: see its documentation there."""
    network = _ref(network, "network", A_NETWORK)
    wanted = _split(ips, "ips")
    server = _ref(server, "server", A_SERVER, required=False)
    client = _client()
    with _clock(deadline) as clock:
        target = _target_server(client, server, clock)
        if not wanted:
            return _read_alias_ips(client, network, target)
        goal = _AliasGoal(network, wanted, target)
        failures, snapshot = _converge(client, [goal], clock, _View(target.id))
    if goal in failures:
        raise CommandExecutionError(failures[goal])
    outcome = goal.outcome(snapshot)
    return {
        "server": target.name,
        "network": outcome["network"],
        "changed": goal.moved,
        "old": outcome["from"],
        "new": outcome["to"],
        "alias_ips": sorted(snapshot.aliases(target.id, goal.network.id)),
        "seconds": round(clock.elapsed(), 3),
    }


def _read_alias_ips(client, network, server):
    net = _retry(
        "looking up the network", lambda: _by_name_or_id(client.networks, network, "network")
    )
    private = server.private_net_for(net)
    if private is None:
        raise CommandExecutionError(f"server {server.name} is not attached to network {net.name}")
    return {"server": server.name, "network": net.name, "alias_ips": sorted(private.alias_ips)}


def _failover_addresses(floating_ips, alias_ips):
    """
    (floating IP refs, {network: alias IPs}) the failover moves: the arguments,
    else hcloud:failover's; checked before anything is asked of the API.
    """
    if floating_ips is None:
        fip_refs = _split(_failover_option("floating_ips"), "hcloud:failover:floating_ips")
    else:
        fip_refs = _split(floating_ips, "floating_ips")
    if alias_ips is None:
        alias_map = _alias_map(_failover_option("alias_ips"), "hcloud:failover:alias_ips")
    else:
        alias_map = _alias_map(alias_ips, "alias_ips")
    if not fip_refs and not alias_map:
        raise CommandExecutionError(
            "nothing to fail over: set hcloud:failover:floating_ips "
            "and/or hcloud:failover:alias_ips"
        )
    return fip_refs, alias_map


def _failover_goals(fip_refs, alias_map, me, peers):
    goals = [_FloatingIPGoal(ref, me, peers) for ref in fip_refs]
    goals += [_AliasGoal(net, ips, me, peers) for net, ips in alias_map.items()]
    return goals


@_entry
def failover(floating_ips=None, alias_ips=None, deadline=None, reassert=False, since=None):
    """hcloud_ip.failover: see its documentation there."""
    reassert = _flag(reassert, "reassert")
    since = None if since is None else _timestamp(since, "since")
    addresses = _failover_addresses(floating_ips, alias_ips)
    client = _client()
    clock = _clock(deadline)
    peers = _OutrankingPeers(_outranking_peers(), reassert)
    left_master = _vrrp_state_watch(since)
    tell_master = _master_notifier()
    report = None
    try:
        with _failover_lock(clock), clock:
            if since is not None and _claimed_since(since):
                # The agent claimed everything for this very transition: what
                # is left to do is a re-assert's check. Claiming all once more
                # would start a tug of war in a split brain.
                log.info("hcloud_ip: the agent claimed the addresses since %.3f", since)
                peers.reassert = True
            report = _fail_over(client, clock, addresses, peers=peers, left_master=left_master)
    finally:
        tell_master(report)
    if not report["result"]:
        _context()["retcode"] = 1
    return report


def _outranking_peers():
    """The peers that would win a VRRP election against this node (hcloud:failover:yield_to)."""
    return frozenset(_split(_failover_option("yield_to"), "hcloud:failover:yield_to"))


def _vrrp_state_watch(since=None):
    """
    A function returning this node's VRRP state once it is not MASTER, else None.

    The state is read from hcloud:failover:state_file at each call, where the
    agent records each transition as keepalived reports it, in order. With
    ``since`` (when keepalived ran notify_master, as a UNIX time), only a
    state recorded after it counts: one from before is the transition's own
    past, or stale (no agent running, or a hung one), and must not stop the
    failover that keepalived asked for. No file or no option means carry on.
    """
    path = _state_file()
    if not path:
        return lambda: None

    def left_master():
        try:
            with open(path, encoding="utf-8") as state_file:
                if since is not None and os.fstat(state_file.fileno()).st_mtime < since:
                    return None
                state = state_file.read().strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("hcloud_ip: cannot read hcloud:failover:state_file %s: %s", path, exc)
            return None
        return state if state and state != "MASTER" else None

    return left_master


def _timestamp(value, name):
    """A UNIX time (``since``): plain ASCII digits with an optional fraction."""
    text = str(value).strip() if isinstance(value, (str, int, float)) else ""
    if isinstance(value, bool) or not SECONDS_PATTERN.fullmatch(text):
        raise CommandExecutionError(f"{name} must be a UNIX time in seconds, got {_shown(value)}")
    return float(text)


def _peer_ids(client, ids, clock):
    """
    The server IDs of the load balancer's other nodes (hcloud:failover:peers,
    and yield_to's), from the ID cache; None when no peers are configured,
    and every server is then read to find who holds an alias IP. A name that
    is no server of this project is skipped and logged: a yield_to entry
    naming none would silently let a split brain flap.
    """
    configured = _failover_option("peers")
    peers = _split(configured, "hcloud:failover:peers")
    found = []
    for ref in sorted(set(peers) | set(_outranking_peers())):
        try:
            found.append(_resolved_server(client, ref, ids, clock, "peer").id)
        except CommandExecutionError as exc:
            key = "peers" if ref in peers else "yield_to"
            if "not found" in str(exc):
                log.warning(
                    "hcloud_ip: hcloud:failover:%s names no server of this project: %r", key, ref
                )
            else:
                log.warning("hcloud_ip: hcloud:failover:%s: %s", key, exc)
    return None if configured is None else found


def _this_server_ref(client, ids, clock):
    """
    This node's server as a Server (its ID; its name once a read has it),
    found as ``whoami`` finds it but without reading it each time: a
    failover's first read is then this server itself. The metadata
    service's instance-id (link-local, not the API) is checked once against
    the project, then cached.
    """
    configured = _option("server")
    if configured is not None:
        return _resolved_server(client, configured, ids, clock, "server (hcloud:server)")
    instance_id = _metadata_instance_id()
    key = f"instance-id {instance_id}" if instance_id is not None else f"minion {_opts().get('id')}"
    record = ids.get("server", key)
    if record is None:
        server, _source = _this_server(client, clock)
        record = {"id": server.id, "name": server.name}
        ids.put("server", key, record)
    return Server(id=record["id"], name=record["name"])


def _converge_here(client, clock, addresses, ids, *, peers, left_master):
    """Converge the addresses onto this node's server; (me, goals, failures, snapshot)."""
    me = _this_server_ref(client, ids, clock)
    view = _View(me.id, _peer_ids(client, ids, clock), cached=True)
    goals = _failover_goals(*addresses, me, peers)
    log.info(
        "hcloud_ip: t+%.2fs failover of %d goal(s) to %s", clock.elapsed(), len(goals), me.name
    )
    failures, snapshot = _converge(
        client, goals, clock, view, left_master=left_master, periodic=peers.reassert
    )
    return me, goals, failures, snapshot


def _fail_over(client, clock, addresses, *, peers, left_master):
    # Worker threads start in copies of this context: they see it too.
    periodic = _PERIODIC.set(peers.reassert)
    try:
        return _fail_over_as_told(client, clock, addresses, peers=peers, left_master=left_master)
    finally:
        _PERIODIC.reset(periodic)


def _fail_over_as_told(client, clock, addresses, *, peers, left_master):
    ids = _ids()
    try:
        me, goals, failures, snapshot = _converge_here(
            client, clock, addresses, ids, peers=peers, left_master=left_master
        )
    except _ServerGone as exc:
        # A cached server ID is gone: a node rebuilt (a new ID under its old
        # name) or removed. Look every server up again, once.
        log.warning("hcloud_ip: t+%.2fs %s: looking the servers up again", clock.elapsed(), exc)
        ids.forget_kind("server")
        _context().pop("hcloud_ip.whoami", None)
        me, goals, failures, snapshot = _converge_here(
            client, clock, addresses, ids, peers=peers, left_master=left_master
        )
    me.name = next((g.target_name for g in goals if g.target_name), me.name)
    stood_down = next((goal.stood_down for goal in goals if goal.stood_down), None)
    if failures:
        outcome = f"FAILED for {len(failures)} of {len(goals)}"
    elif stood_down:
        outcome = f"stood down (this node is {stood_down})"
    else:
        outcome = "succeeded"
    log.info("hcloud_ip: t+%.2fs failover to %s %s", clock.elapsed(), me.name or me.id, outcome)
    report = {
        "result": not failures,
        "server": {"id": me.id, "name": me.name},
        "seconds": round(clock.elapsed(), 3),
        "floating_ips": {
            g.label: _report(g, failures, snapshot) for g in goals if g.kind == "floating_ip"
        },
        "alias_ips": {
            g.label: _report(g, failures, snapshot) for g in goals if g.kind == "alias_ip"
        },
    }
    if stood_down:
        report["stood_down"] = stood_down
    return report


# --------------------------------------------------------------------------
# Telling the master
# --------------------------------------------------------------------------


def _master_notifier():
    """
    Start telling the master about a failover; returns send(report).

    The report goes to the local salt-minion, which forwards it to the master
    when connected. Connecting to the minion takes a while when none runs
    (salt-ssh nodes), so that happens in the background while the failover
    works, and send() never waits longer than EVENT_WAIT: the master may be
    the very thing that is down.
    """
    reports = queue.Queue(maxsize=1)
    opts = _opts()  # this thread's: the event thread below starts without the bound loader

    def run():
        import salt.utils.event  # noqa: PLC0415 (only needed when a failover runs)

        try:
            with salt.utils.event.get_event(
                "minion", opts=opts, sock_dir=opts["sock_dir"], listen=False
            ) as event:
                if not event.connect_pull(timeout=EVENT_CONNECT_TIMEOUT):
                    log.debug("hcloud_ip: no local salt-minion, no failover event sent")
                    return
                report = reports.get()
                if report is None:  # the failover itself failed; its error says why
                    return
                payload = {"data": report, "tag": EVENT_TAG, "events": None, "pretag": None}
                event.fire_event(payload, "fire_master")
                log.debug("hcloud_ip: failover event handed to the local salt-minion")
        except Exception as exc:  # telling the master is best effort, whatever goes wrong
            log.debug("hcloud_ip: no failover event sent: %s", exc)

    thread = threading.Thread(target=run, name="hcloud_ip-event", daemon=True)
    thread.start()

    def send(report):
        if thread.is_alive():
            reports.put(report)
            thread.join(EVENT_WAIT)

    return send


# --------------------------------------------------------------------------
# The agent: keepalived's transitions, in order, to a process already running
# --------------------------------------------------------------------------

# A line keepalived writes to its VRRP notify FIFO: INSTANCE "lb" MASTER 200
VRRP_EVENT = re.compile(r'INSTANCE "?(?P<name>[^" ]+)"? (?P<state>[A-Z_]+)(?: (?P<priority>\d+))?')
# How long the agent keeps reading after SIGTERM: keepalived, stopping, sends
# TERM first and its STOP notices after.
STOPPING_GRACE = 1.0
# A re-assert slowed down by a low budget still runs at least this often.
MAX_REASSERT_PAUSE = 60.0
DEFAULT_REASSERT_INTERVAL = 15.0
DEFAULT_RESERVE = 300
# The agent's check of the cached IDs at its start gives up after this long.
IDS_CHECK_DEADLINE = 10.0


class _FailoverLock:
    """
    hcloud:failover:lock_file, held while addresses move: the agent and
    notify_master's salt-call take turns. The holder touches the file at
    every answer the API gives it (``heartbeat``), so a waiter tells a busy
    holder from a hung one: it waits as long as the holder shows signs of
    life (a failover on an empty bucket takes long, and a second process
    spending the same refill would only slow both), and goes ahead without
    the lock once none came for ``wait`` seconds: a hung agent must not keep
    notify_master from moving the addresses within its deadline.
    """

    held = None  # this process's descriptor of the lock while it holds it

    def __init__(self, path, wait):
        self.path = path
        self.wait = wait
        self.fd = None

    def __enter__(self):
        if not self.path:
            return self
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        waiting_since = time.time()
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                _FailoverLock.held = self.fd
                return self
            except BlockingIOError:
                alive = max(waiting_since, os.fstat(self.fd).st_mtime)
                if time.time() - alive >= self.wait:
                    log.warning(
                        "hcloud_ip: the failover lock %s is held, with no sign of life "
                        "for %.1fs (a hung agent?): going ahead without it",
                        self.path,
                        self.wait,
                    )
                    return self
                time.sleep(0.05)

    def __exit__(self, *exc_info):
        if self.fd is not None:
            if _FailoverLock.held == self.fd:
                _FailoverLock.held = None
            os.close(self.fd)  # releases the lock
            self.fd = None

    @staticmethod
    def heartbeat():
        """The holder is alive: the lock file's time says so to a waiter."""
        fd = _FailoverLock.held
        if fd is not None:
            with contextlib.suppress(OSError):
                os.utime(fd)


def _failover_lock(clock):
    path = _failover_option("lock_file")
    if path is not None and not isinstance(path, str):
        raise CommandExecutionError(
            f"hcloud:failover:lock_file must be a file's path, got {_shown(path)}"
        )
    return _FailoverLock(path, clock.deadline / 2)


def _reassert_pause(interval, reserve, rate=None):
    """
    Seconds until the next re-assert: ``interval`` while the project's budget
    (the RateLimit headers of the last answer) has twice ``reserve`` left;
    twice that while it has less; below ``reserve`` as long as the bucket
    takes to refill to it. Never more than a minute: a re-assert costs one
    request, and 60 an hour are less than the 3600 the bucket refills.
    """
    rate = rate or _RateLimit.last
    if not rate:
        return interval
    limit, remaining, reset = rate
    if remaining >= 2 * reserve:
        return interval
    if remaining >= reserve:
        return min(MAX_REASSERT_PAUSE, 2 * interval)
    per_request = _seconds_per_refill(limit, remaining, reset)
    return min(MAX_REASSERT_PAUSE, max(interval, (reserve - remaining) * per_request))


class _Agent:
    """
    One keepalived VRRP instance's transitions, read in order from its notify
    FIFO, and what they call for (see ``agent``).

    A reader thread takes each line as keepalived writes it and records the
    state at once (in memory and in hcloud:failover:state_file), so a
    failover under way sees a transition away from MASTER before its next
    round; the main thread acts on the transitions and re-asserts.
    """

    def __init__(self, fifo, instance, interval, reserve):
        self.fifo = fifo
        self.instance = instance
        self.interval = interval
        self.reserve = reserve
        self.events = queue.Queue()
        self.state = None
        self.claimed = False  # a claim succeeded since the last transition to MASTER
        self.stopping = None  # when SIGTERM came
        self.failovers = 0
        self.reasserts = 0
        # Read here: the reader thread has no Salt loader context (config.get).
        self.state_file = _state_file()

    def read(self):
        try:
            with open(self.fifo, encoding="utf-8", errors="replace") as pipe:
                for line in pipe:
                    match = VRRP_EVENT.fullmatch(line.strip())
                    if match and match["name"] == self.instance:
                        self.record(match["state"])
                        self.events.put(match["state"])
        except OSError as exc:
            log.warning("hcloud_ip: agent: cannot read %s: %s", self.fifo, exc)
        self.events.put(None)  # keepalived closed the FIFO: reloading or stopping

    def record(self, state):
        self.state = state
        _write_state(self.state_file, state)
        _syslog(f"keepalived: {self.instance} is {state}")

    def left_master(self):
        if self.stopping is not None:
            return "stopping"
        return self.state if self.state != "MASTER" else None

    def run(self):
        signal.signal(signal.SIGTERM, self.on_term)
        # Restarted while MASTER (a crash): the state file says so, and the
        # first thing to do is to check the addresses, claiming them all.
        # Read before the reader starts, which records what comes next.
        self.state = _recorded_state(self.state_file)
        next_check = time.monotonic() if self.state == "MASTER" else None
        threading.Thread(target=self.read, name="hcloud_ip-fifo", daemon=True).start()
        self.check_ids()
        _syslog(f"agent started on {self.fifo} (state {self.state or 'unknown'})")
        while True:
            try:
                event = self.events.get(timeout=self.wait_for(next_check))
            except queue.Empty:
                event = "tick"
            if event is None or (
                self.stopping and time.monotonic() - self.stopping > STOPPING_GRACE
            ):
                break
            if self.stopping is not None:
                continue  # keepalived is stopping or reloading: the next agent acts
            if event == "MASTER":
                self.claimed = False
                self.fail_over(reassert=False)
            elif (
                event == "tick" and self.state == "MASTER" and time.monotonic() >= (next_check or 0)
            ):
                self.fail_over(reassert=self.claimed)
            else:
                continue
            if self.state == "MASTER":
                next_check = time.monotonic() + _reassert_pause(self.interval, self.reserve)
        _syslog(f"agent stopped: {self.failovers} failover(s), {self.reasserts} re-assert(s)")
        return {"failovers": self.failovers, "reasserts": self.reasserts}

    def check_ids(self):
        """
        The cached IDs checked against the API (a floating IP renamed since
        they were resolved), in the background: a transition must not wait.
        keepalived starts the agent when it starts or reloads, so this
        happens at every apply that changes its config.
        """

        def check():
            try:
                with _Clock(IDS_CHECK_DEADLINE) as clock:
                    _check_cached_ids(_client(), _ids(), clock)
            except CommandExecutionError as exc:
                log.warning("hcloud_ip: agent: the cached IDs were not checked: %s", exc)

        context = contextvars.copy_context()  # the bound loader, for config.get
        threading.Thread(
            target=context.run, args=(check,), name="hcloud_ip-ids", daemon=True
        ).start()

    def wait_for(self, next_check):
        """How long to wait for the next transition: a signal does not end the wait, so a
        second at most, to notice SIGTERM."""
        if self.stopping is not None:
            return 0.1
        if next_check is None:
            return 1.0
        return min(1.0, max(0.0, next_check - time.monotonic()))

    def on_term(self, *_args):
        self.stopping = time.monotonic()

    def fail_over(self, reassert):
        if reassert:
            self.reasserts += 1
        else:
            self.failovers += 1
        tell_master = _master_notifier() if not reassert else lambda report: None
        report = None
        try:
            # A bad option or token fails this failover, not the agent: it
            # tries again at the next re-assert (after an apply fixed it).
            client = _client()
            clock = _clock(None)
            addresses = _failover_addresses(None, None)
            peers = _OutrankingPeers(_outranking_peers(), reassert)
            with _failover_lock(clock), clock:
                report = _fail_over(
                    client, clock, addresses, peers=peers, left_master=self.left_master
                )
        except CommandExecutionError as exc:
            _syslog(f"{'re-assert' if reassert else 'failover'} failed: {exc}")
            return
        finally:
            tell_master(report)
        if report["result"] and not report.get("stood_down"):
            self.claimed = True
            if not reassert:
                _mark_claimed(self.state_file)
        if not reassert or _moved_anything(report) or not report["result"]:
            _syslog(_summary(report, reassert))


def _moved_anything(report):
    entries = [*report["floating_ips"].values(), *report["alias_ips"].values()]
    return any(entry.get("moved") for entry in entries)


def _summary(report, reassert):
    """One line for the node's log: what a 3 a.m. reader needs first."""
    what = "re-assert" if reassert else "failover"
    entries = {**report["floating_ips"], **report["alias_ips"]}
    moved = [label for label, e in entries.items() if e.get("moved")]
    failed = [f"{label}: {e['error']}" for label, e in entries.items() if e.get("error")]
    if report.get("stood_down"):
        outcome = f"stood down ({report['stood_down']})"
    elif failed:
        outcome = "FAILED: " + "; ".join(failed)
    else:
        outcome = "succeeded"
    return (
        f"{what} to {report['server']['name']} {outcome} in {report['seconds']}s; "
        f"moved: {', '.join(moved) or 'nothing'}"
    )


def _syslog(message):
    """The agent's own lines, to the node's log under hcloud_lb, and Salt's log."""
    log.info("hcloud_ip: agent: %s", message)
    syslog.openlog("hcloud_lb", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_NOTICE, message)


def _state_file():
    path = _failover_option("state_file")
    if path is not None and not isinstance(path, str):
        raise CommandExecutionError(
            f"hcloud:failover:state_file must be a file's path, got {_shown(path)}"
        )
    return path


def _write_state(path, state):
    if not path:
        return
    try:
        with open(f"{path}.new", "w", encoding="utf-8") as new:
            new.write(f"{state}\n")
        os.replace(f"{path}.new", path)
    except OSError as exc:
        log.warning("hcloud_ip: cannot record the VRRP state in %s: %s", path, exc)


def _mark_claimed(state_file):
    """Say when this agent's claim last succeeded (``_claimed_since``)."""
    if state_file:
        try:
            Path(f"{state_file}.claimed").touch()
        except OSError as exc:
            log.warning("hcloud_ip: cannot record the claim beside %s: %s", state_file, exc)


def _claimed_since(since):
    """Whether the agent's claim succeeded after ``since`` (notify_master's own start)."""
    state_file = _state_file()
    try:
        return bool(state_file) and os.stat(f"{state_file}.claimed").st_mtime >= since
    except OSError:
        return False


def _recorded_state(path):
    """The state an agent recorded last (this one, restarted, carries on from it)."""
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as state_file:
            return state_file.read().strip() or None
    except OSError:
        return None


@_entry
def agent(fifo, instance, interval=None, reserve=None):
    """hcloud_ip.agent: see its documentation there."""
    fifo = _text(str(fifo), "fifo")
    instance = _text(str(instance), "instance")
    if interval is None:
        interval = _failover_option("reassert_interval", DEFAULT_REASSERT_INTERVAL)
    interval = _seconds(interval, "interval")
    if reserve is None:
        reserve = _failover_option("reserve", DEFAULT_RESERVE)
    if not isinstance(reserve, int) or isinstance(reserve, bool) or reserve < 0:
        raise CommandExecutionError(f"reserve must be a number of requests, got {_shown(reserve)}")
    return _Agent(fifo, instance, interval, reserve).run()
