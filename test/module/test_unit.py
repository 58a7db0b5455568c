"""
Unit tests of hcloud_ip's decisions with Salt's loader mocks: no API, no
network. The behaviour users meet is tested through salt-call in
test_salt_call.py; these pin down the rules that are hard to provoke there.
"""

import socket
import time
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
import requests
from hcloud import APIException
from hcloud.floating_ips import FloatingIP
from hcloud.networks import Network
from hcloud.servers import PrivateNet, Server
from salt.exceptions import CommandExecutionError

from _modules import hcloud_ip
from _states import hcloud_ip as hcloud_ip_state
from _utils import hcloud_failover as engine
from helpers import engine_functions


def config_getter(options):
    def get(key, default=None):
        node = {"hcloud": options}
        for part in key.split(":"):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    return get


@pytest.fixture
def options():
    return {"token": "secret-token", "api_endpoint": "http://127.0.0.1:9/v1"}


@pytest.fixture
def state_salt():
    """The execution module as the state module sees it, mocked."""
    return {
        "hcloud_ip.list": MagicMock(),
        "hcloud_ip.create": MagicMock(),
        "hcloud_ip.update": MagicMock(),
        "hcloud_ip.server_info": MagicMock(return_value={"id": 1, "name": "lb-master"}),
        "hcloud_ip.describe": MagicMock(),
        "hcloud_ip.assign": MagicMock(),
    }


@pytest.fixture
def configure_loader_modules(options, state_salt):
    return {
        hcloud_ip: {
            "__salt__": {"config.get": config_getter(options)},
            "__opts__": {"id": "lb-master", "test": False},
            "__context__": {},
            "__utils__": engine_functions(),
        },
        hcloud_ip_state: {"__salt__": state_salt, "__opts__": {"test": False}},
    }


@pytest.fixture(autouse=True)
def engine_bound(configure_loader_modules):
    """The engine's private functions run bound to hcloud_ip's loader, as its calls bind them."""
    token = engine._LOADER.set(
        engine.loader(hcloud_ip.__salt__, hcloud_ip.__opts__, hcloud_ip.__context__)
    )
    yield
    engine._LOADER.reset(token)


def fip(fip_id, name, ip, server_id=None):
    return SimpleNamespace(
        id=fip_id, name=name, ip=ip, server=SimpleNamespace(id=server_id) if server_id else None
    )


FIPS = [
    fip(1, "lb-http", "198.51.100.7"),
    fip(2, "lb-v6", "2001:db8:1:2::/64"),
    fip(3, "12345", "198.51.100.8"),
]


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("lb-http", 1),
        ("1", 1),
        ("198.51.100.7", 1),
        ("2001:db8:1:2::/64", 2),
        ("2001:db8:1:2::1", 2),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", 2),
        ("12345", 3),  # a name that looks like an ID still finds its IP
    ],
)
def test_a_floating_ip_is_found_by_name_id_or_any_address_it_covers(ref, expected):
    assert engine._find_floating_ip(FIPS, ref).id == expected


@pytest.mark.parametrize("ref", ["2001:db8:1:3::1", "198.51.100.9", "lb-gone", "not an ip"])
def test_an_address_outside_every_floating_ip_is_not_found(ref):
    with pytest.raises(CommandExecutionError, match="not found"):
        engine._find_floating_ip(FIPS, ref)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (APIException("locked", "locked", None), True),
        (APIException("conflict", "conflict", None), True),
        (APIException("rate_limit_exceeded", "slow down", None), True),
        (APIException(503, "Service Unavailable", None), True),
        (APIException(502, "Bad Gateway", None), True),
        (requests.exceptions.ConnectionError(), True),
        (requests.exceptions.ReadTimeout(), True),
        (engine._ActionFailed("action 3 failed"), True),
        (APIException("unauthorized", "unable to authenticate", None), False),
        (APIException("forbidden", "read-only token", None), False),
        (APIException("not_found", "not found", None), False),
        (APIException("invalid_input", "bad", None), False),
        (APIException(404, "Not Found", None), False),
    ],
)
def test_only_errors_that_can_heal_are_retried(exc, transient):
    assert engine._is_transient(exc) is transient


