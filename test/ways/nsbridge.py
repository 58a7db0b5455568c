"""
A TCP bridge between the loopbacks of two network namespaces, for the tests
that run a salt-minion or an sshd inside a namespace the test made.

    python nsbridge.py NETNS:4506>host:4506 host:2222>NETNS:2222 ...

Each forward ``A:PORT>B:PORT`` listens on 127.0.0.1:PORT in namespace A and
connects every accepted connection to 127.0.0.1:PORT in namespace B; a side
is ``host`` (the namespace this process started in) or the name of a
namespace under /run/netns. Only 127.0.0.1 is ever bound or dialled: the
traffic stays on the two loopbacks. A socket belongs to the network namespace
of the thread that created it, and setns(2) moves only the calling thread, so
each thread enters the namespace it needs before making its socket.

Prints ``nsbridge: ready`` once every listener is bound; runs until killed.
"""

import contextlib
import ctypes
import os
import socket
import sys
import threading

CLONE_NEWNET = 0x40000000
LOOPBACK = "127.0.0.1"
_libc = ctypes.CDLL(None, use_errno=True)
_HOST = os.open("/proc/self/ns/net", os.O_RDONLY)


def _namespace_fd(name):
    return _HOST if name == "host" else os.open(f"/run/netns/{name}", os.O_RDONLY)


def _enter(fd):
    """Move the calling thread into the network namespace ``fd``."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _pump(src, dst):
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                sock.shutdown(how)


def _serve(client, target_fd, port):
    try:
        _enter(target_fd)
        upstream = socket.create_connection((LOOPBACK, port), timeout=10)
        upstream.settimeout(None)
    except OSError:
        client.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _accept_loop(listener, target_fd, port):
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_serve, args=(client, target_fd, port), daemon=True).start()


def _parse(spec):
    source, target = spec.split(">")
    source_ns, source_port = source.rsplit(":", 1)
    target_ns, target_port = target.rsplit(":", 1)
    return source_ns, int(source_port), target_ns, int(target_port)


def main(specs):
    loops = []
    for spec in specs:
        source_ns, source_port, target_ns, target_port = _parse(spec)
        _enter(_namespace_fd(source_ns))
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, source_port))
        listener.listen(64)
        _enter(_HOST)
        loops.append((listener, _namespace_fd(target_ns), target_port))
    for args in loops:
        threading.Thread(target=_accept_loop, args=args, daemon=True).start()
    print("nsbridge: ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
