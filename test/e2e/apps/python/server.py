"""End-to-end test app: Python standard library HTTP/1.1 server.

Usage: python3 server.py <port>   (or PORT in the environment)

Thread per connection (ThreadingHTTPServer), keep-alive (protocol_version
HTTP/1.1), outbound calls with urllib on the serving thread, each on a new
connection (urllib sends Connection: close). BIND_HOST sets the listening
address (127.0.0.1); TLS_CERT and TLS_KEY (PEM files) serve HTTPS with the
ssl module, and outgoing https calls accept any certificate. Endpoints are the same in every
language; see test/e2e/doc.go.
"""

import hashlib
import http.client
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


PATTERN = b"0123456789"


def pattern(n):
    """The first n bytes of 0123456789 repeated: /call's pad and body."""
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


def headers_digest(pairs):
    lines = sorted(f"{name.lower()}: {value}\n" for name, value in pairs)
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "e2e-python"
    sys_version = ""

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass

    def traceparent(self):
        return self.headers.get("traceparent", "")

    def traceparent_count(self):
        return len(self.headers.get_all("traceparent") or [])

    def reply(self, code, body=b"", content_type="text/plain"):
        self.send_response(code)
        self.send_header("X-Received-Traceparent", self.traceparent())
        if code not in (204, 304):
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and code not in (204, 304):
            self.wfile.write(body)

    def reply_json(self, code, obj):
        obj["traceparent"] = self.traceparent()
        obj["traceparent_count"] = self.traceparent_count()
        self.reply(code, json.dumps(obj).encode("utf-8"), "application/json")

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        if path == "/hello":
            self.reply(200, b"hello")
        elif path.startswith("/status/"):
            try:
                code = int(path[len("/status/"):])
            except ValueError:
                code = 0
            if 200 <= code <= 599:
                self.reply(code)
            else:
                self.reply(400, b"bad status code")
        elif path == "/call":
            query = urllib.parse.parse_qs(url.query)

            def param(name):
                return query.get(name, [""])[0]

            target = param("url")
            if not target:
                self.reply(400, b"missing url")
                return
            headers = {}  # X-Pad before traceparent: an own traceparent after a large header
            if int(param("pad") or 0) > 0:
                headers["X-Pad"] = pattern(int(param("pad"))).decode("ascii")
            if param("traceparent"):
                headers["traceparent"] = param("traceparent")
            if param("tracestate"):
                headers["tracestate"] = param("tracestate")
            method = param("method") or "GET"
            data = None
            if method == "POST":
                data = pattern(int(param("body") or 0))
                headers["Content-Type"] = "application/octet-stream"
            req = urllib.request.Request(target, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    status, body = resp.status, resp.read()
            except urllib.error.HTTPError as err:
                status, body = err.code, err.read()
            except Exception as err:  # connection refused, timeout, ...
                self.reply_json(502, {"error": str(err)})
                return
            self.reply_json(200, {"status": status, "body": body.decode("utf-8", "replace")})
        elif path == "/headers":
            pairs = list(self.headers.items())
            merged = {}
            for name, value in pairs:
                key = name.lower()
                merged[key] = merged[key] + ", " + value if key in merged else value
            self.reply_json(200, {"headers": merged, "sha256": headers_digest(pairs)})
        else:
            self.reply(404, b"not found")

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        if path == "/echo":
            self.reply_json(200, {"len": len(body), "sha256": hashlib.sha256(body).hexdigest()})
        elif path == "/mirror":
            self.reply(200, body, "application/octet-stream")
        elif path == "/relay":
            self.relay(body)
        else:
            self.reply(404, b"not found")


    def relay(self, body):
        """POST /relay?url=U[&n=N]: POSTs the body to U N times (default 1) on
        one keep-alive connection and answers with the last response's body,
        byte for byte."""
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        target = urllib.parse.urlsplit(query.get("url", [""])[0])
        n = int(query.get("n", ["1"])[0])
        if target.scheme == "https":
            conn = http.client.HTTPSConnection(target.hostname, target.port, timeout=10,
                                               context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        path = target.path + ("?" + target.query if target.query else "")
        try:
            for _ in range(n):
                conn.request("POST", path, body=body,
                             headers={"Content-Type": "application/octet-stream"})
                resp = conn.getresponse()
                status, out = resp.status, resp.read()
        except Exception as err:  # connection refused, timeout, ...
            self.reply_json(502, {"error": str(err)})
            return
        finally:
            conn.close()
        self.reply(200 if status == 200 else 502, out, "application/octet-stream")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def main():
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ["PORT"])
    server = Server((os.environ.get("BIND_HOST", "127.0.0.1"), port), Handler)
    if os.environ.get("TLS_CERT"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.environ["TLS_CERT"], os.environ["TLS_KEY"])
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