@pytest.mark.parametrize(
    "exc",
    [APIException("rate_limit_exceeded", "slow down", None), APIException(429, "Too Many", None)],
)
def test_a_re_assert_leaves_a_spent_rate_limit_to_the_failovers(exc):
    periodic = engine._PERIODIC.set(True)
    try:
        assert engine._is_transient(exc) is False
        assert engine._is_transient(APIException("locked", "locked", None)) is True
    finally:
        engine._PERIODIC.reset(periodic)
    assert engine._is_transient(exc) is True


def test_a_spent_rate_limit_delays_retries_for_ever_more_refilled_requests(monkeypatch):
    slept = []
    monkeypatch.setattr(engine.time, "sleep", slept.append)
    monkeypatch.setattr(engine.time, "time", lambda: 1000.0)
    # 3600 an hour, none left, full again in an hour: one request per second.
    monkeypatch.setattr(engine._RateLimit, "last", (3600, 0, 1000 + 3600))
    for attempt in range(3):
        engine._backoff(attempt, engine._Clock(30))
    assert slept == pytest.approx([1.0, 2.0, 3.0], abs=0.01)


def test_backoff_never_sleeps_past_the_deadline(monkeypatch):
    slept = []
    monkeypatch.setattr(engine.time, "sleep", slept.append)
    monkeypatch.setattr(engine._RateLimit, "last", (3600, 0, 10**12))
    engine._backoff(10, engine._Clock(0.5))
    assert slept[0] <= 0.5


def test_backoff_is_jittered():
    clock = engine._Clock(30)
    engine._RateLimit.last = None
    delays = set()
    for _ in range(20):
        start = engine.time.monotonic()
        engine._backoff(0, clock)
        delays.add(round(engine.time.monotonic() - start, 3))
    assert len(delays) > 1


def test_retry_gives_up_on_a_permanent_error_at_once():
    calls = []

    def refuse():
        calls.append(1)
        raise APIException("unauthorized", "unable to authenticate", None, correlation_id="c1")

    with pytest.raises(CommandExecutionError, match=r"refused the token .*c1"):
        engine._retry("listing", refuse, engine._Clock(30))
    assert len(calls) == 1


def test_retry_keeps_trying_a_transient_error_within_the_deadline():
    results = iter([APIException("locked", "locked", None), requests.exceptions.ConnectionError()])

    def flaky():
        error = next(results, None)
        if error:
            raise error
        return "ok"

    assert engine._retry("listing", flaky, engine._Clock(30)) == "ok"


def test_a_missing_token_names_the_option(options):
    options.pop("token")
    with pytest.raises(CommandExecutionError, match="hcloud:token is not set"):
        engine._client()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("\u00e4", "hcloud:token is not ASCII (character 7)"),
        ("\u20ac", "hcloud:token is not ASCII (character 7)"),
        ("\n", "(character 7 is a line break)"),
        (" ", "(character 7 is a space or control character)"),
        ("\t", "(character 7 is a space or control character)"),
        ("\x00", "(character 7 is a space or control character)"),
    ],
    ids=["umlaut", "euro", "newline", "space", "tab", "nul"],
)
def test_a_token_that_is_no_printable_ascii_is_one_line_never_showing_it(options, bad, message):
    options["token"] = "secret" + bad + "token"
    with pytest.raises(CommandExecutionError) as refused:
        engine._client()
    text = str(refused.value)
    assert message in text
    assert "\n" not in text
    assert "secret" not in text
    assert "token" not in text.replace("hcloud:token", "").replace("API token", "")


def test_a_token_that_is_no_string_is_refused(options):
    options["token"] = 1234
    with pytest.raises(CommandExecutionError, match="hcloud:token must be a string"):
        engine._client()


def test_a_token_files_final_line_break_is_no_part_of_the_token(options):
    options["token"] = "secret-token\n"
    assert engine._token() == "secret-token"


def test_the_client_is_cached_per_token_and_rebuilt_when_it_changes(options):
    first = engine._client()
    assert engine._client() is first
    options["token"] = "rotated-token"
    assert engine._client() is not first


def test_the_cache_key_does_not_hold_the_token(options):
    engine._client()
    fingerprint, _ = hcloud_ip.__context__["hcloud_ip.client"]
    assert options["token"] not in fingerprint


