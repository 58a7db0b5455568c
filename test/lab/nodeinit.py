"""
PID 1 of one lab host: run by the lab as

    ip netns exec NETNS unshare --mount --pid --uts --ipc --fork --propagation private \
        python3 nodeinit.py ROOT HOSTNAME

so the host has its own network, mount, PID, UTS and IPC namespaces. It gives
the host its own /etc and /var (overlays over this machine's, changes kept in
ROOT), its own empty /run and /dev (with the usual devices), a fresh
/proc, its hostname, and a syslog at /dev/log writing /var/log/syslog with
millisecond timestamps (keepalived, haproxy and the failover hook log there).
Then it reaps orphans, as an init must, until it is killed; killing it kills
every process of the host (the kernel ends a PID namespace with its init).
"""

import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def mount(*args):
    subprocess.run(["mount", *args], check=True)


def own_overlay(root, directory):
    """``directory`` shows this machine's files; what the host writes stays in ROOT."""
    upper, work = root / f"{directory.strip('/')}.upper", root / f"{directory.strip('/')}.work"
    upper.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    mount(
        "-t",
        "overlay",
        "overlay",
        "-o",
        f"lowerdir={directory},upperdir={upper},workdir={work}",
        directory,
    )


def own_dev(root):
    """A /dev of its own, so /dev/log is this host's syslog and nobody else's."""
    host_dev = root / "hostdev"
    host_dev.mkdir(exist_ok=True)
    mount("--bind", "/dev", str(host_dev))
    mount("-t", "tmpfs", "-o", "mode=755,nosuid", "tmpfs", "/dev")
    for name in DEVICES:
        Path("/dev", name).touch()
        mount("--bind", str(host_dev / name), f"/dev/{name}")
    subprocess.run(["umount", "-l", str(host_dev)], check=True)
    Path("/dev/pts").mkdir()
    mount("-t", "devpts", "-o", "newinstance,ptmxmode=0666,mode=620", "devpts", "/dev/pts")
    os.symlink("pts/ptmx", "/dev/ptmx")
    Path("/dev/shm").mkdir()
    mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", "/dev/shm")
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"/dev/{name}")


def host_like_pids():
    """
    Number this host's processes from mid-range (16384 by default), as on a server up a while.

    Salt finds a service without systemd by ``sig`` through ps (status.pid),
    and skips every ps line that contains its own PID as a substring. With a
    fresh namespace's 2-3 digit PIDs, salt-call as PID 56 misses keepalived
    as 561, calls it stopped, and the service state's watch then stops it
    "before starting" it: a flaky lab that says nothing about the formula.
    With PIDs of equal length, a line holds salt-call's PID only if it is
    salt-call's own.
    """
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(min(100000, pid_max // 2)))


def become_host(root, hostname):
    mount("--make-rprivate", "/")
    mount("-t", "proc", "proc", "/proc")
    host_like_pids()
    for directory in ("/etc", "/var"):
        own_overlay(root, directory)
    mount("-t", "tmpfs", "-o", "mode=755,nosuid,nodev", "tmpfs", "/run")
    own_dev(root)
    socket.sethostname(hostname)
    Path("/etc/hostname").write_text(hostname + "\n")
    # No DNS in the lab: names resolve from /etc/hosts, and a lookup of
    # anything else fails at once instead of timing out.
    Path("/etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {hostname}\n")
    Path("/etc/resolv.conf").unlink(missing_ok=True)
    Path("/etc/resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    Path("/run/lock").mkdir()
    Path("/var/log").mkdir(exist_ok=True)


def serve_syslog():
    """/dev/log -> /var/log/syslog, each line stamped with the time it arrived."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("/dev/log")
    os.chmod("/dev/log", 0o666)  # noqa: S103 - every daemon of the host logs here
    # Like Debian's syslog: not for everyone to read.
    fd = os.open("/var/log/syslog", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    log = open(fd, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    def pump():
        while True:
            data = sock.recv(65536)
            stamp = datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")
            text = data.decode("utf-8", "replace").rstrip("\n\0")
            # "<PRI>message": the priority adds nothing for the lab's readers.
            if text.startswith("<") and ">" in text[:6]:
                text = text[text.index(">") + 1 :]
            log.write(f"{stamp} {text}\n")

    threading.Thread(target=pump, daemon=True).start()


def reap_forever():
    # PID 1 gets no default signal handling: say what ends it.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    # Every orphan of the host becomes our child: reap each as it dies, or a
    # killed haproxy would linger as a zombie that pgrep still finds.
    while True:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        signal.sigtimedwait([signal.SIGCHLD], 1)


def main():
    root, hostname = Path(sys.argv[1]), sys.argv[2]
    become_host(root, hostname)
    # Blocked before any thread starts, so SIGCHLD waits for reap_forever.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    serve_syslog()
    (root / "ready").write_text(str(os.getpid()))
    reap_forever()


if __name__ == "__main__":
    main()
