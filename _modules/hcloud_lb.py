"""
Checks and derived values for the hcloud_lb formula.

The formula's states call these while rendering, so a bad pillar is refused
with a message naming the key before anything on the host changes, and the
per-node keepalived values come from one place.

.. code-block:: bash

    salt-call hcloud_lb.validate
    salt-call hcloud_lb.node

Validation is the formula's one gate between pillar and the host: pillar may
come from people or systems that cannot write states (a CMDB, an ext_pillar,
another team), so nothing it holds may become a config directive or a shell
word. Every key is known (an unknown one is refused, so a typo is not
silently ignored), every value has its type (booleans are booleans, numbers
are finite numbers or plain ASCII digit strings as the write-ups give ports),
and every string that reaches a config or a script matches a pattern that
leaves no room for a newline, a comment character, a quote or a shell
metacharacter. A pillar that passes renders configs that haproxy and
keepalived accept: the test suite proves it over the whole option space.

This file is also the formula's salt-ssh wrapper module (``_wrapper/hcloud_lb.py``
is a link to it). salt-ssh renders SLS files on the master, and runs a function
there when a wrapper module has it, with the target's grains and the pillar
compiled for it; any other function runs on the target by ``salt-call --local``,
its arguments on the ssh command line and without the pillar. So, as a wrapper,
``validate`` and ``node`` read the pillar and the settings never leave the
master. Everything here must therefore hold in both places: what concerns the
node's files is asked of ``__salt__`` (``cmd.retcode``, ``file.stats``), which
is the node itself in the execution module and the target, over ssh with only
a path or a user name as argument, in the wrapper; never of this process's
filesystem.
"""

import hashlib
import ipaddress
import math
import posixpath
import re
import stat

from salt.exceptions import CommandExecutionError

__virtualname__ = "hcloud_lb"

MODES = ("tcp", "http")
PROFILES = ("default", "fast")
BINDINGS = ("interface", "nonlocal")
NETWORK_STYLES = ("ifupdown", "netplan", "networkmanager", "wicked")
VRRP_PASSWORD_MAX = 8  # VRRP "PASS" authentication carries at most 8 characters
# haproxy keeps about two file descriptors per connection, and Linux allows a
# process 1048576 by default (fs.nr_open): more would not start.
MAX_CONNECTIONS = 500_000
# haproxy's timers are milliseconds in a signed 32-bit int.
MAX_TIMEOUT_MS = 2**31 - 1
TIME_UNITS_MS = {
    "us": 0.001,
    "ms": 1,
    "": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
}

# Every pattern is matched whole (fullmatch): "$" alone would let a trailing
# newline through. None admits white space, quotes, "#", "!", "$", ";", "`",
# "\\" or braces: nothing that ends a config token or means something to a shell.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
# What Linux allows in an interface name, less what a config or shell would
# read: at most 15 characters, no "/", ":" or white space, not "." or "..".
INTERFACE = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9_.-]{1,15}")
# Paths written into scripts, configs and state arguments: absolute, plain
# characters only, no "." or ".." component.
SAFE_PATH = re.compile(r"(/(?!\.{1,2}(/|$))[A-Za-z0-9_.+-]+)+/?|/")
UNIX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.~-]{0,127}")
HOSTNAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?"
)
# A floating IP named by name, ID or address (Hetzner names: letters, digits, ".-_").
FLOATING_IP_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}")
# keepalived reads "#" and "!" as comments, "$" as a variable, braces as blocks.
VRRP_PASSWORD = re.compile(r"[A-Za-z0-9_.,:;+=@%^*/?~-]{1,8}")
PROCESS_NAME = re.compile(r"[A-Za-z0-9_.:+-]{1,15}")  # a process's comm, as pgrep -x sees it
COMMAND_WORD = re.compile(r"[A-Za-z0-9_./:=@%+,-]{1,256}")
HAPROXY_TIME = re.compile(r"(0|[1-9][0-9]{0,12})(us|ms|s|m|h|d)?")
INTEGER = re.compile(r"-?(0|[1-9][0-9]{0,17})")  # ASCII digits only: no "2_000", no padding
DECIMAL = re.compile(r"-?(0|[1-9][0-9]{0,17})(\.[0-9]{1,9})?")
TOKEN = re.compile(r"[\x21-\x7e]{1,512}")

