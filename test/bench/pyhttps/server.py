# The benchmark's Python HTTPS server: the standard library only (http.server
# and ssl, so OpenSSL's libssl through Debian's python3), one process, a
# thread per connection, HTTP/1.1 keep-alive.
#
# Usage: python3 server.py <port> <cert.pem> <key.pem>
#
#   GET /hello  200 "hello\n" (text/plain, Content-Length set)
#   anything else 404
#
# It listens on 127.0.0.1:<port> and prints "ready" once listening. The TLS
# handshake runs in the connection's own thread (at its first read), not in
# the accepting one, so a slow handshake holds up no other connection. Each
# response goes out in one SSL_write_ex (status line, headers and body
# together) on a TCP_NODELAY socket; the request line and headers come in
# one SSL_read_ex. http.server's usual handler writes headers and body
# separately, and on a keep-alive connection Nagle's algorithm then holds
# the body until the client's delayed ACK (~40 ms): the server would be
# latency-bound at ~700 req/s and its ratio would hide any CPU cost.

import http.server
import ssl
import sys


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        if self.path != "/hello":
            self.send_error(404)
            return
        self.wfile.write(RESPONSE)

    def log_message(self, format, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr, ctx):
        self.ctx = ctx
        super().__init__(addr, Handler)

    def get_request(self):
        sock, addr = self.socket.accept()
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr


def main():
    if len(sys.argv) != 4:
        print("usage: server.py <port> <cert.pem> <key.pem>", file=sys.stderr)
        sys.exit(2)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    ctx.set_alpn_protocols(["http/1.1"])
    srv = Server(("127.0.0.1", int(sys.argv[1])), ctx)
    print("ready", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
