"""
The three ways the project is used, as a reusable harness:

1. a salt-master and a salt-minion (``ways_minion``): ``salt <minion> ...``;
2. salt-ssh from the same master's config (``ways_ssh``) to an sshd on
   127.0.0.1, as root with a key salt-factories made for the run;
3. masterless ``salt-call --local`` (``salt_node_factory`` in test/conftest.py).

One master, one minion, one sshd for the whole run (session fixtures). The
master serves ``file_roots: base: [<repo>, <states dir>]``: the repo through
``ways_formula_root``, a directory of symlinks to its top-level entries but the
hidden ones (.venv/ would cost a minute per file list), so ``salt://_modules``,
``salt://_states`` and ``salt://hcloud_lb`` are the checkout's. Tests add SLS
files with ``ways_states.write(sls, text)`` and give a node its pillar with
``way.set_pillar(data)`` (``ways_pillar``: one file a node, top file to match).

Each way is a :class:`Way`: ``run(function, *args)``, ``state_apply(sls)``,
``call_with_pillar(function)``, ``set_pillar(data)``, the job cache and the log
files; tests parametrized over the ``way`` fixture run once per way.

salt-ssh, in Salt 3007:

* it ships the custom modules itself: before each command it packs the
  ``_modules``, ``_states``... of the master's file_roots into
  ``salt-ext_mods.tgz`` and unpacks it in the target's thin dir when changed.
  ``saltutil.sync_all`` through salt-ssh is harmful (see SshWay).
* a plain execution function runs on the target as ``salt-call --local``
  without the master's pillar; states get it. See SshWay.call_with_pillar.
  Wrapper modules run on the master instead, with the target's grains and
  pillar: the master has the formula's (``hcloud_lb``, from ``_wrapper``) by
  ``salt-run saltutil.sync_wrapper``, as a user syncs it (``ways_master``).
* it ships to the target only the files the states name, so templates that
  import other files need them in the master's ``extra_filerefs``: the test
  master has the README's salt-ssh master config (``README_SALT_SSH_CONFIG``).
* the target runs the thin Salt with the first ``python3`` on its PATH, and
  /usr/bin/python3 has no ``hcloud``: the roster entry's ``set_path`` puts the
  venv's bin/ first, so the venv's Python (with hcloud, requests,
  python-dateutil) runs it. In production the same holds: the ``python3``
  salt-ssh finds on the target (or the one ``set_path`` puts first) must
  ``import hcloud``, or hcloud_ip does not load.
"""

import re
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import REPO

MINION_ID = "ways-minion"
SSH_ID = "ways-ssh"
SSH_SYSTEM_ID = "ways-ssh-system-python"
VENV_BIN = REPO / ".venv" / "bin"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The test sshds' settings beyond salt-factories' defaults.
SSHD_CONFIG = {
    "PermitRootLogin": "prohibit-password",
    "UsePAM": "no",
    # The keys live under pytest's tmp dir, below the world-writable /tmp.
    "StrictModes": "no",
    # scp, which salt-ssh copies the thin with, speaks SFTP since OpenSSH 9.
    "Subsystem": "sftp internal-sftp",
}
# A command through the master or salt-ssh: generous for a slow machine, but a
# hang must fail the test, not the whole run.
CLI_TIMEOUT = 120


def readme_salt_ssh_master_config():
    """The master config README.md gives salt-ssh users: its YAML block naming extra_filerefs."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", (REPO / "README.md").read_text(), re.M | re.S)
    (config,) = [
        data
        for data in map(yaml.safe_load, blocks)
        if isinstance(data, dict) and "extra_filerefs" in data
    ]
    return config


README_SALT_SSH_CONFIG = readme_salt_ssh_master_config()


def config_path(factory, key):
    """A path option of a salt-factories daemon's config, as Salt reads it (under root_dir)."""
    return Path(factory.config["root_dir"]) / factory.config[key]


def _keep_logs_drop_root(factory, ways_root):
    """
    After a daemon stopped: keep its logs under ``ways_root/logs/<id>`` (pytest
    keeps the last few runs' tmp dirs) and remove the root dir salt-factories
    made for it in /tmp, which nothing removes otherwise.
    """
    root = Path(factory.config["root_dir"])
    logs = config_path(factory, "log_file").parent
    if logs.is_dir():
        shutil.copytree(logs, ways_root / "logs" / factory.id, dirs_exist_ok=True)
    shutil.rmtree(root, ignore_errors=True)


def _dump(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, default_flow_style=False), encoding="utf-8")