# haproxy "balance" algorithms, with the arguments each takes.
ALGORITHM = re.compile(
    r"roundrobin|static-rr|leastconn|first|source"
    r"|uri( (whole|path-only|len [1-9][0-9]{0,3}|depth [1-9][0-9]{0,2}))*"
    r"|url_param [A-Za-z0-9_.-]{1,64}( check_post)?"
    r"|hdr\([A-Za-z0-9_-]{1,64}\)( use_domain_only)?"
    r"|random(\([1-9][0-9]?\))?"
    r"|rdp-cookie(\([A-Za-z0-9_-]{1,64}\))?"
)
# Backend "option" lines haproxy accepts in either mode, with their arguments.
BACKEND_OPTION = re.compile(
    r"abortonclose|allbackups|checkcache|forwardfor|http-buffer-request|http-keep-alive"
    r"|http-no-delay|http-pretend-keepalive|http-server-close|httpclose|log-health-checks"
    r"|nolinger|persist|prefer-last-server|redispatch|splice-auto|splice-request"
    r"|splice-response|srvtcpka|ssl-hello-chk|tcp-check|tcp-smart-connect|tcpka"
    r"|ldap-check|redis-check|spop-check|smtpchk|mysql-check|pgsql-check"
    r"|(mysql-check|pgsql-check) user [A-Za-z0-9_.-]{1,64}"
    r"|httpchk( (GET|HEAD|OPTIONS) /[A-Za-z0-9_./?=&%+-]{0,200}( HTTP/1\.[01])?)?"
)
HTTP_ONLY_ALGORITHM = re.compile(r"uri|url_param|hdr\(")
HTTP_ONLY_OPTION = re.compile(r"forwardfor|http-[a-z-]+|httpclose|checkcache")
# Backend "server" keywords, each with the kind of value it takes.
SERVER_FLAGS = {
    "check",
    "check-ssl",
    "ssl",
    "backup",
    "send-proxy",
    "send-proxy-v2",
    "check-send-proxy",
    "disabled",
    "no-check-ssl",
}
SERVER_KEYWORDS = {
    "inter": "time",
    "fastinter": "time",
    "downinter": "time",
    "slowstart": "time",
    "fall": "count",
    "rise": "count",
    "weight": "weight",
    "maxconn": "count",
    "port": "port",
    "verify": "verify",
    "on-marked-down": "marked-down",
}

# Every key the formula knows, per mapping (entries of a mapping keyed by name by their kind).
KNOWN = {
    "": {
        "lookup",
        "name",
        "max_connections",
        "floating_ip_binding",
        "public_interface",
        "vrrp",
        "nodes",
        "groups",
        "alias_ips",
        "haproxy",
        "hook",
    },
    "lookup": {
        "pkgs",
        "salt_call",
        "hook_config_dir",
        "hook_cache_dir",
        "run_dir",
        "haproxy",
        "keepalived",
        "network",
    },
    "lookup:haproxy": {"service", "config", "user", "group", "enable", "bin"},
    "lookup:keepalived": {"service", "config", "scripts_dir", "enable", "bin"},
    "lookup:network": {"style", "config"},
    "vrrp": {
        "interface",
        "virtual_router_id",
        "authentication",
        "password",
        "profile",
        "preempt",
        "preempt_delay",
        "check",
    },
    "vrrp:check": {
        "interval",
        "probe_interval",
        "timeout",
        "fall",
        "rise",
        "weight",
        "processes",
        "command",
        "command_user",
    },
    "node": {"priority", "address", "check_weight"},
    "group": {"floating_ip", "address", "balancers"},
    "balancer": {
        "mode",
        "algorithm",
        "frontend_port",
        "options",
        "backend_servers",
        "check_backends",
    },
    "server": {"host", "port", "options"},
    "alias_network": {"interface", "ips"},
    "haproxy": {"stats_socket", "monitor", "prometheus", "timeouts"},
    "haproxy:prometheus": {"enabled", "bind"},
    "haproxy:timeouts": {"connect", "client", "server", "tunnel"},
    "hook": {"deadline", "reassert_interval", "reserve"},
}


def __virtual__():
    return __virtualname__


# ---------------------------------------------------------------- strict values


def _text(value, pattern):
    """The value if it is a string that ``pattern`` matches whole, else None."""
    if isinstance(value, str) and pattern.fullmatch(value):
        return value
    return None


def _integer(value, low, high):
    """
    The value as an int within [low, high], else None: a real int (not a
    bool), or a string of plain ASCII digits, as the write-ups quote ports.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and INTEGER.fullmatch(value):
        value = int(value)
    if isinstance(value, int) and low <= value <= high:
        return value
    return None


def _number(value, low, high):
    """The value as a finite float within (low, high], else None; digits only in strings."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and DECIMAL.fullmatch(value):
        value = float(value)
    if isinstance(value, (int, float)) and math.isfinite(value) and low < value <= high:
        return float(value)
    return None


def _ip(value):
    """
    The value as an IP address, else None: a string or ipaddress object,
    unpadded and without an IPv6 scope id ("fe80::1%eth0", which Python
    accepts, would carry the interface name into configs and commands).
    """
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        value = str(value)
    if not isinstance(value, str) or "%" in value or value != value.strip():
        return None
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        return None


def _host_port(value):
    """(address, port) of "ADDRESS:PORT" or "[IPv6]:PORT", else None."""
    if not isinstance(value, str):
        return None
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        address = _ip(host)
        if address is None or address.version != 6:
            return None
    else:
        address = _ip(host)
        if address is None or address.version != 4:
            return None
    port = _integer(port, 1, 65535) if port.isascii() and port.isdigit() else None
    return None if port is None else (address, port)


