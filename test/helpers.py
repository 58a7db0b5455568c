"""Paths and small helpers the tests, the demo and the benchmarks share."""

import inspect
import re
import subprocess
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SALT_CALL = REPO / ".venv" / "bin" / "salt-call"
# A pillar of README.md's "Coming from a write-up": a YAML block after its mark.
SEED_BLOCK = re.compile(r"<!-- seed (\d{3})(?: ([\w/.-]+))? -->\n```yaml\n(.*?)```", re.S)


def readme_seeds():
    """
    The pillars README.md gives for the seeds (the write-ups users come
    from): {seed: pillar} and, for a seed given as pillar files (``<!-- seed
    NNN pillar/PATH -->``), {seed: {"pillar/PATH": text}}.
    """
    pillars, files = {}, {}
    for seed, path, text in SEED_BLOCK.findall((REPO / "README.md").read_text()):
        if path:
            files.setdefault(seed, {})[path] = text
        else:
            pillars[seed] = yaml.safe_load(text)
    return pillars, files


def engine_functions():
    """
    The public functions of the failover engine (_utils/hcloud_failover.py)
    as Salt's loader hands them to hcloud_ip in __utils__, for unit tests
    that load hcloud_ip with salt-factories' loader mocks.
    """
    from _utils import hcloud_failover  # noqa: PLC0415 (needs hcloud, which not every user has)

    return {
        f"hcloud_failover.{name}": func
        for name, func in vars(hcloud_failover).items()
        if not name.startswith("_")
        and inspect.isfunction(func)
        and func.__module__ == hcloud_failover.__name__
    }


def wait_for(predicate, timeout=15, interval=0.2):
    """Poll ``predicate`` until it is truthy or ``timeout`` s pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


class SaltNode:
    """
    One node's Salt configuration, used through the real `salt-call --local`.

    The formula's custom modules load from the repo (module_dirs), and the
    hcloud options live in minion.d/hcloud.conf, as the failover hook keeps them.
    """

    def __init__(self, factory):
        self.factory = factory
        self.options_file = Path(factory.config_dir) / "minion.d" / "hcloud.conf"
        self.options_file.unlink(missing_ok=True)  # left by an earlier test's node of this id

    def set_options(self, options):
        """Write hcloud:* options into the node's minion config (root-only, like the hook's)."""
        self.options_file.parent.mkdir(exist_ok=True)
        self.options_file.touch(mode=0o600)
        self.options_file.write_text(yaml.safe_dump({"hcloud": options}))

    def call(self, *args, timeout=120):
        cli = self.factory.salt_call_cli(timeout=timeout)
        return cli.run("--local", "--retcode-passthrough", *args)


class MasterlessNode:
    """
    A masterless Salt config for one node in a directory of its own, with the
    hcloud options in a root-only minion.d file, as the failover hook keeps
    them; for scripts (tests use salt-factories' minion configs instead).
    """

    def __init__(self, root, minion_id, cloud, module_dir=REPO, **options):
        self.config_dir = Path(root) / minion_id / "salt"
        (self.config_dir / "minion.d").mkdir(parents=True)
        minion = {
            "id": minion_id,
            "file_client": "local",
            "module_dirs": [str(module_dir)],
            "root_dir": str(Path(root) / minion_id),
            "log_file": str(Path(root) / minion_id / "minion.log"),
        }
        (self.config_dir / "minion").write_text(yaml.safe_dump(minion))
        hcloud = {
            "token": cloud.token,
            "api_endpoint": cloud.api_url,
            "metadata_endpoint": cloud.metadata_url,
            "server": minion_id,
            **options,
        }
        path = self.config_dir / "minion.d" / "hcloud.conf"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump({"hcloud": hcloud}))

    def salt_call(self, *args, check=True):
        """`salt-call --local` with JSON output; its exit code tells whether all went well."""
        argv = [str(SALT_CALL), "-c", str(self.config_dir), "--local", "--out=json"]
        argv += ["--retcode-passthrough", *args]
        return subprocess.run(argv, capture_output=True, text=True, check=check)
