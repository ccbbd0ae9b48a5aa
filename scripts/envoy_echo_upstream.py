"""The upstream behind Envoy in scripts/envoy-gateway.sh: answers every request with JSON naming itself and the
request headers it received, so the script sees exactly what reached the upstream.

Usage: envoy_echo_upstream.py NAME PORT-FILE
Binds 127.0.0.1:0, writes the port to PORT-FILE, serves until killed.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Echo(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        # Lower-cased names; a header sent twice keeps every value.
        headers: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        body = json.dumps({"upstream": sys.argv[1], "path": self.path, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
with open(sys.argv[2], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
