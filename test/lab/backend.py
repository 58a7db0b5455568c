"""
A lab backend: HTTP on one port answering "NAME via CLIENT-ADDRESS", and a
line service on another that greets with "NAME" and echoes every line (the
long-lived connections of the websockets group).

    python3 backend.py NAME HTTP_PORT LINE_PORT
"""

import http.server
import socketserver
import sys
import threading


class Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"{self.server.name} via {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        """Quiet: thousands of requests a minute would bury everything else."""


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(f"{self.server.name}\n".encode())
        for line in self.rfile:
            self.wfile.write(line)


class Threaded(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    name, http_port, line_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    web = http.server.ThreadingHTTPServer(("0.0.0.0", http_port), Answer)
    echo = Threaded(("0.0.0.0", line_port), Echo)
    web.daemon_threads = True
    web.name = echo.name = name
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    print("backend: ready", flush=True)
    web.serve_forever()


if __name__ == "__main__":
    main()