class PillarTree:
    """
    The master's pillar_roots: one ``node_<id>.sls`` a node, and a top file
    giving each node only its own (so a token is only in that node's pillar).
    """

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.nodes = {}
        self.clear()

    def set(self, node_id, data):
        """Replace a node's pillar with ``data`` (root-only file, as a real pillar with a token)."""
        sls = "node_" + "".join(c if c.isalnum() else "_" for c in node_id)
        path = self.root / f"{sls}.sls"
        path.touch(mode=0o600)
        _dump(path, data)
        self.nodes[node_id] = sls
        self._write_top()

    def unset(self, node_id):
        """No pillar for this node any more (the others keep theirs)."""
        sls = self.nodes.pop(node_id, None)
        if sls:
            (self.root / f"{sls}.sls").unlink(missing_ok=True)
            self._write_top()

    def clear(self):
        """No pillar for any node."""
        for path in self.root.glob("*.sls"):
            path.unlink()
        self.nodes.clear()
        self._write_top()

    def _write_top(self):
        top = {"base": {node_id: [sls] for node_id, sls in sorted(self.nodes.items())}}
        _dump(self.root / "top.sls", top if self.nodes else {})


class StateTree:
    """A directory after the repo in the master's file_roots, for tests' own SLS files."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def write(self, sls, text):
        """Write ``<sls with dots as slashes>.sls``; returns the SLS name to apply."""
        path = self.root / (sls.replace(".", "/") + ".sls")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return sls


class Way:
    """
    One way of running Salt against one node. ``run`` returns salt-factories'
    ProcessResult: ``.data`` is the node's return (JSON), ``.returncode`` the CLI's.
    """

    name = None
    node_id = None

    def __init__(self, master, pillar):
        self.master = master
        self.pillar = pillar

    def run(self, function, *args, timeout=CLI_TIMEOUT):
        raise NotImplementedError

    def set_pillar(self, data):
        """Give the node this pillar, and make it see it now."""
        self.pillar.set(self.node_id, data)

    def state_apply(self, sls, *args, timeout=CLI_TIMEOUT):
        """``state.apply sls``; fails the test at once unless states ran (not a render error)."""
        ret = self.run("state.apply", sls, *args, timeout=timeout)
        assert isinstance(ret.data, dict), f"{self.name}: state.apply {sls} did not run: {ret}"
        return ret

    def call_with_pillar(self, function, *args, timeout=CLI_TIMEOUT):
        """
        Run an execution function so that it sees the node's pillar; returns its return.
        A minion has the pillar anyway; salt-ssh gives it only to states (see SshWay).
        """
        ret = self.run(function, *args, timeout=timeout)
        assert ret.returncode == 0, f"{self.name}: {function}: {ret}"
        return ret.data

    def master_log_files(self):
        """The log files of the master side of this way."""
        return [config_path(self.master, "log_file")]

    def node_log_files(self):
        """The log files Salt wrote on the node."""
        raise NotImplementedError

    def job_cache_files(self):
        """The master's job cache (the local_cache returner): every file under cachedir/jobs."""
        jobs = config_path(self.master, "cachedir") / "jobs"
        return [p for p in jobs.rglob("*") if p.is_file()]

    def __repr__(self):
        return f"<way {self.name} node={self.node_id}>"


class MinionWay(Way):
    """Way (1): ``salt <minion> ...`` from the master."""

    name = "minion"
    node_id = MINION_ID

    def __init__(self, master, pillar, minion):
        super().__init__(master, pillar)
        self.minion = minion

    def run(self, function, *args, timeout=CLI_TIMEOUT):
        cli = self.master.salt_cli(timeout=timeout)
        return cli.run(function, *args, minion_tgt=self.node_id)

    def set_pillar(self, data):
        super().set_pillar(data)
        # Execution functions read the minion's in-memory pillar: refresh it.
        ret = self.run("saltutil.refresh_pillar", "wait=True")
        assert ret.returncode == 0 and ret.data is True, f"refresh_pillar: {ret}"

    def extmods_dir(self):
        """Where saltutil.sync_* put the custom modules on the minion, as it says."""
        ret = self.run("config.get", "extension_modules")
        assert ret.returncode == 0 and ret.data, ret
        return Path(ret.data)

    def node_log_files(self):
        return [config_path(self.minion, "log_file")]


