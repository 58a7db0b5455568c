"""
hcloud_ip used the ways a formula is used, for real, against the emulator:
from a salt-master to its salt-minion, and by salt-ssh from the same master's
config over an sshd on loopback. (Masterless salt-call: test/module/.) And the
formula's salt-ssh wrapper module, hcloud_lb, on the master.
"""

import filecmp
import re
import subprocess

import pytest

from helpers import REPO

from .conftest import CLI_TIMEOUT, SSH_ID, config_path

SERVER = "lb-master"  # the node's server in the cloud, named by hcloud:server in its pillar

ASSIGNED_SLS = """\
lb-http is on this node:
  hcloud_ip.assigned:
    - name: lb-http
"""


@pytest.fixture
def pair(cloud):
    """lb-master (the node's server) and lb-backup, with lb-http on lb-backup."""
    master = cloud.create_server(SERVER)
    backup = cloud.create_server("lb-backup")
    fip = cloud.create_floating_ip("lb-http", server_id=backup["id"])
    cloud.wait_idle()
    return master, backup, fip


def hcloud_pillar(cloud, **extra):
    return {
        "hcloud": {
            "token": cloud.token,
            "api_endpoint": cloud.api_url,
            "metadata_endpoint": cloud.metadata_url,
            "server": SERVER,
            **extra,
        }
    }


def holder(cloud, fip_id):
    fip = cloud.client().floating_ips.get_by_id(fip_id)
    return fip.server.name if fip.server else None


def only_state(ret):
    """The one state's return of a state.apply of one state."""
    assert len(ret.data) == 1, ret
    (state,) = ret.data.values()
    return state


# ---------------------------------------------------------------- modules reach the node


# hcloud_ip's execution and state modules, and the engine beneath both.
SHIPPED = {"modules": "hcloud_ip.py", "states": "hcloud_ip.py", "utils": "hcloud_failover.py"}


def assert_shipped(extmods):
    for kind, name in SHIPPED.items():
        shipped = extmods / kind / name
        assert shipped.is_file(), f"{shipped} missing"
        assert filecmp.cmp(shipped, REPO / f"_{kind}" / name, shallow=False), shipped


def test_minion_syncs_the_custom_modules_from_salt(ways_minion):
    extmods = ways_minion.extmods_dir()
    for kind, name in SHIPPED.items():  # synced by the fixture: start from none
        (extmods / kind / name).unlink()
    ret = ways_minion.run("saltutil.sync_all")
    assert ret.returncode == 0, ret
    assert ret.data["modules"] == ["modules.hcloud_ip"], ret.data
    assert ret.data["states"] == ["states.hcloud_ip"], ret.data
    assert ret.data["utils"] == ["utils.hcloud_failover"], ret.data
    assert_shipped(extmods)
    functions = ways_minion.run("sys.list_functions", "hcloud_ip").data
    assert {"hcloud_ip.whoami", "hcloud_ip.list", "hcloud_ip.failover"} <= set(functions)
    assert "hcloud_ip.assigned" in ways_minion.run("sys.list_state_functions", "hcloud_ip").data


def test_salt_ssh_ships_the_custom_modules_itself(ways_ssh):
    # Any command: salt-ssh packs _modules, _states, _utils... of the file_roots and unpacks them
    # in the thin dir's extmods when they changed; no saltutil.sync_* involved.
    functions = ways_ssh.run("sys.list_functions", "hcloud_ip")
    assert functions.returncode == 0, functions
    assert {"hcloud_ip.whoami", "hcloud_ip.list", "hcloud_ip.failover"} <= set(functions.data)
    assert_shipped(ways_ssh.extmods_dir())
    states = ways_ssh.run("sys.list_state_functions", "hcloud_ip").data
    assert "hcloud_ip.assigned" in states


