#!/usr/bin/env python3
"""A git server for the e2e harness: Debian's `git http-backend` (the smart
HTTP protocol git itself serves) behind a small HTTP front, on loopback.

Usage: git-server.py ADDR:PORT ROOT

Repositories are the bare repositories under ROOT, served at /<name>.git.
Pushes are accepted from anyone (REMOTE_USER is set for http-backend), as a
forge would for an authorised token; /healthz answers 200.
"""
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def handle_any(self):
        path, _, query = self.path.partition("?")
        if path == "/healthz":
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return
        data = self.body() if self.command == "POST" else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": ROOT,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REMOTE_USER": "e2e",
            "REMOTE_ADDR": self.client_address[0],
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(data)),
        }
        for key, value in self.headers.items():
            env["HTTP_" + key.upper().replace("-", "_")] = value
        run = subprocess.run(["git", "http-backend"], input=data, env=env, capture_output=True)
        head, _, payload = run.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = run.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.strip().split()[0])
            elif key:
                headers.append((key, value.strip()))
        if run.returncode != 0 and not run.stdout:
            status, payload = 500, run.stderr
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = handle_any
    do_POST = handle_any


if __name__ == "__main__":
    addr, ROOT = sys.argv[1], sys.argv[2]
    host, port = addr.rsplit(":", 1)
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()