def test_the_library_does_not_retry_behind_our_deadline():
    client = engine._client()
    assert client._client._retry_max_retries == 0


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        0.0,
        float("inf"),
        float("-inf"),
        float("nan"),
        10**400,  # too big for a float
        86400.5,
        True,
        False,
        None,
        [30],
        "",
        "soon",
        "inf",
        "nan",
        "Infinity",
        " 30",
        "30 ",
        "30\n",
        "+30",
        "-1",
        "2_000",
        "1e3",
        "0x1f",
        "٣٠",  # Arabic-Indic digits, which float() reads as 30
        "\uff13\uff10",  # fullwidth digits, likewise
        "30s",
        "0",
        "0.0",
    ],
    ids=repr,
)
def test_a_bad_number_of_seconds_is_refused_in_one_line(value):
    with pytest.raises(CommandExecutionError) as refused:
        engine._seconds(value, "deadline")
    message = str(refused.value)
    assert message.startswith("deadline must be a number of seconds greater than 0 and at most")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), (0.5, 0.5), ("30", 30.0), ("2.5", 2.5), (".5", 0.5), ("3.", 3.0), (86400, 86400)],
)
def test_a_plain_positive_number_of_seconds_is_taken(value, seconds):
    assert engine._seconds(value, "deadline") == seconds


@pytest.mark.parametrize("value", [float("inf"), "nan", True, 0])
def test_the_configured_deadline_and_timeout_are_checked_and_named(options, value):
    options["failover"] = {"deadline": value}
    with pytest.raises(CommandExecutionError, match=r"^hcloud:failover:deadline must be"):
        engine._clock(None)
    options["request_timeout"] = value
    with pytest.raises(CommandExecutionError, match=r"^hcloud:request_timeout must be"):
        engine._client()


def test_an_unset_deadline_and_timeout_take_their_defaults(options):
    options["failover"] = {"deadline": None}
    assert engine._clock(None).deadline == engine.DEFAULT_DEADLINE
    assert engine._request_timeout() == engine.DEFAULT_REQUEST_TIMEOUT


# ---------------------------------------------------------------- request timeouts


def clock_with(remaining):
    clock = engine._Clock(30)
    clock.start -= 30 - remaining
    return clock


@pytest.mark.parametrize(
    ("remaining", "timeout"),
    [(30, 5.0), (5, 5.0), (1.2, 1.2), (0.6, 0.6), (0.2, 0.5), (0, 0.5), (-3, 0.5)],
)
def test_a_request_waits_at_most_what_the_deadline_leaves_but_the_floor(remaining, timeout):
    with clock_with(remaining):
        assert engine._capped_timeout(5.0) == pytest.approx(timeout, abs=0.01)
    assert engine._capped_timeout(5.0) == 5.0  # outside the call: request_timeout


def test_a_request_without_a_timeout_still_ends_with_the_deadline():
    with clock_with(2):
        assert engine._capped_timeout(None) == pytest.approx(2, abs=0.01)


def test_the_parallel_requests_of_a_round_see_the_calls_deadline():
    seen = []

    def step():
        seen.append(engine._capped_timeout(5.0))
        return SimpleNamespace(id=1)

    with clock_with(2) as clock:
        engine._run_steps([(None, f"step {n}", step) for n in range(3)], clock)
    assert seen == pytest.approx([2, 2, 2], abs=0.05)


@pytest.fixture
def silent_server():
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"http://127.0.0.1:{server.getsockname()[1]}/v1"


def test_the_clients_requests_end_with_the_deadline_not_request_timeout(options, silent_server):
    options.update(api_endpoint=silent_server, request_timeout=5)
    client = engine._client()
    start = time.monotonic()
    with engine._Clock(1), pytest.raises(requests.exceptions.ReadTimeout):
        client.floating_ips.get_all()
    assert time.monotonic() - start == pytest.approx(1, abs=0.3)


def test_failover_refuses_alias_ips_that_are_not_a_mapping(options):
    options["failover"] = {"alias_ips": ["10.0.1.1"]}
    with pytest.raises(CommandExecutionError, match="hcloud:failover:alias_ips must map"):
        engine._failover_addresses(None, None)


def test_split_accepts_lists_and_comma_separated_strings():
    assert engine._split("a, b,,c", "ips") == ["a", "b", "c"]
    assert engine._split(["a", 7], "ips") == ["a", "7"]
    assert engine._split(12345, "ips") == ["12345"]  # salt-call reads an ID as a number
    assert engine._split(None, "ips") == []


