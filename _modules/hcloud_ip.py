"""
Move Hetzner Cloud floating IPs and private-network alias IPs between servers.

This is what the ``hcloud_lb`` formula's agent (``hcloud_ip.agent``, on
keepalived's notify FIFO) and its ``notify_master`` hook (``salt-call --local
hcloud_ip.failover``) run to bring the load balancer's addresses to the node
that just became master, and what the formula's ``hcloud_ip`` states build
on. A failover reads this node's server and its peers by ID, never the whole
project, so what it costs does not grow with the project.

Every API call goes through the official ``hcloud`` Python library. The
functions here check their arguments and hand over to the failover engine,
the ``hcloud_failover`` utils module (``_utils/hcloud_failover.py``), which
must be synced beside this module (a highstate or ``saltutil.sync_all`` does).

:depends: hcloud (hcloud-python) >= 2.0

Options, read with ``config.get`` (minion config, grains or pillar):

.. code-block:: yaml

    hcloud:
      token: <API token>                      # required, read/write scope
      api_endpoint: https://api.hetzner.cloud/v1
      metadata_endpoint: http://169.254.169.254/hetzner/v1/metadata
      server: lb-master                       # optional name or ID of this node's server
      request_timeout: 5                      # seconds, every API request
      failover:                               # what hcloud_ip.failover moves here
        deadline: 30                          # seconds for the whole failover
        floating_ips: [lb-http, 2001:db8:1::1]
        alias_ips:
          lb-private: [10.0.1.1]
        peers: [lb-backup]                    # the other nodes: who may hold an alias IP
        yield_to: []                          # peers outranking this node (split brain)
        id_cache: /var/cache/hcloud_lb/ids.json  # IDs of all these (hcloud_ip.resolve)
        state_file: /run/hcloud_lb/state      # VRRP state (the agent records it)
        lock_file: /run/hcloud_lb/failover.lock  # the agent and notify_master take turns
        reassert_interval: 15                 # the agent's checks while MASTER
        reserve: 300                          # requests the checks leave to failovers

A floating IP is named by its name, its ID or its address (for an IPv6
floating IP any address in its /64). A server or network by its name or ID.
"""

import functools
import inspect

from salt.exceptions import CommandExecutionError

try:
    import hcloud  # noqa: F401 (only whether it imports: the engine uses it)

    HAS_HCLOUD = True
except ImportError:
    HAS_HCLOUD = False

__virtualname__ = "hcloud_ip"
__func_alias__ = {"list_": "list"}

ENGINE = "hcloud_failover"


def __virtual__():
    if not HAS_HCLOUD:
        return (
            False,
            "the hcloud Python library is not installed in the Python that runs Salt "
            "(salt-pip install hcloud on onedir installs)",
        )
    if f"{ENGINE}.failover" not in __utils__:
        return (
            False,
            f"the {ENGINE} utils module is not loaded: sync it with the formula's _utils "
            "(saltutil.sync_utils); salt-ssh before 3007 does not ship _utils, so there run "
            "hcloud_ip through the failover hook (salt-call -c /etc/hcloud_lb/salt --local)",
        )
    return __virtualname__


def _engine(name):
    """The engine's function ``name``, bound to this module's loader (options, __context__)."""
    run = __utils__[f"{ENGINE}.{name}"]
    caller = __utils__[f"{ENGINE}.loader"](__salt__, __opts__, __context__)
    return functools.partial(run, caller)


# salt-call answers a TypeError (SaltInvocationError is one) with "Passed
# invalid arguments" and the function's whole docstring. A wrong argument is
# an expected failure like a wrong token: one CommandExecutionError line
# ("Error running 'hcloud_ip.assign': deadline must be ..."), which states
# show as their comment. The engine checks each argument's value.
def _arguments_checked(func):
    """Report a missing or surplus argument of a public function in one line."""
    signature = inspect.signature(func)
    name = f"{__virtualname__}.{__func_alias__.get(func.__name__, func.__name__)}"

    @functools.wraps(func)  # Salt reads the argument list through __wrapped__
    def checked(*args, **kwargs):
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise CommandExecutionError(
                f"{exc} (salt-call sys.doc {name} lists the arguments)"
            ) from None
        return func(*args, **kwargs)

    return checked


