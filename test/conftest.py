"""Fixtures shared by every test: the emulator (fakecloud) and Salt nodes running salt-call."""

import pytest

from helpers import REPO, SaltNode

pytest_plugins = ["fakecloud.pytest_plugin"]


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    # salt-factories' log server listens on every address by default; loopback is enough.
    log_server = config.pluginmanager.get_plugin("saltfactories-log-server")
    if log_server is not None:
        log_server.log_host = "127.0.0.1"


def pytest_unconfigure(config):
    # Salt's start-up log handler keeps records to print at exit, onto the
    # stream pytest has closed by then; pytest's own capture already has them.
    from salt._logging import impl  # noqa: PLC0415 (salt is only imported once configured)

    handler = impl.get_temp_handler()
    if handler is not None:
        handler.sync_with_handlers(())


@pytest.fixture(scope="session")
def salt_factories_config():
    # Salt runs from the venv; no coverage sitecustomize, generous start-up for a slow machine.
    return {"code_dir": str(REPO), "inject_sitecustomize": False, "start_timeout": 120}


@pytest.fixture
def salt_node_factory(salt_factories):
    """Make a masterless Salt node with a given minion id."""

    def make(minion_id="lb-master", **overrides):
        factory = salt_factories.salt_minion_daemon(
            minion_id,
            overrides={
                "file_client": "local",
                "module_dirs": [str(REPO)],
                "log_level_logfile": "all",
                **overrides,
            },
        )
        return SaltNode(factory)

    return make
