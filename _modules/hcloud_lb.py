"""
Checks and derived values for the hcloud_lb formula.

The formula's states call these while rendering, so a bad pillar is refused
with a message naming the key before anything on the host changes, and the
per-node keepalived values come from one place.

.. code-block:: bash

    salt-call hcloud_lb.validate
    salt-call hcloud_lb.node

This file is also the formula's salt-ssh wrapper module (``_wrapper/hcloud_lb.py``
is a link to it). salt-ssh renders SLS files on the master, and runs a function
there when a wrapper module has it, with the target's grains and the pillar
compiled for it; any other function runs on the target by ``salt-call --local``,
its arguments on the ssh command line and without the pillar. So, as a wrapper,
``validate`` and ``node`` read the pillar and the settings never leave the
master. Everything here must therefore hold in both places: what concerns the
node's files is asked of ``__salt__`` (``cmd.retcode``, ``file.stats``), which
is the node itself in the execution module and the target, over ssh with only
a path as argument, in the wrapper; never of this process's filesystem.
"""

import ipaddress
import posixpath
import re
import stat

from salt.exceptions import CommandExecutionError

__virtualname__ = "hcloud_lb"

MODES = ("tcp", "http")
# haproxy's "balance" algorithms; hdr(), url_param, rdp-cookie() take an argument.
ALGORITHMS = (
    "roundrobin",
    "static-rr",
    "leastconn",
    "first",
    "source",
    "uri",
    "url_param",
    "hdr",
    "random",
    "rdp-cookie",
    "hash",
)
PROFILES = ("default", "fast")
BINDINGS = ("interface", "nonlocal")
VRRP_PASSWORD_MAX = 8  # VRRP "PASS" authentication carries at most 8 characters
# Names become haproxy section names and keepalived identifiers.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Paths written into the hook's shell scripts and its minion config: absolute,
# and nothing a shell would split or expand.
SAFE_PATH = re.compile(r"^/[A-Za-z0-9_.+/-]*$")
HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


def __virtual__():
    return __virtualname__


def _settings(settings):
    if settings is not None:
        return settings
    return __salt__["pillar.get"]("hcloud_lb", {})


class _Errors(list):
    def add(self, key, problem):
        self.append(f"hcloud_lb:{key}: {problem}")


def _int_in(value, low, high):
    """The value as an int if it is one (or an int-like string) within [low, high], else None."""
    if isinstance(value, bool):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        return None
    return number if low <= number <= high else None


def _positive_number(value):
    if isinstance(value, bool):
        return False
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def _ip(value):
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        return None


def _mapping(errors, key, value, required=False):
    """The value as a dict; an error if it is not one (or is empty when required)."""
    if value is None or value == {}:
        if required:
            errors.add(key, "must not be empty")
        return {}
    if not isinstance(value, dict):
        errors.add(key, f"must be a mapping keyed by name, got {type(value).__name__}")
        return {}
    return value


def _host_port(value):
    host, _, port = str(value).rpartition(":")
    return _ip(host.strip("[]")) is not None and _int_in(port, 1, 65535) is not None


def validate(settings=None):
    """
    Check the hcloud_lb pillar (as merged by map.jinja) for this minion.

    Returns a list of problems, each naming the pillar key; empty when the
    pillar can be applied.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_lb.validate
    """
    settings = _settings(settings)
    errors = _Errors()
    if not __salt__["config.get"]("hcloud:token"):
        errors.append(
            "hcloud:token: not set; the failover hook needs a read/write API token "
            "(with salt-ssh, also sync this formula's wrapper: salt-run saltutil.sync_wrapper)"
        )
    _check_general(errors, settings)
    _check_vrrp(errors, settings.get("vrrp") or {})
    _check_nodes(errors, settings)
    frontends = {}
    groups = _mapping(errors, "groups", settings.get("groups"), required=True)
    for name, group in groups.items():
        _check_group(errors, f"groups:{name}", group, frontends)
    _check_alias_ips(errors, settings.get("alias_ips"))
    _check_haproxy(errors, settings.get("haproxy") or {})
    _check_hook(errors, settings)
    return list(errors)


def _check_general(errors, settings):
    if not SAFE_NAME.match(str(settings.get("name", ""))):
        errors.add("name", "must be letters, digits, '.', '_' or '-'")
    if _int_in(settings.get("max_connections"), 1, 10_000_000) is None:
        errors.add(
            "max_connections", f"{settings.get('max_connections')!r} is not a positive number"
        )
    if settings.get("floating_ip_binding") not in BINDINGS:
        errors.add(
            "floating_ip_binding",
            f"{settings.get('floating_ip_binding')!r} is not one of {', '.join(BINDINGS)}",
        )
    if not settings.get("public_interface"):
        errors.add("public_interface", "must name the interface the floating IPs arrive on")