class SshWay(Way):
    """
    Way (2): ``salt-ssh <node> ...`` from the master's config, as root over the sshd.

    salt-ssh ships the thin Salt, and the custom modules of ``_modules``,
    ``_states``... of the master's file_roots (as ``salt-ext_mods.tgz``), by
    itself, before each command: no ``saltutil.sync_*`` (and do not run
    ``saltutil.sync_all`` through salt-ssh: on the target it syncs from the
    target's own empty file_roots and deletes the shipped modules, which are
    not shipped again until they change).

    salt-ssh runs an execution function on the target with ``salt-call
    --local`` and no pillar: only its wrapper functions (``pillar.*``,
    ``state.*``...) and state runs get the master-compiled pillar (Salt issues
    #28503, #61637). So ``call_with_pillar`` runs the function in a state, by
    ``module.run``.
    """

    name = "salt-ssh"

    def __init__(self, master, pillar, *, sshd, roster_file, node_id, entry):
        super().__init__(master, pillar)
        self.sshd = sshd
        self.roster_file = Path(roster_file)
        self.node_id = node_id
        self.entry = entry
        self.thin_dir = Path(entry["thin_dir"])

    def cli(self, timeout=CLI_TIMEOUT):
        return self.master.salt_ssh_cli(
            roster_file=str(self.roster_file),
            client_key=str(self.sshd.client_key),
            target_host=self.node_id,
            ssh_user="root",
            timeout=timeout,
        )

    def run(self, function, *args, timeout=CLI_TIMEOUT):
        return self.cli(timeout).run(function, *args)

    def call_with_pillar(self, function, *args, timeout=CLI_TIMEOUT):
        ret = self.run(
            "state.single",
            "module.run",
            "name=call_with_pillar",
            f"{function}={list(args)!r}",
            timeout=timeout,
        )
        assert isinstance(ret.data, dict) and len(ret.data) == 1, f"{function}: {ret}"
        (state,) = ret.data.values()
        assert state["result"] is True, f"{self.name}: {function}: {state}"
        return state["changes"][function]

    def extmods_dir(self):
        """Where salt-ssh unpacks the custom modules it ships on the target."""
        return self.thin_dir / "running_data" / "var" / "cache" / "salt" / "minion" / "extmods"

    def master_log_files(self):
        return [*super().master_log_files(), config_path(self.master, "ssh_log_file")]

    def node_log_files(self):
        # The thin's salt-call logs to <thin_dir>/running_data/salt-call.log.
        return sorted(p for p in self.thin_dir.rglob("*.log") if p.is_file())


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ways_root(tmp_path_factory):
    return tmp_path_factory.mktemp("ways")


@pytest.fixture(scope="session")
def ways_pillar(ways_root):
    """The master's pillar_roots; tests write node pillars with ``.set(node_id, data)``."""
    return PillarTree(ways_root / "pillar")


@pytest.fixture(scope="session")
def ways_states(ways_root):
    """A state directory after the repo in file_roots; ``.write(sls, text)``."""
    return StateTree(ways_root / "states")


@pytest.fixture(scope="session")
def ways_formula_root(ways_root):
    """
    The repo as the master serves it: a directory of symlinks to every top-level
    entry of the checkout but the hidden ones. Serving the checkout itself would
    make the master walk the 14,000 files of .venv/ at every file list (the list
    cache is off in salt-factories' masters), which takes a minute with trace logs.
    """
    root = ways_root / "formula"
    root.mkdir()
    for entry in sorted(REPO.iterdir()):
        if not entry.name.startswith(".") and entry.name != "__pycache__":
            (root / entry.name).symlink_to(entry)
    return root


@pytest.fixture(scope="session")
def ways_sshd(salt_factories, ways_root):
    """An sshd on 127.0.0.1 letting root in with a key made for this run."""
    # Debian's sshd wants its privilege separation directory, made by its init script.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    (ways_root / "sshd").mkdir(exist_ok=True)
    sshd = salt_factories.get_sshd_daemon(
        config_dir=ways_root / "sshd",
        listen_address="127.0.0.1",
        script_name=shutil.which("sshd") or "/usr/sbin/sshd",
        display_name="ways-sshd",
        sshd_config_dict=dict(SSHD_CONFIG),
    )
    with sshd.started():
        yield sshd