def _haproxy_time_ms(value):
    """A haproxy time ("5s", "50000", "1h") in milliseconds, else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    match = _text(value, HAPROXY_TIME) and HAPROXY_TIME.fullmatch(value)
    if not match:
        return None
    return int(match.group(1)) * TIME_UNITS_MS[match.group(2) or ""]


class _Errors(list):
    def add(self, key, problem):
        message = f"hcloud_lb:{key}: {problem}"
        if not message.isprintable():
            # A hostile key or value must not break the refusal's own lines.
            message = message.encode("unicode_escape").decode("ascii")
        self.append(message)

    def mapping(self, key, value, known=None, required=False):
        """
        The value as a dict; an error if it is not one (or is empty when
        required), and one per key that ``known`` does not list.
        """
        if value is None or value == {}:
            if required:
                self.add(key, "must not be empty")
            return {}
        if not isinstance(value, dict):
            self.add(key, f"must be a mapping keyed by name, got {type(value).__name__}")
            return {}
        for name in value:
            if known is not None and name not in known:
                self.add(f"{key}:{name}" if key else str(name), "is not a known key")
        return value

    def named(self, key, value, what, required=True, ids=False):
        """
        A mapping keyed by name (or, with ``ids``, by a cloud ID, as YAML reads
        ``7578:``), each name checked whole; yields (key, name, entry).
        """
        for name, entry in self.mapping(key, value, required=required).items():
            if ids and _integer(name, 1, 2**63) is not None and not isinstance(name, str):
                yield f"{key}:{name}", name, entry
                continue
            if not (isinstance(name, str) and SAFE_NAME.fullmatch(name)):
                self.add(f"{key}:{name}", f"{what} names must be letters, digits, '.', '_' or '-'")
                continue
            yield f"{key}:{name}", name, entry

    def text(self, key, value, pattern, what):
        if _text(value, pattern) is None:
            self.add(key, f"{_shown(value)} is not {what}")
            return None
        return value

    def integer(self, key, value, low, high, what=None):
        number = _integer(value, low, high)
        if number is None:
            self.add(key, f"{_shown(value)} is not {what or 'a whole number'} ({low}-{high})")
        return number

    def number(self, key, value, low, high, what):
        number = _number(value, low, high)
        if number is None:
            self.add(key, f"{_shown(value)} is not {what}")
        return number

    def boolean(self, key, value):
        if not isinstance(value, bool):
            self.add(key, f"{_shown(value)} is not true or false")
            return None
        return value

    def choice(self, key, value, choices):
        if not isinstance(value, str) or value not in choices:
            self.add(key, f"{_shown(value)} is not one of {', '.join(choices)}")
            return None
        return value

    def ip(self, key, value):
        address = _ip(value)
        if address is None:
            self.add(key, f"{_shown(value)} is not an IP address (no padding, no scope id)")
        return address

    def unique_ipv4(self, key, value, seen, owner, what):
        """An IPv4 address no other entry has: recorded in ``seen`` as ``owner``'s."""
        address = self.ip(key, value)
        if address is None:
            return
        if address.version != 4:
            self.add(key, f"{address} is not IPv4 ({what} are IPv4 here)")
        elif address in seen:
            self.add(key, f"{address} is also {seen[address]}'s")
        else:
            seen[address] = owner

    def path(self, key, value):
        return self.text(key, value, SAFE_PATH, "an absolute path of letters, digits and _.+-/")

    def interface(self, key, value):
        """An interface name that the node has: keepalived -t refuses a missing one."""
        name = self.text(
            key, value, INTERFACE, "an interface name (1-15 letters, digits, '.', '_', '-')"
        )
        if name and not _interface_on_the_node(name):
            self.add(key, f"{name} is not an interface of this node")
        return name