def _check_vrrp(errors, vrrp):
    if not vrrp.get("interface"):
        errors.add("vrrp:interface", "must name the interface VRRP adverts go out on")
    if _int_in(vrrp.get("virtual_router_id"), 1, 255) is None:
        errors.add(
            "vrrp:virtual_router_id", f"{vrrp.get('virtual_router_id')!r} is not within 1-255"
        )
    password = vrrp.get("password")
    if not password:
        errors.add("vrrp:password", "not set; both nodes need the same VRRP password")
    elif len(str(password)) > VRRP_PASSWORD_MAX:
        errors.add(
            "vrrp:password",
            f"longer than {VRRP_PASSWORD_MAX} characters (VRRP PASS authentication "
            "uses only the first 8, so the nodes would not agree)",
        )
    if vrrp.get("profile") not in PROFILES:
        errors.add("vrrp:profile", f"{vrrp.get('profile')!r} is not one of {', '.join(PROFILES)}")
    if not isinstance(vrrp.get("preempt"), bool):
        errors.add("vrrp:preempt", "must be true or false")
    if _int_in(vrrp.get("preempt_delay", 0), 0, 1000) is None:
        errors.add("vrrp:preempt_delay", "must be 0-1000 seconds")
    _check_health_check(errors, vrrp.get("check") or {}, vrrp.get("preempt"))


def _check_health_check(errors, check, preempt):
    # keepalived runs scripts in whole seconds; the probes within a run may be finer.
    interval = _int_in(check.get("interval"), 1, 3600)
    if interval is None:
        errors.add("vrrp:check:interval", f"{check.get('interval')!r} is not whole seconds 1-3600")
    for key in ("probe_interval", "timeout"):
        if not _positive_number(check.get(key)):
            errors.add(f"vrrp:check:{key}", f"{check.get(key)!r} is not a positive number")
    probe_interval = check.get("probe_interval")
    if interval and _positive_number(probe_interval) and float(probe_interval) > interval:
        errors.add("vrrp:check:probe_interval", f"must not exceed interval ({interval} s)")
    for key in ("fall", "rise"):
        if _int_in(check.get(key), 1, 100) is None:
            errors.add(f"vrrp:check:{key}", f"{check.get(key)!r} is not within 1-100")
    weight = _int_in(check.get("weight"), -253, 253)
    if weight is None:
        errors.add("vrrp:check:weight", f"{check.get('weight')!r} is not within -253..253")
    elif weight != 0 and preempt is False:
        errors.add(
            "vrrp:check:weight",
            f"{weight} only changes the priority, and with preempt: false (nopreempt) "
            "the other node never takes over from a master whose check fails; use weight 0",
        )


def _check_nodes(errors, settings):
    nodes = _mapping(errors, "nodes", settings.get("nodes"), required=True)
    minion = __grains__["id"]
    if nodes and minion not in nodes:
        errors.add("nodes", f"has no entry for this minion ({minion})")
    if nodes and len(nodes) < 2:
        errors.add("nodes", "needs at least two nodes to fail over between")
    seen = {}
    for name, entry in nodes.items():
        node = _mapping(errors, f"nodes:{name}", entry, required=True)
        if not node:
            continue
        if _int_in(node.get("priority"), 1, 254) is None:
            errors.add(f"nodes:{name}:priority", f"{node.get('priority')!r} is not within 1-254")
        address = _ip(node.get("address"))
        if address is None:
            errors.add(f"nodes:{name}:address", f"{node.get('address')!r} is not an IP address")
        elif address in seen:
            errors.add(f"nodes:{name}:address", f"{address} is also nodes:{seen[address]}'s")
        else:
            seen[address] = name


def _name(key):
    return key.rsplit(":", 1)[-1]


def _check_group(errors, key, group, frontends):
    group = _mapping(errors, key, group, required=True)
    if not group:
        return
    if not SAFE_NAME.match(_name(key)):
        errors.add(key, "group names must be letters, digits, '.', '_' or '-'")
    if not group.get("floating_ip"):
        errors.add(f"{key}:floating_ip", "must name the floating IP (name, ID or address)")
    address = group.get("address", group.get("floating_ip"))
    if _ip(address) is None:
        errors.add(
            f"{key}:address",
            f"{address!r} is not an IP address (give the floating IP's address here "
            "when floating_ip is its name)",
        )
    balancers = _mapping(errors, f"{key}:balancers", group.get("balancers"), required=True)
    for balancer_name, balancer in balancers.items():
        _check_balancer(errors, f"{key}:balancers:{balancer_name}", balancer, address, frontends)