@_arguments_checked
def whoami():
    """
    Tell which Hetzner Cloud server this node is, and how that was found:
    hcloud:server, else the metadata service's instance-id, else the server
    named like the minion id.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_ip.whoami
    """
    return _engine("whoami")()


@_arguments_checked
def server_info(server=None):
    """
    Describe a server by name or ID (default: this node's): ID, name, public
    IPv4, and per attached network ID its IP and alias IPs.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_ip.server_info lb-backup
    """
    return _engine("server_info")(server=server)


@_arguments_checked
def resolve():
    """
    Look up and cache the IDs of what the failover names: this node's
    server, its peers (hcloud:failover:peers), the floating IPs and networks
    of hcloud:failover, in the file hcloud:failover:id_cache. A failover then
    reads nothing to know what to move, and its first read is this node's
    server. Every entry already cached is checked against the API first (one
    request each, by ID), and one that is gone or renamed is looked up
    again. The formula runs this after writing the hook's config.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_ip.resolve
    """
    return _engine("resolve")()


@_arguments_checked
def list_():
    """
    List the project's floating IPs with their current server.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_ip.list
    """
    return _engine("list_")()


@_arguments_checked
def describe(ip):
    """
    Describe one floating IP, named by its name, ID or address.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_ip.describe lb-http
        salt-call hcloud_ip.describe 2001:db8:1::1
    """
    return _engine("describe")(ip=ip)


@_arguments_checked
def network_aliases(network):
    """
    Show the alias IPs of every server attached to a private network.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_ip.network_aliases lb-private
    """
    return _engine("network_aliases")(network=network)


@_arguments_checked
def create(name, type="ipv4", home_location=None, description=None, labels=None):
    """
    Create a floating IP, like ``hcloud floating-ip create``.

    name
        Name of the new floating IP (unique in the project).
    type
        ``ipv4`` or ``ipv6`` (a /64).
    home_location
        Location it is routed from best (e.g. nbg1, fsn1, hel1); required.
    description, labels
        Optional free text and a mapping of labels.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_ip.create lb-http home_location=nbg1 labels='{lb: main}'
    """
    return _engine("create")(
        name=name, type=type, home_location=home_location, description=description, labels=labels
    )


@_arguments_checked
def update(ip, description=None, labels=None):
    """
    Change a floating IP's description and/or labels (labels are replaced).

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_ip.update lb-http description="public web"
    """
    return _engine("update")(ip=ip, description=description, labels=labels)


@_arguments_checked
def assign(ip, server=None, deadline=None):
    """
    Assign a floating IP to a server (default: this node's), wait for the
    action and verify it by reading the floating IP back.

    ip
        Name, ID or address of the floating IP.
    server
        Name or ID of the server; this node's server when omitted.
    deadline
        Seconds to keep retrying (default hcloud:failover:deadline, else 30).

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_ip.assign lb-http
        salt-call hcloud_ip.assign 198.51.100.7 server=lb-backup
    """
    return _engine("assign")(ip=ip, server=server, deadline=deadline)


@_arguments_checked
def unassign(ip, deadline=None):
    """
    Unassign a floating IP from whatever server holds it, and verify.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_ip.unassign lb-http
    """
    return _engine("unassign")(ip=ip, deadline=deadline)


@_arguments_checked
def alias_ips(network, ips=None, server=None, deadline=None):
    """
    Read or add alias IPs of a server (default: this node's) in a private network.

    Without ``ips`` this returns the server's alias IPs in the network. With
    ``ips`` (a list, or comma-separated) it first takes them away from any
    other server of the network that holds them, then adds them to the
    server's aliases, keeping its other aliases, and verifies the result.

    CLI Example:

    .. code-block:: bash

        salt-call hcloud_ip.alias_ips lb-private
        salt-call hcloud_ip.alias_ips lb-private ips=10.0.1.1,10.0.1.5 server=lb-backup
    """
    return _engine("alias_ips")(network=network, ips=ips, server=server, deadline=deadline)