def _shown(value):
    """A value for a message: its repr, shortened, so a hostile value stays one line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------- the settings


def _settings(settings):
    """The given settings, or this minion's as the states see them (map.jinja's merge)."""
    if settings is not None:
        return settings
    try:
        return __salt__["slsutil.renderer"](
            string='{%- from "hcloud_lb/map.jinja" import hcloud_lb with context %}'
            "{{ hcloud_lb | json }}",
            default_renderer="jinja|json",
            sls="hcloud_lb.validate",
        )
    except Exception:
        # salt-ssh's wrapper cannot always read the formula's files on the
        # master (TemplateNotFound): then the pillar as it is, as before.
        return __salt__["pillar.get"]("hcloud_lb", {})


def validate(settings=None):
    """
    Check the hcloud_lb settings for this minion: the pillar merged over the
    formula's defaults and this OS's lookup values, as map.jinja merges them
    (what the states render from; given by the states, merged here when
    called from the command line).

    Returns a list of problems, each naming the pillar key; empty when the
    pillar can be applied.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_lb.validate
    """
    settings = _settings(settings)
    # Every sls of the formula validates while it renders: the answer for the
    # same settings is the same, and the node checks cost a command each.
    key = hashlib.sha256(repr(settings).encode()).hexdigest()
    cache = __context__.setdefault("hcloud_lb.validate", {})
    if key not in cache:
        cache[key] = _problems(settings)
    return list(cache[key])


def _problems(settings):
    errors = _Errors()
    _check_token(errors)
    settings = errors.mapping("", settings, KNOWN[""], required=True)
    _check_lookup(errors, settings.get("lookup"))
    _check_general(errors, settings)
    vrrp = errors.mapping("vrrp", settings.get("vrrp"), KNOWN["vrrp"])
    _check_vrrp(errors, vrrp)
    nodes = _check_nodes(errors, settings.get("nodes"), vrrp)
    aliases = _check_alias_ips(errors, settings.get("alias_ips"))
    haproxy = errors.mapping("haproxy", settings.get("haproxy"), KNOWN["haproxy"])
    taken = _check_haproxy(errors, haproxy)
    _check_groups(errors, settings.get("groups"), aliases, taken, nodes)
    if not settings.get("groups") and not aliases:
        errors.add("groups", "must not be empty (or give alias_ips): nothing to fail over")
    _check_check(errors, vrrp, settings)
    _check_hook(errors, settings.get("hook"))
    return list(errors)


def _check_token(errors):
    token = __salt__["config.get"]("hcloud:token")
    if not token:
        errors.append(
            "hcloud:token: not set; the failover hook needs a read/write API token "
            "(with salt-ssh, also sync this formula's wrapper: salt-run saltutil.sync_wrapper)"
        )
    elif not (isinstance(token, str) and TOKEN.fullmatch(token)):
        # Never shown: it is the token.
        errors.append(
            "hcloud:token: is not an API token (printable ASCII without spaces or newlines)"
        )


def _check_lookup(errors, lookup):
    lookup = errors.mapping("lookup", lookup, KNOWN["lookup"], required=True)
    pkgs = lookup.get("pkgs")
    if not isinstance(pkgs, list) or not pkgs:
        errors.add("lookup:pkgs", "must list the packages to install")
    else:
        for pkg in pkgs:
            errors.text("lookup:pkgs", pkg, PACKAGE, "a package name")
    for key in ("salt_call", "hook_config_dir", "hook_cache_dir", "run_dir"):
        errors.path(f"lookup:{key}", lookup.get(key))
    salt_call = _text(lookup.get("salt_call"), SAFE_PATH)
    if salt_call and not _executable_on_the_node(salt_call):
        errors.add(
            "lookup:salt_call",
            f"{salt_call} is not an executable salt-call; the failover hook needs Salt "
            "on the node (install it, or point this at its salt-call)",
        )
    for daemon, paths in (
        ("haproxy", ("config", "bin")),
        ("keepalived", ("config", "scripts_dir", "bin")),
    ):
        key = f"lookup:{daemon}"
        entry = errors.mapping(key, lookup.get(daemon), KNOWN[key], required=True)
        errors.text(f"{key}:service", entry.get("service"), SERVICE, "a service name")
        for name in paths:
            if name in entry or name != "bin":
                errors.path(f"{key}:{name}", entry.get(name))
        if "enable" in entry:
            errors.boolean(f"{key}:enable", entry["enable"])
    haproxy = lookup.get("haproxy") if isinstance(lookup.get("haproxy"), dict) else {}
    for name in ("user", "group"):
        errors.text(f"lookup:haproxy:{name}", haproxy.get(name), UNIX_NAME, "a user or group name")
    network = errors.mapping(
        "lookup:network", lookup.get("network"), KNOWN["lookup:network"], required=True
    )
    errors.choice("lookup:network:style", network.get("style"), NETWORK_STYLES)
    config = network.get("config")
    # The one placeholder: wicked's ifcfg file is per interface.
    errors.path(
        "lookup:network:config",
        config.replace("{interface}", "x") if isinstance(config, str) else config,
    )


def _check_general(errors, settings):
    errors.text(
        "name", settings.get("name"), SAFE_NAME, "a name of letters, digits, '.', '_' or '-'"
    )
    errors.integer("max_connections", settings.get("max_connections"), 1, MAX_CONNECTIONS)
    errors.choice("floating_ip_binding", settings.get("floating_ip_binding"), BINDINGS)
    # Only the interface binding puts addresses on it.
    if settings.get("floating_ip_binding") == "interface":
        errors.interface("public_interface", settings.get("public_interface"))
    else:
        errors.text(
            "public_interface", settings.get("public_interface"), INTERFACE, "an interface name"
        )


def _check_vrrp(errors, vrrp):
    errors.interface("vrrp:interface", vrrp.get("interface"))
    errors.integer("vrrp:virtual_router_id", vrrp.get("virtual_router_id"), 1, 255)
    profile = errors.choice("vrrp:profile", vrrp.get("profile"), PROFILES)
    authentication = errors.boolean("vrrp:authentication", vrrp.get("authentication"))
    password = vrrp.get("password")
    # keepalived 2.2 refuses authentication with VRRPv3: the fast profile runs without it.
    wanted = authentication and profile == "default"
    if wanted and not password:
        errors.add("vrrp:password", "not set; both nodes need the same VRRP password")
    elif wanted and isinstance(password, str) and len(password) > VRRP_PASSWORD_MAX:
        errors.add(
            "vrrp:password",
            f"longer than {VRRP_PASSWORD_MAX} characters (VRRP PASS authentication "
            "uses only the first 8, so the nodes would not agree)",
        )
    elif wanted and not _text(password, VRRP_PASSWORD):
        # Never shown: it is the password.
        errors.add(
            "vrrp:password",
            "must be 1-8 letters, digits or _.,:;+=@%^*/?~- (keepalived reads '#' and '!' "
            "as comments, '$' as a variable and splits at white space)",
        )
    elif authentication is False and password:
        errors.add("vrrp:password", "is set, but vrrp:authentication is false: drop one")
    preempt = errors.boolean("vrrp:preempt", vrrp.get("preempt"))
    delay = errors.integer("vrrp:preempt_delay", vrrp.get("preempt_delay"), 0, 1000, "seconds")
    if delay and preempt is False:
        errors.add("vrrp:preempt_delay", "has no effect with preempt: false (nopreempt)")


def _check_check(errors, vrrp, settings):
    """The health check: keepalived's vrrp_script values, processes, a command, weights."""
    check = errors.mapping("vrrp:check", vrrp.get("check"), KNOWN["vrrp:check"])
    # keepalived runs scripts in whole seconds; the probes within a run may be finer.
    interval = errors.integer(
        "vrrp:check:interval", check.get("interval"), 1, 3600, "whole seconds"
    )
    probe = errors.number(
        "vrrp:check:probe_interval", check.get("probe_interval"), 0, 3600, "a positive number"
    )
    if interval and probe and probe > interval:
        errors.add("vrrp:check:probe_interval", f"must not exceed interval ({interval} s)")
    errors.number("vrrp:check:timeout", check.get("timeout"), 0, 3600, "a positive number")
    for key in ("fall", "rise"):
        errors.integer(f"vrrp:check:{key}", check.get(key), 1, 100)
    processes = check.get("processes")
    if not isinstance(processes, list):
        errors.add("vrrp:check:processes", "must be a list of process names")
    else:
        for process in processes:
            errors.text(
                "vrrp:check:processes",
                process,
                PROCESS_NAME,
                "a process name (as pgrep -x matches it)",
            )
    _check_command(errors, check)
    weight = errors.integer("vrrp:check:weight", check.get("weight"), -253, 253)
    _check_weights(errors, settings, vrrp, weight)