@pytest.mark.parametrize(
    "value", [True, 1.5, {"a": 1}, ["a", None], ["a", ["b"]], [False]], ids=repr
)
def test_split_names_the_argument_it_refuses(value):
    with pytest.raises(CommandExecutionError, match=r"^ips must be a list \(or a comma-separated"):
        engine._split(value, "ips")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (hcloud_ip.assign, "missing a required argument: 'ip'"),
        (lambda: hcloud_ip.describe(""), "ip is required: the name, ID or address"),
        (lambda: hcloud_ip.describe(["lb-http"]), "ip must be the name, ID or address"),
        (lambda: hcloud_ip.whoami("lb-master"), "too many positional arguments"),
        (lambda: hcloud_ip.server_info(server=True), "server must be the name or ID of a server"),
        (lambda: hcloud_ip.alias_ips("lb-private", ips=5.5), "ips must be a list"),
        (lambda: hcloud_ip.failover(reassert="maybe"), "reassert must be True or False"),
        (lambda: hcloud_ip.failover(floating_ips={"a": 1}), "floating_ips must be a list"),
        (lambda: hcloud_ip.failover(alias_ips="10.0.1.1"), "alias_ips must map a network"),
        (lambda: hcloud_ip.create("lb-new"), "home_location is required"),
        (lambda: hcloud_ip.create("lb-new", type="ipv5"), "type must be ipv4 or ipv6"),
        (lambda: hcloud_ip.update("lb-http", labels="a=b"), "labels must be a mapping"),
        (lambda: hcloud_ip.update("lb-http", description=5), "description must be a string"),
    ],
)
def test_a_bad_argument_is_one_line_naming_it_before_any_request(options, call, message):
    options["api_endpoint"] = "http://127.0.0.1:9/v1"  # nothing listens: a request would fail
    with pytest.raises(CommandExecutionError) as refused:
        call()
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_checked_functions_keep_their_argument_list_for_salt():
    import salt.utils.args  # noqa: PLC0415

    spec = salt.utils.args.get_function_argspec(hcloud_ip.assign)
    assert spec.args == ["ip", "server", "deadline"]
    assert spec.defaults == (None, None)
    assert hcloud_ip.assign.__doc__.strip().startswith("Assign a floating IP")


# ---------------------------------------------------------------- re-assert in a split brain

# This node, a peer that outranks it and one that does not.
ME = SimpleNamespace(id=1, name="lb-me")
TOP = SimpleNamespace(id=2, name="lb-top")
OTHER = SimpleNamespace(id=3, name="lb-other")
NOBODY = SimpleNamespace(id=None, name=None)
NET = Network(id=5, name="lb-private", ip_range="10.0.0.0/16")


def snapshot(fip_holder, aliases):
    """
    A _Snapshot where lb-http is on fip_holder and each server has the given
    alias IPs, read as the failover reads: this node's server, then its peers.
    """
    servers = {
        server.id: Server(
            id=server.id,
            name=server.name,
            public_net=SimpleNamespace(
                floating_ips=[SimpleNamespace(id=1)] if server is fip_holder else []
            ),
            private_net=[PrivateNet(NET, f"10.0.0.{server.id}", ips, mac_address=None)],
        )
        for server, ips in zip((ME, TOP, OTHER), aliases, strict=True)
    }
    client = SimpleNamespace(servers=SimpleNamespace(get_by_id=servers.__getitem__))
    return engine._Snapshot(client, None, ME.id, peer_ids=[TOP.id, OTHER.id])


def peers(yield_to=("lb-top",), reassert=True):
    return engine._OutrankingPeers(frozenset(yield_to), reassert)


def observe(goals, snap):
    """What _converge does with each read: who acts as MASTER, then who holds what."""
    for shared in {goal.peers for goal in goals}:
        shared.notice(goals, snap)
    engine._observe(goals, {}, snap)


def floating_ip_goal(yield_to, holder, reassert=True, shared=None):
    goal = engine._FloatingIPGoal("lb-http", ME, shared or peers(yield_to, reassert))
    goal.fip = FloatingIP(id=1, name="lb-http", ip="198.51.100.7")
    snap = snapshot(holder, ([], [], []))
    observe([goal], snap)
    return goal, snap