@_arguments_checked
def failover(floating_ips=None, alias_ips=None, deadline=None, reassert=False, since=None):
    """
    Bring every floating IP and alias IP configured for this node to this
    node's server, all at once: what keepalived's notify_master hook runs.

    What to move comes from ``hcloud:failover:floating_ips`` (a list) and
    ``hcloud:failover:alias_ips`` (network -> list of IPs), which can live in
    the minion config so no master is needed, or from the arguments.
    Addresses already here are skipped. The moves are requested in parallel,
    their actions awaited, and the result verified by reading the API again;
    a move of these addresses that another node still has under way is
    waited out, and what it took is taken back. Locked resources, rate
    limits, 5xx, timeouts and dropped connections are retried with jittered
    backoff until ``deadline`` seconds (hcloud:failover:deadline, default 30).

    reassert
        True for a re-assert (the agent's, once its claim has succeeded),
        while this node is MASTER rather than on a transition to it: an address held by a
        server in ``hcloud:failover:yield_to`` (names or IDs of the peers that
        would win a VRRP election against this node) is then left there and
        reported so, with result True, and so is every address not here while
        such a peer holds one. In a split brain both nodes are MASTER and
        re-assert, and would otherwise take the addresses from each other for
        ever; this way the highest-ranked node keeps them. Without it (the
        notify_master path) everything is claimed, wherever it is; once such a
        peer takes back an address this run moved, that peer is MASTER too
        (the split brain seen from below), and every address not here is left
        to it (``hcloud_failover._OutrankingPeers``).

    When ``hcloud:failover:state_file`` names the file where the agent
    records this node's VRRP state (the formula's hook does), the failover
    stops before its next round once that file says anything but MASTER, and
    reports ``stood_down`` with that state, result True: a node that lost
    mastership mid-failover (it woke from a freeze and went FAULT, or the
    preferred node came back) leaves the addresses to the new master instead
    of pulling them back until its deadline.

    since
        When keepalived ran notify_master (a UNIX time, as the formula's hook
        passes it): only a state recorded after it stops the failover, not
        one from before the transition or from an agent that is gone. When
        the agent's claim succeeded after it (it records that beside the
        state file), this run checks as a re-assert (``reassert``): claiming
        everything again would start a tug of war in a split brain.

    With ``hcloud:failover:lock_file`` the failover takes turns with the
    agent: it waits for the agent's moves as long as the agent shows signs of
    life (it touches the lock file at every API answer), at most half its
    deadline without one (a hung agent must not hold the addresses hostage),
    and then finds them done.

    Returns each address's outcome; salt-call's retcode is 1 (shown with
    ``--retcode-passthrough``) unless everything ended on this server, was
    left to an outranking peer, or the node stood down. An event tagged
    ``hcloud_lb/failover`` goes to the master through the local salt-minion
    when one runs, without waiting for it.

    CLI Example:

    .. code-block:: bash

        salt-call --local --retcode-passthrough hcloud_ip.failover
        salt-call --local hcloud_ip.failover reassert=True
        salt-call --local hcloud_ip.failover since=1767225600.5
        salt-call hcloud_ip.failover floating_ips=lb-http,lb-ws
    """
    return _engine("failover")(
        floating_ips=floating_ips,
        alias_ips=alias_ips,
        deadline=deadline,
        reassert=reassert,
        since=since,
    )


@_arguments_checked
def agent(fifo, instance, interval=None, reserve=None):
    """
    Keep this node's addresses where keepalived says: keepalived's
    ``vrrp_notify_fifo_script`` runs this (through the formula's agent
    script, which restarts it should it die), with the FIFO where keepalived
    writes each VRRP transition, in order.

    On MASTER it fails over at once, from a process already running (its
    client connected, the IDs known); on BACKUP, FAULT or STOP a failover
    under way stops before its next round. While MASTER it re-asserts every
    ``interval`` seconds (hcloud:failover:reassert_interval, default 15),
    one request when everything is in place, paced by the project's budget:
    it never spends the bucket below ``reserve`` requests
    (hcloud:failover:reserve, default 300) except for one check a minute. It
    records each state in hcloud:failover:state_file, takes
    hcloud:failover:lock_file while it moves addresses (notify_master's
    salt-call waits for it), and ends when keepalived closes the FIFO
    (keepalived reloading or stopping) or a second after SIGTERM.

    CLI Example:

    .. code-block:: bash

        salt-call --local hcloud_ip.agent /run/hcloud_lb/vrrp.fifo lb
    """
    return _engine("agent")(fifo=fifo, instance=instance, interval=interval, reserve=reserve)
