//go:build linux && privileged

package ctxprop

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A Python server whose GET /ka?port=N&n=K&pipe=P opens one keep-alive
// connection to 127.0.0.1:N with Nagle's algorithm left on (as nginx's
// upstream connections and http.client have it), sends K writes of P
// pipelined requests on it, reads the P 2-byte responses of each, and
// answers the time it took in ms.
const pyNagleSender = `
import socket, sys, time, urllib.parse
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        s = socket.create_connection(("127.0.0.1", int(q["port"][0])))
        req = b"GET /upstream HTTP/1.1\r\nHost: backend\r\nUser-Agent: nagle\r\n\r\n"
        pipe = int(q["pipe"][0])
        start = time.monotonic()
        for _ in range(int(q["n"][0])):
            s.sendall(req * pipe)
            resp = b""
            while resp.count(b"\r\n\r\nok") < pipe:
                b = s.recv(4096)
                if not b:
                    raise Exception("closed")
                resp += b
        body = ("%.1f" % ((time.monotonic() - start) * 1000)).encode()
        s.close()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
`

// TestNagleSingleSegment: an injected request written in one write by a
// sender with Nagle on must leave in one piece. bpf_msg_push_data cuts the
// message in three; sent as they are, only the first piece goes out and the
// rest waits for the peer's ACK of it, which a peer holding half a header
// block delays by 40 ms: every request of a keep-alive connection took that
// long (nginx through an upstream keepalive pool: 30x slower). The
// downstream checks that each write's header blocks arrive whole in its
// first read; with two pipelined requests per write, both injected.
func TestNagleSingleSegment(t *testing.T) {
	tr, p, _ := attached(t)
	sender := startPyScript(t, pyNagleSender)
	if err := tr.Trace(uint32(sender.pid)); err != nil {
		t.Fatal(err)
	}
	for _, pipe := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d per write", pipe), func(t *testing.T) { nagleRun(t, p, sender, pipe) })
	}
}

// nagleRun has sender send 30 writes of pipe requests with Nagle on.
func nagleRun(t *testing.T, p *Propagator, sender script, pipe int) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var requests, cut, injected atomic.Int64
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				buf := make([]byte, 65536)
				for {
					n, err := conn.Read(buf)
					if err != nil {
						return
					}
					got := buf[:n]
					blocks := func() int { return bytes.Count(got, []byte("\r\n\r\n")) }
					if blocks() < pipe || !bytes.HasSuffix(got, []byte("\r\n\r\n")) {
						cut.Add(1)
						for blocks() < pipe || !bytes.HasSuffix(got, []byte("\r\n\r\n")) {
							m, err := conn.Read(buf[len(got):])
							if err != nil {
								return
							}
							got = buf[:len(got)+m]
						}
					}
					requests.Add(int64(blocks()))
					injected.Add(int64(bytes.Count(got, []byte("\r\ntraceparent: 00-"))))
					if _, err := io.WriteString(conn, strings.Repeat("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", blocks())); err != nil {
						return
					}
				}
			}()
		}
	}()
	const n = 30
	before, err := p.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/ka?port=%d&n=%d&pipe=%d", sender.port, l.Addr().(*net.TCPAddr).Port, n, pipe), nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	after, err := p.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	took := strings.TrimSpace(string(body))
	t.Logf("%d requests on one Nagle connection in %s ms; %d with a traceparent, %d header blocks cut; counters %+v", requests.Load(), took, injected.Load(), cut.Load(), after)
	if resp.StatusCode != http.StatusOK || requests.Load() != int64(n*pipe) {
		t.Fatalf("sender: status %d %q, downstream saw %d requests of %d", resp.StatusCode, body, requests.Load(), n*pipe)
	}
	if injected.Load() != int64(n*pipe) {
		t.Errorf("requests with a traceparent: %d of %d", injected.Load(), n*pipe)
	}
	if cut.Load() != 0 {
		t.Errorf("header blocks that did not arrive in one read: %d of %d (the injected message left in pieces)", cut.Load(), n)
	}
	if after.Unmerged != before.Unmerged {
		t.Errorf("unmerged counter moved: %d -> %d", before.Unmerged, after.Unmerged)
	}
	var ms float64
	if _, err := fmt.Sscan(took, &ms); err != nil {
		t.Fatalf("sender's time %q: %v", took, err)
	}
	// 40 ms each with the pieces held by Nagle; ~0.1 ms each here otherwise.
	if ms > 20*n {
		t.Errorf("%d requests took %.1f ms: over 20 ms each", n, ms)
	}
}