def test_master_syncs_the_salt_ssh_wrapper_from_salt(ways_master):
    """
    As README tells salt-ssh users: ``salt-run saltutil.sync_wrapper`` copies
    salt://_wrapper (the link to _modules/hcloud_lb.py, served as its file)
    into the master's extension_modules, where salt-ssh loads wrappers from.
    """
    synced = config_path(ways_master, "extension_modules") / "wrapper" / "hcloud_lb.py"
    assert filecmp.cmp(synced, REPO / "_modules" / "hcloud_lb.py", shallow=False)
    synced.unlink()  # synced by the fixture: start from none
    ret = ways_master.salt_run_cli(timeout=CLI_TIMEOUT).run("saltutil.sync_wrapper")
    assert ret.returncode == 0, ret
    assert ret.data == ["wrapper.hcloud_lb"], ret.data
    assert not synced.is_symlink()
    assert filecmp.cmp(synced, REPO / "_modules" / "hcloud_lb.py", shallow=False)


def test_salt_ssh_runs_hcloud_lb_validate_on_the_master_with_the_pillar(ways_ssh, cloud):
    """
    The wrapper's validate runs on the master, so it sees the node's pillar
    (the token in it), which salt-call --local on the target would not (see
    test_salt_ssh_gives_no_pillar_to_a_plain_execution_function); only the
    salt_call check goes to the target, with the path alone.
    """
    nodes = {
        SSH_ID: {"priority": 150, "address": "10.0.0.2"},
        "lb-backup": {"priority": 100, "address": "10.0.0.3"},
    }
    lookup = {"salt_call": "/nonexistent/salt-call"}
    ways_ssh.set_pillar(
        {**hcloud_pillar(cloud), "hcloud_lb": {"nodes": nodes, "vrrp": {"preempt": True}}}
    )
    # The raw pillar, without the formula's defaults: problems, but none about
    # the token or this node (the id is the roster's, as the target's grains say).
    problems = ways_ssh.run("hcloud_lb.validate")
    assert problems.returncode == 0, problems
    assert isinstance(problems.data, list) and problems.data, problems
    assert not [p for p in problems.data if "hcloud:token" in p or ":nodes" in p], problems.data
    node = ways_ssh.run("hcloud_lb.node")
    assert node.data == {
        "id": SSH_ID,
        "priority": 150,
        "address": "10.0.0.2",
        "peers": ["10.0.0.3"],
        "state": "MASTER",
        "check_weight": 0,
        "outranked_by": [],
    }, node

    ways_ssh.set_pillar({"hcloud_lb": {"lookup": lookup}})
    ssh_log = config_path(ways_ssh.master, "ssh_log_file")
    start = ssh_log.stat().st_size
    problems = ways_ssh.run("hcloud_lb.validate").data
    assert any(p.startswith("hcloud:token: not set; the failover hook needs") for p in problems)
    assert [p for p in problems if p.startswith("hcloud_lb:lookup:salt_call: /nonexistent/")]

    # What this validate ran on the target: the salt_call check and the
    # interface checks (the defaults' eth0), each with the path alone.
    on_target = [r for r in log_records(ssh_log, start) if "SALT_ARGV:" in r]
    assert on_target, f"{ssh_log}: no command line logged: the check would prove nothing"
    assert not [r for r in on_target if "'hcloud_lb." in r]
    checks = [r for r in on_target if "'cmd.retcode'" in r]
    allowed = [
        f"""'cmd.retcode', '["test", "{flag}", "{path}"]', 'python_shell=false', """
        "'ignore_retcode=true']"
        for flag, path in (("-x", "/nonexistent/salt-call"), ("-e", "/sys/class/net/eth0"))
    ]
    assert any(allowed[0] in r for r in checks), checks
    assert all(any(a in r for a in allowed) for r in checks), checks


