"""Socket-health probe: a keep-alive HTTP client that waits with epoll and
asks FIONREAD before it reads, as event loops that size their reads do.

Usage: python3 probe.py <port>

Serves GET /status/<code> (warm-up) and GET /run?port=P&n=N&size=S&mode=M,
which, on the serving thread (so a traced process's requests get injected),
connects to 127.0.0.1:P and:
  mode=keepalive  sends N requests "GET /resp?size=S" one after the other on
                  one connection; before reading each response it waits for
                  EPOLLIN, then records FIONREAD and the bytes a MSG_PEEK
                  read returns;
  mode=halfclose  N times: new connection, request with X-Half-Close: 1,
                  shutdown(SHUT_WR), read the response and then EOF.
Every body must be the pattern 0123456789... of S bytes. The answer is JSON:
fionread and peek lists, epoll timeouts, bodies verified, errors, and the
slowest response in ms.
"""

import errno
import fcntl
import json
import os
import select
import socket
import struct
import sys
import termios
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATTERN = b"0123456789"
POLL_TIMEOUT = 2.0  # seconds one epoll wait may take before it counts as a miss


def pattern(n):
    return (PATTERN * (n // len(PATTERN) + 1))[:n]


def fionread(sock):
    buf = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return struct.unpack("i", buf)[0]


class Conn:
    def __init__(self, port, res):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setblocking(False)
        self.ep = select.epoll()
        self.ep.register(self.sock.fileno(), select.EPOLLIN)
        self.buf = b""
        self.res = res

    def close(self):
        self.ep.close()
        self.sock.close()

    def wait(self):
        """Waits for EPOLLIN; counts each POLL_TIMEOUT without it."""
        for _ in range(5):
            if self.ep.poll(POLL_TIMEOUT):
                return True
            self.res["epoll_timeouts"] += 1
        return False

    def fill(self):
        """Reads what is there, waiting with epoll first; b"" at EOF."""
        while True:
            try:
                data = self.sock.recv(1 << 20)
                self.buf += data
                return data
            except BlockingIOError:
                if not self.wait():
                    raise TimeoutError("no data after epoll timeouts")

    def response(self):
        """Reads one response; returns its body."""
        while b"\r\n\r\n" not in self.buf:
            if not self.fill():
                raise ConnectionError("EOF inside the response header")
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        self.buf = rest
        while len(self.buf) < length:
            if not self.fill():
                raise ConnectionError("EOF inside the body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return body


def run(port, n, size, mode):
    res = {"fionread": [], "peek": [], "epoll_timeouts": 0, "ok": 0, "errors": [], "max_ms": 0.0}
    want = pattern(size)
    req = b"GET /resp?size=%d HTTP/1.1\r\nHost: backend\r\n" % size
    conn = None
    try:
        if mode == "keepalive":
            conn = Conn(port, res)
        for i in range(n):
            start = time.monotonic()
            if mode == "halfclose":
                conn = Conn(port, res)
                conn.sock.sendall(req + b"X-Half-Close: 1\r\nConnection: close\r\n\r\n")
                conn.sock.shutdown(socket.SHUT_WR)
            else:
                conn.sock.sendall(req + b"\r\n")
            if not conn.wait():
                res["errors"].append("response %d: epoll never reported EPOLLIN" % i)
                break
            res["fionread"].append(fionread(conn.sock))
            try:
                res["peek"].append(len(conn.sock.recv(1 << 22, socket.MSG_PEEK | socket.MSG_DONTWAIT)))
            except BlockingIOError:
                res["peek"].append(-1)
            body = conn.response()
            if body == want:
                res["ok"] += 1
            else:
                res["errors"].append("response %d: body of %d bytes differs" % (i, len(body)))
            if mode == "halfclose":
                if conn.fill() != b"":
                    res["errors"].append("response %d: data after the body, want EOF" % i)
                conn.close()
                conn = None
            res["max_ms"] = max(res["max_ms"], (time.monotonic() - start) * 1000)
    except Exception as e:  # noqa: BLE001 - reported to the test
        res["errors"].append("%s: %s" % (type(e).__name__, e))
    finally:
        if conn:
            conn.close()
    return res


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002
        pass

    def reply(self, code, body=b"", ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(u.query)
        if u.path.startswith("/status/"):
            self.reply(int(u.path[len("/status/"):]))
        elif u.path == "/run":
            res = run(int(q["port"][0]), int(q.get("n", ["1"])[0]), int(q.get("size", ["100"])[0]),
                      q.get("mode", ["keepalive"])[0])
            self.reply(200, json.dumps(res).encode(), "application/json")
        else:
            self.reply(404)


def main():
    port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ["PORT"])
    srv = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    srv.daemon_threads = True
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