def alias_goal(ips, shared):
    goal = engine._AliasGoal("lb-private", ips, ME, shared)
    goal.network = NET
    return goal


def step_names(goal, snap, client=None):
    return [what for what, _ in goal.steps(snap, client or MagicMock())]


@pytest.mark.parametrize("yield_to", [{"lb-top"}, {"2"}], ids=["by-name", "by-id"])
def test_a_reassert_leaves_a_floating_ip_to_a_peer_that_outranks_this_node(yield_to):
    goal, snap = floating_ip_goal(yield_to, holder=TOP)
    assert goal.steps(snap, MagicMock()) == []
    assert engine._report(goal, {}, snap) == {
        "result": True,
        "moved": False,
        "ip": "198.51.100.7",
        "from": {"id": 2, "name": "lb-top"},
        "to": {"id": 2, "name": "lb-top"},
        "comment": "198.51.100.7 held by lb-top, which outranks this node; left there (re-assert)",
    }


def test_a_reassert_still_takes_a_floating_ip_from_a_peer_this_node_outranks():
    # The freeze case: the backup took the address; the master wakes up still MASTER.
    goal, snap = floating_ip_goal({"lb-top"}, holder=OTHER)
    assert step_names(goal, snap) == ["assign lb-http (198.51.100.7) to lb-me"]


def test_notify_master_claims_whoever_holds_the_floating_ip():
    goal, snap = floating_ip_goal({"lb-top"}, holder=TOP, reassert=False)
    assert step_names(goal, snap) == ["assign lb-http (198.51.100.7) to lb-me"]


@pytest.mark.parametrize("taken_from", [OTHER, NOBODY], ids=["other", "nobody"])
def test_notify_master_leaves_what_an_outranking_peer_takes_back_after_this_run_moved_it(
    taken_from,
):
    # Split brain seen from below: lb-top is MASTER too and re-asserts.
    goal, snap = floating_ip_goal({"lb-top"}, holder=taken_from, reassert=False)
    assert step_names(goal, snap) == ["assign lb-http (198.51.100.7) to lb-me"]
    goal.moved = True  # what _act records before it sends the steps
    taken = snapshot(TOP, ([], [], []))
    observe([goal], taken)
    assert goal.steps(taken, MagicMock()) == []
    assert engine._report(goal, {}, taken)["comment"] == (
        "198.51.100.7 held by lb-top, which outranks this node and took back what this run "
        "moved; left there (split brain)"
    )


def test_notify_master_takes_back_what_an_outranking_peer_moves_before_this_run_moved_it():
    # lb-top preempted, went FAULT mid-failover, and its move lands now: it is
    # not acting as MASTER, so the address comes back here.
    goal, _ = floating_ip_goal({"lb-top"}, holder=ME, reassert=False)
    landed = snapshot(TOP, ([], [], []))
    observe([goal], landed)
    assert step_names(goal, landed) == ["assign lb-http (198.51.100.7) to lb-me"]


def test_notify_master_keeps_claiming_from_an_outranking_peer_whose_move_it_failed():
    # lb-top died holding lb-http, and the assign met `locked`: lb-top still
    # holding it says nothing about lb-top being alive.
    goal, snap = floating_ip_goal({"lb-top"}, holder=TOP, reassert=False)
    assert step_names(goal, snap) == ["assign lb-http (198.51.100.7) to lb-me"]
    goal.moved = True
    observe([goal], snap)
    assert step_names(goal, snap) == ["assign lb-http (198.51.100.7) to lb-me"]


def test_notify_master_takes_back_what_a_peer_it_outranks_took_during_the_run():
    goal, _ = floating_ip_goal({"lb-top"}, holder=OTHER, reassert=False)
    goal.moved = True
    taken = snapshot(OTHER, ([], [], []))
    observe([goal], taken)
    assert step_names(goal, taken) == ["assign lb-http (198.51.100.7) to lb-me"]


def test_the_outranking_peers_come_from_the_failover_options(options):
    assert engine._outranking_peers() == frozenset()
    options["failover"] = {"yield_to": ["lb-top", 2]}
    assert engine._outranking_peers() == {"lb-top", "2"}