def test_salt_ssh_script_security_problems_looks_at_the_target(ways_ssh, tmp_path):
    """
    The wrapper has script_security_problems too (it is the same file), and
    runs it on the master: it must stat the target's files (file.stats there),
    not the master's. (Target and master share this host's files: the log says where.)
    """
    tmp_path.chmod(0o755)
    script = tmp_path / "check"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o775)
    ssh_log = config_path(ways_ssh.master, "ssh_log_file")
    start = ssh_log.stat().st_size if ssh_log.exists() else 0  # the session's first salt-ssh?
    ret = ways_ssh.run("hcloud_lb.script_security_problems", str(script))
    assert ret.returncode == 0, ret
    assert f"{script} is writable by group or others" in ret.data, ret.data
    assert "/tmp is writable by group or others" in ret.data, ret.data
    stats = [r for r in log_records(ssh_log, start) if "SALT_ARGV:" in r and "'file.stats'" in r]
    assert [r for r in stats if f"'file.stats', '\"{script}\"'" in r], stats
    assert [r for r in stats if "'file.stats', '\"/\"'" in r], stats


def test_salt_ssh_saltutil_sync_all_deletes_the_shipped_modules(ways_ssh_system_python):
    """
    Salt's behaviour, pinned (on the node whose modules no other test needs):
    ``salt-ssh <node> saltutil.sync_all`` syncs from the target's own empty
    file_roots, deleting what salt-ssh shipped, which it ships again only when
    the modules change (or the thin dir's ext_version goes). Do not run it.
    """
    node = ways_ssh_system_python
    shipped = node.extmods_dir() / "modules" / "hcloud_ip.py"
    assert node.run("test.ping").data is True
    assert shipped.is_file()
    node.run("saltutil.sync_all")
    assert node.run("test.ping").data is True
    assert not shipped.exists()
    (node.thin_dir / "ext_version").unlink()  # the way back
    assert node.run("test.ping").data is True
    assert shipped.is_file()


# ---------------------------------------------------------------- the Python salt-ssh runs


def test_salt_ssh_runs_salt_on_the_venv_python_which_has_hcloud(ways_ssh):
    system = subprocess.run(["/usr/bin/python3", "-c", "import hcloud"], check=False)
    assert system.returncode != 0, "this test needs a /usr/bin/python3 without hcloud"
    ret = ways_ssh.run("grains.get", "pythonexecutable")
    assert ret.data == str(REPO / ".venv" / "bin" / "python3"), ret


def test_salt_ssh_on_a_python_without_hcloud_says_so(ways_ssh_system_python):
    node = ways_ssh_system_python
    assert node.run("grains.get", "pythonexecutable").data == "/usr/bin/python3"
    ret = node.run("hcloud_ip.whoami")
    assert ret.returncode != 0, ret
    assert "the hcloud Python library is not installed" in ret.data["stderr"], ret
    # sys.list_functions lists no hcloud_ip: __virtual__ refused without the library.
    assert node.run("sys.list_functions", "hcloud_ip").data == []


# ---------------------------------------------------------------- options from pillar


def test_whoami_and_list_read_the_hcloud_options_from_pillar(way, cloud, pair):
    master, backup, fip = pair
    way.set_pillar(hcloud_pillar(cloud))
    me = way.call_with_pillar("hcloud_ip.whoami")
    assert me["id"] == master["id"]
    assert me["name"] == SERVER
    assert me["found_by"] == "hcloud:server"
    listed = way.call_with_pillar("hcloud_ip.list")
    assert set(listed) == {"lb-http"}
    assert listed["lb-http"]["server"] == {"id": backup["id"], "name": "lb-backup"}
    assert listed["lb-http"]["id"] == fip["id"]


def test_salt_ssh_gives_no_pillar_to_a_plain_execution_function(ways_ssh, cloud, pair):
    """Salt's behaviour, pinned: this is why SshWay.call_with_pillar goes through a state."""
    ways_ssh.set_pillar(hcloud_pillar(cloud))
    assert ways_ssh.run("pillar.get", "hcloud:server").data == SERVER  # a wrapper: has it
    ret = ways_ssh.run("hcloud_ip.whoami")  # salt-call --local on the target: has not
    assert ret.returncode != 0, ret
    assert "hcloud:token is not set" in ret.data["stderr"], ret