@pytest.fixture(scope="session")
def ways_master(salt_factories, ways_root, ways_formula_root, ways_pillar, ways_states):
    """
    A salt-master on 127.0.0.1 serving the repo and the tests' states, and the
    tests' pillar; also the master salt-ssh runs from, set up for the formula
    as README.md tells salt-ssh users: its master config (extra_filerefs), and
    the formula's wrapper modules synced from salt://_wrapper.
    """
    master_root = ways_root / "master"
    master_root.mkdir(exist_ok=True)
    master = salt_factories.salt_master_daemon(
        "ways-master",
        overrides={
            "interface": "127.0.0.1",
            "file_roots": {"base": [str(ways_formula_root), str(ways_states.root)]},
            "pillar_roots": {"base": [str(ways_pillar.root)]},
            "file_ignore_regex": [r"(^|/)__pycache__(/|$)"],
            # Relative to the master's root_dir (Salt prepends it to absolute paths too).
            "ssh_log_file": "logs/ssh.log",
            "known_hosts_file": str(master_root / "known_hosts"),
            "log_level_logfile": "all",
            **README_SALT_SSH_CONFIG,
        },
    )
    with master.started():
        ret = master.salt_run_cli(timeout=CLI_TIMEOUT).run("saltutil.sync_wrapper")
        assert ret.returncode == 0 and "wrapper.hcloud_lb" in ret.data, ret
        yield master
    _keep_logs_drop_root(master, ways_root)


@pytest.fixture(scope="session")
def ways_minion(ways_master, ways_pillar, ways_root):
    """Way (1): a salt-minion connected to ``ways_master``, custom modules synced."""
    minion = ways_master.salt_minion_daemon(
        MINION_ID,
        overrides={"master": "127.0.0.1", "log_level_logfile": "all"},
    )
    with minion.started():
        way = MinionWay(ways_master, ways_pillar, minion)
        # As a user does once: the formula's custom modules from salt://_modules, _states.
        ret = way.run("saltutil.sync_all")
        assert ret.returncode == 0 and "modules.hcloud_ip" in ret.data["modules"], ret
        yield way
    _keep_logs_drop_root(minion, ways_root)


@pytest.fixture(scope="session")
def ways_roster(ways_master, ways_sshd, ways_root):
    """
    The salt-ssh roster: two names for the one sshd on 127.0.0.1, each with a
    thin_dir of its own (not /var/tmp), as root with the sshd's client key.

    ``ways-ssh`` runs Salt with the venv's python3 (``set_path`` puts the venv
    first: the shim runs the first python3 on PATH), which has hcloud;
    ``ways-ssh-system-python`` with /usr/bin/python3, which has not.
    """
    known_hosts = config_path(ways_master, "known_hosts_file")
    known_hosts.write_text("\n".join(ways_sshd.get_host_keys()) + "\n", encoding="utf-8")
    common = {
        "host": "127.0.0.1",
        "port": ways_sshd.listen_port,
        "user": "root",
        "priv": str(ways_sshd.client_key),
        # The thin's salt-call logs everything, so tests can look for what must not be there.
        "minion_opts": {"log_level_logfile": "all"},
    }
    entries = {
        SSH_ID: {
            **common,
            "thin_dir": str(ways_root / "thin-venv"),
            "set_path": f"{VENV_BIN}:{SYSTEM_PATH}",
        },
        SSH_SYSTEM_ID: {
            **common,
            "thin_dir": str(ways_root / "thin-system"),
            "set_path": SYSTEM_PATH,
        },
    }
    roster_file = ways_root / "roster"
    _dump(roster_file, entries)
    yield roster_file, entries
    for entry in entries.values():
        shutil.rmtree(entry["thin_dir"], ignore_errors=True)


@pytest.fixture(scope="session")
def ways_ssh(ways_master, ways_pillar, ways_sshd, ways_roster):
    """Way (2): salt-ssh from ``ways_master`` to ``ways-ssh``, Salt on the venv's python3."""
    roster_file, entries = ways_roster
    return SshWay(
        ways_master,
        ways_pillar,
        sshd=ways_sshd,
        roster_file=roster_file,
        node_id=SSH_ID,
        entry=entries[SSH_ID],
    )


@pytest.fixture(scope="session")
def ways_ssh_system_python(ways_master, ways_pillar, ways_sshd, ways_roster):
    """salt-ssh to the same sshd, Salt on /usr/bin/python3 (no hcloud there)."""
    roster_file, entries = ways_roster
    node = SSH_SYSTEM_ID
    return SshWay(
        ways_master,
        ways_pillar,
        sshd=ways_sshd,
        roster_file=roster_file,
        node_id=node,
        entry=entries[node],
    )


@pytest.fixture(params=["minion", "salt-ssh"])
def way(request, ways_pillar):
    """Each way in turn: ``minion`` (master + salt-minion) and ``salt-ssh``; no pillar after."""
    fixture = {"minion": "ways_minion", "salt-ssh": "ways_ssh"}[request.param]
    yield request.getfixturevalue(fixture)
    ways_pillar.clear()
