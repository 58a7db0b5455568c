"""pytest fixtures (and a context manager for scripts) around a fakecloud process.

Load with ``pytest_plugins = ["fakecloud.pytest_plugin"]``. Fixtures:

``fakecloud_process``
    session-wide emulator process with response validation against the spec.
``cloud``
    a reset emulator per test, as a :class:`FakeCloud` handle; fails the test
    if any response broke the OpenAPI schema.
"""

import os
import secrets
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
OPENAPI = REPO_ROOT.parent / "shared" / "hcloud-openapi" / "hcloud.json"
READY_PREFIX = "fakecloud: listening on "


class FakeCloud:
    """Client-side handle: API coordinates, control API calls and quick creators."""

    def __init__(self, endpoint, token):
        self.endpoint = endpoint
        self.api_url = f"{endpoint}/v1"
        self.metadata_url = f"{endpoint}/hetzner/v1/metadata"
        self.token = token
        self.session = requests.Session()

    @staticmethod
    def start(**options):
        """Start an emulator process outside pytest; stop it with ``.stop()``."""
        process = FakeCloudProcess(**options)
        process.start()
        return process

    # ---- clients -----------------------------------------------------------------

    def client(self, **options):
        """A fresh hcloud.Client aimed at the emulator, polling fast to keep tests quick."""
        import hcloud  # noqa: PLC0415 - only the tests need the library

        options.setdefault("poll_interval", 0.05)
        return hcloud.Client(token=self.token, api_endpoint=self.api_url, **options)

    def api(self, method, path, json=None, **kwargs):
        """A raw API call with the right token; returns the requests.Response."""
        headers = {"Authorization": f"Bearer {self.token}"}
        return self.session.request(
            method, f"{self.api_url}{path}", json=json, headers=headers, timeout=30, **kwargs
        )

    def _api_ok(self, method, path, json=None):
        response = self.api(method, path, json)
        assert response.ok, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def _control(self, method, path, json=None, **params):
        response = self.session.request(
            method, f"{self.endpoint}/_fakecloud/{path}", json=json, params=params, timeout=60
        )
        response.raise_for_status()
        return response.json()

    # ---- control API -------------------------------------------------------------

    def reset(self):
        self._control("POST", "reset")

    def add_fault(
        self,
        path,
        count=1,
        *,
        method=None,
        status=None,
        code=None,
        message=None,
        latency=None,
        drop=False,
    ):
        spec = {"path": path, "count": count, "method": method, "status": status}
        spec.update(code=code, message=message, latency=latency, drop=drop)
        self._control("POST", "faults", {k: v for k, v in spec.items() if v is not None})

    def clear_faults(self):
        self._control("DELETE", "faults")

    def requests(self):
        return self._control("GET", "requests")["requests"]

    def clear_requests(self):
        self._control("DELETE", "requests")

    def configure(self, **config):
        return self._control("PUT", "config", config)["config"]

    def map_metadata_source(self, address, server_id):
        return self._control("PUT", "metadata-sources", {address: server_id})

    def events(self, since=0, timeout=0):
        return self._control("GET", "events", since=since, timeout=timeout)

    def violations(self):
        return self._control("GET", "violations")["violations"]

    def state(self):
        return self._control("GET", "state")

    def holders(self):
        """Who holds each floating IP (by ID) and alias IP, outside the rate limit."""
        return self._control("GET", "holders")

    def populate(self, servers=0, floating_ips=0):
        """A crowd of other servers and floating IPs in the project (``Cloud.populate``)."""
        return self._control(
            "POST", "populate", json={"servers": servers, "floating_ips": floating_ips}
        )

    def wait_idle(self, timeout=30):
        """Block until no action is running."""
        assert self._control("GET", "idle", timeout=timeout)["idle"], "actions still running"

    # ---- quick creators ----------------------------------------------------------

    def create_server(self, name, location="nbg1", labels=None, server_type="cx22"):
        body = {"name": name, "server_type": server_type, "image": "debian-12"}
        body.update(location=location, labels=labels or {})
        server = self._api_ok("POST", "/servers", body)["server"]
        self._wait_action_of(server["id"])
        return self._api_ok("GET", f"/servers/{server['id']}")["server"]

    def _wait_action_of(self, server_id, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            actions = self._api_ok("GET", f"/servers/{server_id}/actions?status=running")
            if not actions["actions"]:
                return
            time.sleep(0.02)
        raise TimeoutError(f"server {server_id} still has running actions")

    def create_floating_ip(
        self, name, type="ipv4", home_location="nbg1", server_id=None, labels=None
    ):
        body = {"name": name, "type": type, "labels": labels or {}}
        if server_id is None:
            body["home_location"] = home_location
        else:
            body["server"] = server_id
        created = self._api_ok("POST", "/floating_ips", body)
        if server_id is not None:
            self.wait_idle()
        return self._api_ok("GET", f"/floating_ips/{created['floating_ip']['id']}")["floating_ip"]

    def create_network(self, name, ip_range="10.0.0.0/16", subnet="10.0.1.0/24"):
        body = {"name": name, "ip_range": ip_range}
        if subnet:
            body["subnets"] = [{"type": "cloud", "network_zone": "eu-central", "ip_range": subnet}]
        return self._api_ok("POST", "/networks", body)["network"]

    def attach_server(self, server_id, network_id, ip=None, alias_ips=()):
        body = {"network": network_id, "alias_ips": list(alias_ips)}
        if ip:
            body["ip"] = ip
        self._api_ok("POST", f"/servers/{server_id}/actions/attach_to_network", body)
        self.wait_idle()
        return self._api_ok("GET", f"/servers/{server_id}")["server"]


class FakeCloudProcess:
    """Runs ``python test/fakecloud`` on a free loopback port.

    ``options`` become command line flags: ``action_duration=0.5`` is
    ``--action-duration 0.5``; True adds a bare flag. Use as a context manager
    or call start()/stop(); ``.cloud`` is the :class:`FakeCloud` handle.
    """

    def __init__(self, token=None, token_file=None, openapi=OPENAPI, log_path=None, **options):
        self.token_file = token_file
        if token_file:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        self.token = token or secrets.token_hex(16)
        self.openapi = openapi
        self.options = options
        self.log_path = log_path
        self.process = None
        self.cloud = None

    def command(self):
        argv = [sys.executable, str(PACKAGE_DIR)]
        if self.token_file:
            argv += ["--token-file", str(self.token_file)]
        else:
            argv += ["--token", self.token]
        if "listen" not in self.options:
            argv += ["--listen", "127.0.0.1:0"]
        if self.openapi:
            # The emulator refuses a missing spec: a run that cannot validate must fail.
            argv += ["--openapi", str(self.openapi)]
        for key, value in self.options.items():
            values = value if isinstance(value, (list, tuple)) else [value]
            for item in values:
                argv += [f"--{key.replace('_', '-')}"] + ([] if item is True else [str(item)])
        return argv

    def start(self, timeout=20):
        if self.log_path is None:
            handle, self.log_path = tempfile.mkstemp(prefix="fakecloud-", suffix=".log")
            os.close(handle)
        with open(self.log_path, "ab") as log:
            # stderr (violations, tracebacks) goes to a file: pytest's per-test
            # capture would otherwise swallow a session-wide process's output.
            self.process = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=log, text=True
            )
        self.cloud = FakeCloud(self._await_ready(timeout), self.token)
        return self.cloud

    def _await_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.process.stdout], [], [], 0.1)
            if ready:
                line = self.process.stdout.readline()
                if line.startswith(READY_PREFIX):
                    return line[len(READY_PREFIX) :].strip()
            if self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"fakecloud did not start; see {self.log_path}")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process:
            self.process.stdout.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture(scope="session")
def fakecloud_process():
    process = FakeCloudProcess()
    process.start()
    yield process
    process.stop()


@pytest.fixture
def cloud(fakecloud_process):
    handle = fakecloud_process.cloud
    handle.reset()
    yield handle
    violations = handle.violations()
    assert not violations, f"responses broke the OpenAPI schema: {violations}"