def test_a_pillar_without_a_token_is_a_clear_error(way, ways_states, cloud, pair):
    way.set_pillar({"hcloud": {"api_endpoint": cloud.api_url, "server": SERVER}})
    ret = way.state_apply(ways_states.write("ways_test.assigned", ASSIGNED_SLS))
    state = only_state(ret)
    assert state["result"] is False
    assert "hcloud:token is not set" in state["comment"]
    assert "Traceback" not in state["comment"]


# ---------------------------------------------------------------- a state moves the IP


def test_state_apply_moves_the_floating_ip_once_and_test_mode_changes_nothing(
    way, ways_states, cloud, pair
):
    _, _, fip = pair
    way.set_pillar(hcloud_pillar(cloud))
    sls = ways_states.write("ways_test.assigned", ASSIGNED_SLS)
    cloud.clear_requests()

    dry = only_state(way.state_apply(sls, "test=True"))
    assert dry["result"] is None, dry
    assert dry["changes"] == {"server": {"old": "lb-backup", "new": SERVER}}
    assert holder(cloud, fip["id"]) == "lb-backup"
    assert not [r for r in cloud.requests() if r["method"] == "POST"]

    moved = only_state(way.state_apply(sls))
    assert moved["result"] is True, moved
    assert moved["changes"] == {"server": {"old": "lb-backup", "new": SERVER}}
    assert holder(cloud, fip["id"]) == SERVER

    cloud.clear_requests()
    again = only_state(way.state_apply(sls))
    assert again["result"] is True, again
    assert again["changes"] == {}
    assert not [r for r in cloud.requests() if r["method"] == "POST"]
    assert holder(cloud, fip["id"]) == SERVER


# ---------------------------------------------------------------- the token stays secret


def log_records(path, start=0):
    """
    The records of a Salt log file (a record starts with '[<date>', and may go
    on); from byte ``start`` on, when given.
    """
    with path.open("rb") as fh:
        fh.seek(start)
        text = fh.read().decode("utf-8", errors="replace")
    return re.split(r"\n(?=\[\d{4}-\d\d-\d\d )", text)


def test_the_token_is_in_no_return_job_cache_or_node_log(
    way, ways_states, ways_pillar, cloud, pair
):
    way.set_pillar(hcloud_pillar(cloud))
    rets = [
        way.state_apply(ways_states.write("ways_test.assigned", ASSIGNED_SLS)),
        way.run("hcloud_ip.list"),  # salt-ssh: fails (no pillar there); must not leak either
    ]
    assert way.call_with_pillar("hcloud_ip.whoami")["name"] == SERVER
    for ret in rets:
        assert cloud.token not in ret.stdout + ret.stderr

    job_cache = way.job_cache_files()
    node_logs = way.node_log_files()
    assert job_cache, "no job cache written: the check would prove nothing"
    assert node_logs, "no log on the node: the check would prove nothing"
    for path in node_logs:
        assert "hcloud_ip" in path.read_text(encoding="utf-8"), f"{path}: module never logged?"
    leaks = [
        str(path) for path in job_cache + node_logs if cloud.token.encode() in path.read_bytes()
    ]
    assert not leaks, f"the API token is in {leaks}"

    # The master logs every pillar file it renders, at debug level (salt.template,
    # Salt's own doing): the only place the token may appear on the master side.
    for path in way.master_log_files():
        for record in log_records(path):
            if cloud.token in record:
                assert re.match(
                    rf"\[[^]]*\]\[salt\.template +:\d+ *\]\[DEBUG +\]\[[^]]*\] "
                    rf"Rendered data from file: {re.escape(str(ways_pillar.root))}/",
                    record,
                ), f"the API token is in {path}:\n{record[:2000]}"