def _check_command(errors, check):
    """
    A command of the user's own, run by keepalived as an unprivileged user:
    whoever writes pillar chooses it, and must not gain root by it.
    """
    command = check.get("command")
    if command in (None, []):
        return
    if not isinstance(command, list) or not all(isinstance(w, str) for w in command):
        errors.add("vrrp:check:command", "must be a list: the executable, then its arguments")
        return
    executable = errors.path("vrrp:check:command", command[0])
    for word in command[1:]:
        errors.text(
            "vrrp:check:command",
            word,
            COMMAND_WORD,
            "an argument of letters, digits and _./:=@%+,-",
        )
    if executable and not _executable_on_the_node(executable):
        errors.add("vrrp:check:command", f"{executable} is not an executable on this node")
    user = errors.text(
        "vrrp:check:command_user", check.get("command_user"), UNIX_NAME, "a user name"
    )
    uid = _uid_on_the_node(user) if user else None
    if user and uid is None:
        errors.add("vrrp:check:command_user", f"{user} is not a user on this node")
    elif uid == 0:
        errors.add("vrrp:check:command_user", "must not be root: pillar would run commands as root")


def _check_weights(errors, settings, vrrp, shared_weight):
    nodes = settings.get("nodes") if isinstance(settings.get("nodes"), dict) else {}
    priorities = {
        name: priority
        for name, node in nodes.items()
        if isinstance(node, dict) and (priority := _integer(node.get("priority"), 1, 254))
    }
    for name, node in nodes.items():
        if not isinstance(node, dict):
            continue
        key = f"nodes:{name}:check_weight"
        weight = shared_weight
        if "check_weight" in node:
            weight = errors.integer(key, node["check_weight"], -253, 253)
        else:
            key = "vrrp:check:weight"
        if not weight:
            continue
        if vrrp.get("preempt") is False:
            errors.add(
                key,
                f"{weight} only changes the priority, and with preempt: false (nopreempt) "
                "the other node never takes over from a master whose check fails; use weight 0",
            )
            return
        mine = priorities.get(name)
        others = [p for other, p in priorities.items() if other != name]
        lowered = max(mine + weight, 1) if mine else None
        if weight < 0 and others and mine == max(priorities.values()) and lowered >= max(others):
            errors.add(
                key,
                f"{weight} leaves {name} at priority {lowered} when its "
                f"check fails, not below {max(others)}: it would stay MASTER",
            )