def test_alias_ips_are_released_then_claimed_keeping_each_servers_other_aliases():
    client = MagicMock()
    goal = alias_goal(["10.0.1.1", "10.0.1.2"], peers())
    # lb-top outranks this node but holds none of them: no peer acts as MASTER.
    snap = snapshot(ME, ([], ["10.0.1.9"], ["10.0.1.1", "10.0.1.2", "10.0.1.8"]))
    observe([goal], snap)
    [(what, release)] = goal.steps(snap, client)
    assert what == "release 10.0.1.1, 10.0.1.2 in lb-private from lb-other"
    release()
    assert client.servers.change_alias_ips.call_args.args[2] == ["10.0.1.8"]

    snap = snapshot(ME, (["10.0.1.7"], ["10.0.1.9"], ["10.0.1.8"]))
    observe([goal], snap)
    [(what, claim)] = goal.steps(snap, client)
    assert what == "claim 10.0.1.1, 10.0.1.2 in lb-private on lb-me"
    claim()
    assert client.servers.change_alias_ips.call_args.args[2] == ["10.0.1.7", "10.0.1.1", "10.0.1.2"]


def test_a_reassert_leaves_every_alias_ip_not_here_to_an_outranking_peer_that_holds_one():
    goal = alias_goal(["10.0.1.1", "10.0.1.2", "10.0.1.3"], peers())
    # lb-top outranks this node and holds 10.0.1.1: it is MASTER too and takes
    # them all, including 10.0.1.2 from lb-other, which ranks lower.
    snap = snapshot(ME, (["10.0.1.3"], ["10.0.1.1", "10.0.1.9"], ["10.0.1.2", "10.0.1.8"]))
    observe([goal], snap)
    assert goal.steps(snap, MagicMock()) == []
    goal.initial = goal._holders(snap)
    assert engine._report(goal, {}, snap)["comment"] == (
        "10.0.1.2 on lb-other while lb-top, which outranks this node, takes the addresses; "
        "left for it (re-assert); "
        "10.0.1.1 held by lb-top, which outranks this node; left there (re-assert)"
    )


def test_a_reassert_leaves_an_alias_ip_on_no_server_while_an_outranking_peer_holds_the_rest():
    # lb-top re-asserts: it has taken lb-http and released the alias IP from
    # this node, and claims it next. Claiming it meanwhile would start a tug of
    # war that lasts until both deadlines.
    shared = peers()
    fip_goal, _ = floating_ip_goal(None, holder=ME, shared=shared)
    alias = alias_goal(["10.0.1.1"], shared)
    released = snapshot(TOP, ([], [], []))
    observe([fip_goal, alias], released)
    assert alias.steps(released, MagicMock()) == []
    alias.initial = {}
    assert engine._report(alias, {}, released)["comment"] == (
        "10.0.1.1 on no server while lb-top, which outranks this node, takes the addresses; "
        "left for it (re-assert)"
    )


@pytest.mark.parametrize("fip_holder", [ME, OTHER], ids=["this-node", "peer-it-outranks"])
def test_a_reassert_claims_an_alias_ip_on_no_server_when_no_outranking_peer_holds_any(
    fip_holder,
):
    shared = peers()
    fip_goal, _ = floating_ip_goal(None, holder=fip_holder, shared=shared)
    alias = alias_goal(["10.0.1.1"], shared)
    free = snapshot(fip_holder, ([], [], []))
    observe([fip_goal, alias], free)
    assert step_names(alias, free) == ["claim 10.0.1.1 in lb-private on lb-me"]


def test_notify_master_leaves_an_alias_ip_an_outranking_peer_releases_and_claims():
    client = MagicMock()
    shared = peers(reassert=False)
    fip_goal, _ = floating_ip_goal(None, holder=TOP, shared=shared)
    alias = alias_goal(["10.0.1.1"], shared)
    held = snapshot(TOP, ([], ["10.0.1.1"], []))
    observe([fip_goal, alias], held)
    assert step_names(fip_goal, held) == ["assign lb-http (198.51.100.7) to lb-me"]
    assert step_names(alias, held, client) == ["release 10.0.1.1 in lb-private from lb-top"]
    fip_goal.moved = alias.moved = True
    observe([fip_goal, alias], snapshot(ME, (["10.0.1.1"], [], [])))
    # Done; then lb-top, MASTER too, takes lb-http back and releases the alias
    # IP from this node, to claim it next.
    released = snapshot(TOP, ([], [], []))
    observe([fip_goal, alias], released)
    assert alias.steps(released, client) == []
    assert alias.yielded(released) == {"10.0.1.1": None}
    reclaimed = snapshot(TOP, ([], ["10.0.1.1"], []))
    observe([fip_goal, alias], reclaimed)
    assert alias.steps(reclaimed, client) == []
    assert alias.yielded(reclaimed) == {"10.0.1.1": "lb-top"}


