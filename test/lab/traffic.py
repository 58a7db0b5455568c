"""
The lab client's traffic: steady requests, each on a new connection, and
optionally one long-lived connection, logged as JSON lines.

    python3 traffic.py --url http://10.240.100.1/ [--url https://...] [--interval 0.02]
        [--timeout 1] [--hold 10.240.100.2:80 | --hold [2001:db8::1]:80]
        [--cafile CERT] --out FILE

Every ``interval`` seconds a request starts to each URL (in its own thread, so a
request hanging on a frozen node does not delay the next one) and, when it
ends, a line {"kind": "request", "url", "start", "end", "ok", "answer"|"error"}
is written. An https URL is asked over TLS, trusting --cafile (the lab's
backends' certificate; its name is not checked). With --hold, one TCP
connection to the line service sends a line every 0.2 s and logs {"kind":
"hold", "time", "ok", "error"?} for each echo and for the moment it breaks
(then it reconnects). Runs until SIGTERM/SIGINT.
"""

import argparse
import http.client
import json
import signal
import socket
import ssl
import threading
import time
import urllib.parse

_write_lock = threading.Lock()


def log(out, record):
    with _write_lock:
        out.write(json.dumps(record) + "\n")
        out.flush()


def one_request(out, url, timeout, context):
    parts = urllib.parse.urlsplit(url)
    start = time.time()
    record = {"kind": "request", "url": url, "start": start}
    try:
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.hostname, parts.port or 443, timeout=timeout, context=context
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
        conn.request("GET", parts.path or "/", headers={"Connection": "close"})
        response = conn.getresponse()
        body = response.read().decode(errors="replace").strip()
        conn.close()
        record.update(ok=response.status == 200, answer=body, status=response.status)
    except (OSError, http.client.HTTPException) as exc:
        record.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    record["end"] = time.time()
    log(out, record)


def hold_connection(out, target, stop):
    host, port = target.rsplit(":", 1)
    host = host.strip("[]")  # an IPv6 address: [2001:db8::1]:80
    while not stop.is_set():
        try:
            with socket.create_connection((host, int(port)), timeout=2) as conn:
                reader = conn.makefile("r")
                greeting = reader.readline().strip()
                log(
                    out,
                    {
                        "kind": "hold",
                        "time": time.time(),
                        "ok": True,
                        "event": "connected",
                        "answer": greeting,
                    },
                )
                number = 0
                while not stop.wait(0.2):
                    number += 1
                    conn.sendall(f"{number}\n".encode())
                    echo = reader.readline().strip()
                    if echo != str(number):
                        raise OSError(f"echo {echo!r} for {number}")
                    log(out, {"kind": "hold", "time": time.time(), "ok": True, "event": "echo"})
        except OSError as exc:
            log(
                out,
                {
                    "kind": "hold",
                    "time": time.time(),
                    "ok": False,
                    "event": "broken",
                    "error": f"{type(exc).__name__}: {exc}",
                },
            )
            stop.wait(0.2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", action="append", required=True)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--hold")
    parser.add_argument("--cafile")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    context = None
    if args.cafile:
        context = ssl.create_default_context(cafile=args.cafile)
        context.check_hostname = False
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with open(args.out, "a", encoding="utf-8") as out:
        if args.hold:
            threading.Thread(
                target=hold_connection, args=(out, args.hold, stop), daemon=True
            ).start()
        print("traffic: running", flush=True)
        next_start = time.monotonic()
        while not stop.is_set():
            for url in args.url:
                threading.Thread(
                    target=one_request, args=(out, url, args.timeout, context), daemon=True
                ).start()
            next_start += args.interval
            stop.wait(max(0.0, next_start - time.monotonic()))
        time.sleep(args.timeout + 0.2)  # let requests in flight finish and log


if __name__ == "__main__":
    main()