def _check_nodes(errors, nodes, vrrp):
    """The nodes by name; each needs a priority and an IPv4 VRRP address."""
    nodes = errors.mapping("nodes", nodes, required=True)
    minion = __grains__["id"]
    if nodes and minion not in nodes:
        errors.add("nodes", f"has no entry for this minion ({minion})")
    if nodes and len(nodes) < 2:
        errors.add("nodes", "needs at least two nodes to fail over between")
    seen = {}
    for key, name, entry in errors.named("nodes", nodes, "node"):
        node = errors.mapping(key, entry, KNOWN["node"], required=True)
        if not node:
            continue
        errors.integer(f"{key}:priority", node.get("priority"), 1, 254)
        # VRRPv2 is IPv4 only, and Hetzner's private networks are IPv4.
        errors.unique_ipv4(f"{key}:address", node.get("address"), seen, f"nodes:{name}", "VRRP")
    return seen


def _check_alias_ips(errors, alias_ips):
    """The alias IPs, {address: "alias_ips:NETWORK"}."""
    aliases = {}
    for key, _name, value in errors.named(
        "alias_ips", alias_ips, "network", required=False, ids=True
    ):
        entry = errors.mapping(key, value, KNOWN["alias_network"], required=True)
        if not entry:
            continue
        errors.interface(f"{key}:interface", entry.get("interface"))
        ips = entry.get("ips")
        if not isinstance(ips, list) or not ips:
            errors.add(f"{key}:ips", "must list at least one IP")
            continue
        for ip in ips:
            errors.unique_ipv4(f"{key}:ips", ip, aliases, key, "alias IPs")
    return aliases


def _check_haproxy(errors, haproxy):
    """haproxy's own settings; returns {(address, port): key} of the listeners they take."""
    taken = {}
    errors.path("haproxy:stats_socket", haproxy.get("stats_socket"))
    prometheus = errors.mapping(
        "haproxy:prometheus", haproxy.get("prometheus"), KNOWN["haproxy:prometheus"]
    )
    listeners = [("haproxy:monitor", haproxy.get("monitor"))]
    if errors.boolean("haproxy:prometheus:enabled", prometheus.get("enabled")):
        listeners.append(("haproxy:prometheus:bind", prometheus.get("bind")))
    for key, value in listeners:
        where = _host_port(value)
        if where is None:
            errors.add(key, f"{_shown(value)} is not ADDRESS:PORT ([ADDRESS]:PORT for IPv6)")
        elif not (where[0].is_loopback or where[0].is_unspecified):
            # Shared by every node: only a loopback or wildcard address is on each.
            errors.add(key, f"{where[0]} is not a loopback or wildcard address, on every node")
        elif where in taken:
            errors.add(key, f"{value} is also {taken[where]}")
        else:
            taken[where] = key
    timeouts = errors.mapping(
        "haproxy:timeouts", haproxy.get("timeouts"), KNOWN["haproxy:timeouts"]
    )
    for name in sorted(KNOWN["haproxy:timeouts"]):
        value = timeouts.get(name)
        ms = _haproxy_time_ms(value)
        if ms is None or not 0 < ms <= MAX_TIMEOUT_MS:
            errors.add(
                f"haproxy:timeouts:{name}",
                f"{_shown(value)} is not a haproxy time (e.g. 5s, 500ms, 1h; at most 24d)",
            )
    return taken


def _check_groups(errors, groups, aliases, taken, nodes):
    # What the groups may not share: the addresses of others, and floating IPs.
    seen = {"aliases": aliases, "nodes": nodes, "floating_ips": {}}
    for key, _name, value in errors.named("groups", groups, "group", required=False):
        group = errors.mapping(key, value, KNOWN["group"], required=True)
        if not group:
            continue
        address = _check_group_address(errors, key, group, seen)
        for bkey, _bname, balancer in errors.named(
            f"{key}:balancers", group.get("balancers"), "balancer"
        ):
            _check_balancer(errors, bkey, balancer, address, taken)


