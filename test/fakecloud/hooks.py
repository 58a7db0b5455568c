"""--on-change: run a shell command whenever a floating or alias IP changes holder."""

import os
import queue
import subprocess
import sys
import threading


def environment(event, holder):
    """The FAKECLOUD_* variables describing one change."""

    def text(value):
        return "" if value is None else str(value)

    return {
        "FAKECLOUD_KIND": event["kind"],
        "FAKECLOUD_IP": event["ip"],
        "FAKECLOUD_NETWORK_ID": text(event["network_id"]),
        "FAKECLOUD_OLD_SERVER_ID": text(event["old_server_id"]),
        "FAKECLOUD_NEW_SERVER_ID": text(event["new_server_id"]),
        "FAKECLOUD_NEW_SERVER_IPV4": holder["ipv4"],
        "FAKECLOUD_NEW_SERVER_PRIVATE_IP": holder["private_ip"] if event["network_id"] else "",
    }


class HookRunner:
    """Runs the command once per change, in order, off the thread that holds the state lock."""

    def __init__(self, command):
        self.command = command
        self.queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="fakecloud-hooks", daemon=True)
        self.thread.start()

    def __call__(self, event, holder):
        self.queue.put(environment(event, holder))

    def _work(self):
        while True:
            env = self.queue.get()
            if env is None:
                return
            result = subprocess.run(
                ["/bin/sh", "-c", self.command], env={**os.environ, **env}, check=False
            )
            if result.returncode:
                print(
                    f"fakecloud: --on-change exited {result.returncode} for {env}",
                    file=sys.stderr,
                    flush=True,
                )

    def stop(self, timeout=10):
        """Let queued commands finish, then end the worker."""
        self.queue.put(None)
        self.thread.join(timeout)