def _check_balancer(errors, key, balancer, address, frontends):
    balancer = _mapping(errors, key, balancer, required=True)
    if not balancer:
        return
    if not SAFE_NAME.match(_name(key)):
        errors.add(key, "balancer names must be letters, digits, '.', '_' or '-'")
    if balancer.get("mode") not in MODES:
        errors.add(f"{key}:mode", f"{balancer.get('mode')!r} is not one of {', '.join(MODES)}")
    algorithm = str(balancer.get("algorithm", ""))
    if re.split(r"[\s(]", algorithm, maxsplit=1)[0] not in ALGORITHMS:
        errors.add(f"{key}:algorithm", f"{algorithm!r} is not a haproxy balance algorithm")
    port = _int_in(balancer.get("frontend_port"), 1, 65535)
    if port is None:
        errors.add(
            f"{key}:frontend_port", f"{balancer.get('frontend_port')!r} is not a port (1-65535)"
        )
    elif _ip(address) is not None:
        where = (str(_ip(address)), port)
        if where in frontends:
            errors.add(
                f"{key}:frontend_port",
                f"{where[0]}:{port} is already the frontend of {frontends[where]}",
            )
        frontends.setdefault(where, key)
    options = balancer.get("options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        errors.add(f"{key}:options", "must be a list of haproxy option names")
    servers = _mapping(
        errors, f"{key}:backend_servers", balancer.get("backend_servers"), required=True
    )
    for server_name, server in servers.items():
        _check_server(errors, f"{key}:backend_servers:{server_name}", server)


def _check_server(errors, key, server):
    server = _mapping(errors, key, server, required=True)
    if not server:
        return
    if not SAFE_NAME.match(_name(key)):
        errors.add(key, "server names must be letters, digits, '.', '_' or '-'")
    host = server.get("host")
    if not host:
        errors.add(f"{key}:host", "missing: the backend server's address or host name")
    elif _ip(host) is None and not HOSTNAME.match(str(host)):
        errors.add(f"{key}:host", f"{host!r} is neither an IP address nor a host name")
    if _int_in(server.get("port"), 1, 65535) is None:
        errors.add(f"{key}:port", f"{server.get('port')!r} is not a port (1-65535)")
    if not isinstance(server.get("options", ""), str):
        errors.add(f"{key}:options", "must be a string of haproxy server options")


def _check_alias_ips(errors, alias_ips):
    for network, value in _mapping(errors, "alias_ips", alias_ips).items():
        entry = _mapping(errors, f"alias_ips:{network}", value, required=True)
        if entry and not entry.get("interface"):
            errors.add(f"alias_ips:{network}:interface", "must name the private interface")
        ips = entry.get("ips")
        if entry and (not isinstance(ips, list) or not ips):
            errors.add(f"alias_ips:{network}:ips", "must list at least one IP")
            continue
        for ip in ips or []:
            if _ip(ip) is None:
                errors.add(f"alias_ips:{network}:ips", f"{ip!r} is not an IP address")


def _check_haproxy(errors, haproxy):
    if not _host_port(haproxy.get("monitor", "")):
        errors.add("haproxy:monitor", f"{haproxy.get('monitor')!r} is not ADDRESS:PORT")
    prometheus = haproxy.get("prometheus") or {}
    if prometheus.get("enabled") and not _host_port(prometheus.get("bind", "")):
        errors.add("haproxy:prometheus:bind", f"{prometheus.get('bind')!r} is not ADDRESS:PORT")


def _check_hook(errors, settings):
    hook = settings.get("hook") or {}
    for key in ("deadline", "reassert_interval"):
        if not _positive_number(hook.get(key)):
            errors.add(f"hook:{key}", f"{hook.get(key)!r} is not a positive number of seconds")
    lookup = settings.get("lookup") or {}
    for key in ("run_dir", "hook_config_dir", "hook_cache_dir"):
        if key in lookup and not SAFE_PATH.match(str(lookup[key])):
            errors.add(
                f"lookup:{key}",
                f"{lookup[key]!r} is not an absolute path of letters, digits and _.+-/",
            )
    salt_call = lookup.get("salt_call")
    if salt_call and not _executable_on_the_node(str(salt_call)):
        errors.add(
            "lookup:salt_call",
            f"{salt_call} is not an executable salt-call; the failover hook needs Salt "
            "on the node (install it, or point this at its salt-call)",
        )


def _executable_on_the_node(path):
    """
    Whether the node can execute ``path``: ``test -x`` run by ``cmd.retcode``,
    on the node (under salt-ssh, on the target, with only the path as argument).
    """
    retcode = __salt__["cmd.retcode"](["test", "-x", path], python_shell=False, ignore_retcode=True)
    return retcode == 0


def node(settings=None):
    """
    This minion's keepalived values: priority, address, the other nodes'
    addresses as unicast peers, the initial state (MASTER for the highest
    priority when preempting, else BACKUP), and ``outranked_by``: the minion
    ids of the other nodes that would win a VRRP election against this one,
    which the failover hook's re-assert leaves the addresses to.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_lb.node
    """
    settings = _settings(settings)
    nodes = settings["nodes"]
    me = nodes[__grains__["id"]]
    priority = int(me["priority"])
    preempt = settings["vrrp"]["preempt"]
    highest = max(int(other["priority"]) for other in nodes.values())
    others = {name: other for name, other in nodes.items() if name != __grains__["id"]}
    return {
        "id": __grains__["id"],
        "priority": priority,
        "address": str(me["address"]),
        "peers": [str(other["address"]) for other in others.values()],
        "state": "MASTER" if preempt and priority == highest else "BACKUP",
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
    return int(node_values["priority"]), int(_ip(node_values["address"]))


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