def _check_group_address(errors, key, group, seen):
    """
    The address a group's balancers bind: its floating IP's (``address``,
    or ``floating_ip`` when that is the address), or one of the alias IPs
    (an internal load balancer in a private network, no floating IP).
    """
    aliases, nodes, floating_ips = seen["aliases"], seen["nodes"], seen["floating_ips"]
    floating_ip = group.get("floating_ip")
    if isinstance(floating_ip, int) and not isinstance(floating_ip, bool):
        floating_ip = str(floating_ip)  # an ID
    if floating_ip is not None and errors.text(
        f"{key}:floating_ip", floating_ip, FLOATING_IP_REF, "a floating IP's name, ID or address"
    ):
        if floating_ip in floating_ips:
            errors.add(f"{key}:floating_ip", f"{floating_ip} is also {floating_ips[floating_ip]}'s")
        floating_ips.setdefault(floating_ip, key)
    if "address" not in group and _ip(floating_ip) is not None:
        group = {**group, "address": floating_ip}  # as map.jinja completes it
    if "address" not in group:
        if floating_ip is None:
            errors.add(
                f"{key}:address",
                "missing: give floating_ip, or the address of one of alias_ips",
            )
        else:
            errors.add(
                f"{key}:address",
                f"missing: {floating_ip} is a name; give the floating IP's address here",
            )
        return None
    address = errors.ip(f"{key}:address", group["address"])
    if address is None:
        return None
    if floating_ip is None and address not in aliases:
        errors.add(
            f"{key}:floating_ip",
            f"missing: {address} is not one of alias_ips, so it needs its floating IP",
        )
    elif floating_ip is not None and address in aliases:
        errors.add(
            f"{key}:address", f"{address} is an alias IP ({aliases[address]}), not a floating IP"
        )
    if address in nodes:
        errors.add(f"{key}:address", f"{address} is {nodes[address]}'s VRRP address")
    return address


def _check_balancer(errors, key, balancer, address, taken):
    balancer = errors.mapping(key, balancer, KNOWN["balancer"], required=True)
    if not balancer:
        return
    mode = errors.choice(f"{key}:mode", balancer.get("mode"), MODES)
    algorithm = errors.text(
        f"{key}:algorithm", balancer.get("algorithm"), ALGORITHM, "a haproxy balance algorithm"
    )
    if mode == "tcp" and algorithm and HTTP_ONLY_ALGORITHM.match(algorithm):
        errors.add(f"{key}:algorithm", f"{algorithm} needs mode: http")
    # haproxy names the frontend and backend "<group>-<balancer>".
    _, group, _, name = key.split(":")
    section = ("section", f"{group}-{name}")
    if section in taken:
        errors.add(key, f"its haproxy sections {section[1]} are also {taken[section]}'s")
    taken.setdefault(section, key)
    port = errors.integer(f"{key}:frontend_port", balancer.get("frontend_port"), 1, 65535, "a port")
    if port and address is not None:
        for where in (
            (address, port),
            (ipaddress.ip_address("::" if address.version == 6 else "0.0.0.0"), port),  # noqa: S104
        ):
            if where in taken:
                errors.add(f"{key}:frontend_port", f"{address}:{port} is already {taken[where]}")
                break
        else:
            taken[(address, port)] = f"the frontend of {key.removeprefix('hcloud_lb:')}"
    options = balancer.get("options", [])
    if not isinstance(options, list):
        errors.add(f"{key}:options", "must be a list of haproxy option lines")
    else:
        for option in options:
            known = errors.text(
                f"{key}:options",
                option,
                BACKEND_OPTION,
                "a haproxy backend option this formula knows",
            )
            if known and mode == "tcp" and HTTP_ONLY_OPTION.fullmatch(known):
                errors.add(f"{key}:options", f"{known} needs mode: http")
    check_backends = balancer.get("check_backends", False)
    errors.boolean(f"{key}:check_backends", check_backends)
    servers = list(
        errors.named(f"{key}:backend_servers", balancer.get("backend_servers"), "server")
    )
    checked = [_check_server(errors, skey, server) for skey, _sname, server in servers]
    if check_backends is True and servers and not any(checked):
        errors.add(
            f"{key}:check_backends",
            "needs 'check' in a backend server's options: haproxy counts unchecked servers as up",
        )


def _check_server(errors, key, server):
    """A backend server; returns whether haproxy health-checks it."""
    server = errors.mapping(key, server, KNOWN["server"], required=True)
    if not server:
        return False
    host = server.get("host")
    if host is None or host == "":
        errors.add(f"{key}:host", "missing: the backend server's address or host name")
    elif _ip(host) is None and not _text(host, HOSTNAME):
        errors.add(f"{key}:host", f"{_shown(host)} is neither an IP address nor a host name")
    errors.integer(f"{key}:port", server.get("port"), 1, 65535, "a port")
    options = server.get("options", "")
    if not isinstance(options, str):
        errors.add(f"{key}:options", "must be a string of haproxy server options")
        return False
    return _check_server_options(errors, f"{key}:options", options)