def test_without_peers_to_yield_to_every_alias_ip_is_released_first():
    goal = engine._AliasGoal("lb-private", ["10.0.1.1", "10.0.1.2"], ME)
    goal.network = NET
    snap = snapshot(ME, ([], ["10.0.1.1"], ["10.0.1.2"]))
    assert sorted(what for what, _ in goal.steps(snap, MagicMock())) == [
        "release 10.0.1.1, 10.0.1.2 in lb-private from lb-other",
        "release 10.0.1.1, 10.0.1.2 in lb-private from lb-top",
    ]


@pytest.mark.parametrize(
    ("recorded", "left_master"),
    [("MASTER\n", None), ("BACKUP\n", "BACKUP"), ("FAULT", "FAULT"), ("", None), (None, None)],
    ids=["master", "backup", "fault", "empty", "not-yet-recorded"],
)
def test_a_failover_watches_the_recorded_vrrp_state(options, tmp_path, recorded, left_master):
    state = tmp_path / "state"
    if recorded is not None:
        state.write_text(recorded)
    options["failover"] = {"state_file": str(state)}
    assert engine._vrrp_state_watch()() == left_master


def test_without_a_state_file_a_failover_never_stands_down(options):
    assert engine._vrrp_state_watch()() is None


# ---------------------------------------------------------------- the state module


state = hcloud_ip_state


EXISTING = {
    "ip": "198.51.100.7",
    "type": "ipv4",
    "home_location": "nbg1",
    "description": "web",
    "labels": {"lb": "main"},
}


def test_present_refuses_to_change_what_the_api_cannot(state_salt):
    state_salt["hcloud_ip.list"].return_value = {"lb-http": EXISTING}
    ret = state.present("lb-http", type="ipv6", home_location="nbg1")
    assert ret["result"] is False
    assert "has type ipv4, not ipv6" in ret["comment"]
    state_salt["hcloud_ip.update"].assert_not_called()


def test_present_in_test_mode_changes_nothing(state_salt):
    state.__opts__["test"] = True
    state_salt["hcloud_ip.list"].return_value = {"lb-http": EXISTING}
    ret = state.present("lb-http", home_location="nbg1", labels={"lb": "other"})
    assert ret["result"] is None
    assert ret["changes"] == {"labels": {"old": {"lb": "main"}, "new": {"lb": "other"}}}
    state_salt["hcloud_ip.update"].assert_not_called()


def test_present_reports_an_update_that_did_not_stick(state_salt):
    state_salt["hcloud_ip.list"].return_value = {"lb-http": EXISTING}
    ret = state.present("lb-http", description="changed")
    assert ret["result"] is False
    assert "still differs" in ret["comment"]


def test_assigned_fails_when_the_recheck_disagrees(state_salt):
    state_salt["hcloud_ip.describe"].return_value = {"server": {"id": 2, "name": "lb-backup"}}
    ret = state.assigned("lb-http")
    assert ret["result"] is False
    assert "is on lb-backup after assigning it" in ret["comment"]


def test_assigned_turns_module_errors_into_a_failed_state(state_salt):
    state_salt["hcloud_ip.describe"].side_effect = CommandExecutionError(
        "floating IP 'x' not found"
    )
    ret = state.assigned("x")
    assert ret == {
        "name": "x",
        "result": False,
        "changes": {},
        "comment": "floating IP 'x' not found",
    }


def test_without_its_engine_the_module_does_not_load_and_says_why(monkeypatch):
    # Where _utils was not synced (or salt-ssh before 3007, which does not ship it).
    monkeypatch.setattr(hcloud_ip, "__utils__", {}, raising=False)
    loaded, reason = hcloud_ip.__virtual__()
    assert loaded is False
    assert "hcloud_failover utils module is not loaded" in reason
    assert "saltutil.sync_utils" in reason


def test_with_its_engine_the_module_loads_as_hcloud_ip():
    assert hcloud_ip.__virtual__() == "hcloud_ip"