def _check_server_options(errors, key, options):
    """haproxy server keywords this formula knows, each with a value of its kind."""
    words = options.split(" ")
    if options and (options != options.strip() or "" in words):
        errors.add(key, f"{_shown(options)}: separate the keywords by single spaces")
        return False
    kinds = {
        "time": lambda v: (ms := _haproxy_time_ms(v)) is not None and 0 < ms <= MAX_TIMEOUT_MS,
        "count": lambda v: _integer(v, 1, 1_000_000) is not None,
        "weight": lambda v: _integer(v, 0, 256) is not None,
        "port": lambda v: _integer(v, 1, 65535) is not None,
        "verify": lambda v: v == "none",
        "marked-down": lambda v: v == "shutdown-sessions",
    }
    index = 0
    while options and index < len(words):
        word = words[index]
        if word in SERVER_FLAGS:
            index += 1
            continue
        kind = SERVER_KEYWORDS.get(word)
        value = words[index + 1] if index + 1 < len(words) else None
        if kind is None:
            errors.add(key, f"{_shown(word)} is not a server keyword this formula knows")
            return False
        if value is None or not kinds[kind](value):
            errors.add(key, f"{word} needs a {kind} value, got {_shown(value)}")
            return False
        index += 2
    return "check" in words


def _check_hook(errors, hook):
    hook = errors.mapping("hook", hook, KNOWN["hook"], required=True)
    for key in ("deadline", "reassert_interval"):
        errors.number(
            f"hook:{key}", hook.get(key), 0, 3600, "a positive number of seconds (at most 3600)"
        )
    errors.integer("hook:reserve", hook.get("reserve"), 0, 3600, "a number of requests")


def _executable_on_the_node(path):
    """
    Whether the node can execute ``path``: ``test -x`` run by ``cmd.retcode``,
    on the node (under salt-ssh, on the target, with only the path as argument).
    """
    retcode = __salt__["cmd.retcode"](["test", "-x", path], python_shell=False, ignore_retcode=True)
    return retcode == 0


def _interface_on_the_node(name):
    """Whether the node has the network interface: its entry in /sys, asked as above."""
    retcode = __salt__["cmd.retcode"](
        ["test", "-e", f"/sys/class/net/{name}"], python_shell=False, ignore_retcode=True
    )
    return retcode == 0


def _uid_on_the_node(user):
    """The user's uid on the node (``getent passwd``, asked as the path above), else None."""
    entry = __salt__["cmd.run_stdout"](
        ["getent", "passwd", user], python_shell=False, ignore_retcode=True
    )
    fields = entry.strip().split(":")
    return int(fields[2]) if len(fields) >= 7 and fields[2].isdigit() else None


def node(settings=None):
    """
    This minion's keepalived values: priority, address, the other nodes'
    addresses as unicast peers, the initial state (MASTER for the highest
    priority when preempting without a delay, else BACKUP: keepalived refuses
    ``preempt_delay`` on a MASTER), the check's weight on this node, and
    ``outranked_by``: the minion ids of the other nodes that would win a
    VRRP election against this one, which the failover hook's re-assert
    leaves the addresses to.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_lb.node
    """
    settings = _settings(settings)
    nodes = settings["nodes"]
    me = nodes[__grains__["id"]]
    priority = int(me["priority"])
    vrrp = settings["vrrp"]
    preempt = vrrp["preempt"] and not int(vrrp.get("preempt_delay") or 0)
    highest = max(int(other["priority"]) for other in nodes.values())
    others = {name: other for name, other in nodes.items() if name != __grains__["id"]}
    return {
        "id": __grains__["id"],
        "priority": priority,
        "address": str(me["address"]),
        "peers": [str(other["address"]) for other in others.values()],
        "state": "MASTER" if preempt and priority == highest else "BACKUP",
        "check_weight": int(me.get("check_weight", vrrp.get("check", {}).get("weight", 0))),
        "outranked_by": [
            name for name, other in others.items() if _vrrp_rank(other) > _vrrp_rank(me)
        ],
    }


def _vrrp_rank(node_values):
    """
    Who wins a VRRP election: the higher priority, then (RFC 5798) the higher
    primary address. The address as a number orders like ipaddress within a
    family and cannot fail on a pillar mixing families.
    """
    return int(node_values["priority"]), int(_ip(str(node_values["address"])))


def script_security_problems(path):
    """
    What keepalived's enable_script_security would object to in a script:
    the file and every directory above it must be owned by root and not
    writable by group or others (keepalived -t does not check this).

    Each path is looked at with ``file.stats``, so under salt-ssh the wrapper
    looks at the target's files, not the master's.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_lb.script_security_problems /etc/keepalived/scripts/notify
    """
    if not posixpath.isabs(str(path)):
        return [f"{path} is not an absolute path"]
    problems = []
    current = posixpath.normpath(str(path))
    while True:
        try:
            info = __salt__["file.stats"](current)
        except CommandExecutionError:
            return [*problems, f"{current} does not exist"]
        if int(info["uid"]) != 0:
            problems.append(f"{current} is not owned by root")
        if int(str(info["mode"]), 8) & (stat.S_IWGRP | stat.S_IWOTH):
            problems.append(f"{current} is writable by group or others")
        parent = posixpath.dirname(current)
        if parent == current:
            return problems
        current = parent


def is_ip(value):
    """
    Whether the value is an IP address as validation reads one (no padding,
    no scope id): map.jinja lets a group's ``floating_ip`` be its address.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_lb.is_ip 203.0.113.10
    """
    return _ip(value) is not None
