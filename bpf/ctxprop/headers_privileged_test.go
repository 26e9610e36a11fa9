//go:build linux && privileged

package ctxprop

import (
	"bufio"
	"bytes"
	"cmp"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/ebpftracing/ebpftracingreceiver/bpf/httptrace"
	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
	"go.opentelemetry.io/collector/pdata/pcommon"
)

// A Python server whose POST /send?port=N&wait=F with body "a,b,...\n<raw
// HTTP request>" waits until file F exists, then connects to 127.0.0.1:N and
// writes the raw request with one send per range [0,a) [a,b) ... [last,end),
// reads the response until the server closes and returns its status line, a
// newline and the bytes it sent. testdata/nodesender.js and
// testdata/gosender speak the same protocol, and with lib=1 send the request
// with their HTTP library instead (its header lines given to the library),
// returning the bytes the library wrote.
const pyRawSender = `
import os, socket, sys, time, urllib.parse
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        cuts, raw = self.rfile.read(int(self.headers["Content-Length"])).split(b"\n", 1)
        while not os.path.exists(q["wait"][0]):
            time.sleep(0.005)
        cuts = [int(c) for c in cuts.split(b",") if c]
        s = socket.create_connection(("127.0.0.1", int(q["port"][0])))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        prev = 0
        for c in cuts + [len(raw)]:
            s.sendall(raw[prev:c])
            prev = c
            time.sleep(0.005)
        resp = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            resp += b
        s.close()
        body = resp.split(b"\r\n")[0] + b"\n" + raw
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
`

// rawCapture is a downstream that records the exact bytes of each
// connection's requests (up to and with the end of the requests-th header
// block), answers each with 200 in one write and closes.
type rawCapture struct {
	l        net.Listener
	got      chan []byte
	requests atomic.Int32 // header blocks per connection; 0 is 1
}

func startRawCapture(t *testing.T) *rawCapture {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &rawCapture{l: l, got: make(chan []byte, 16)}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			n := max(1, int(c.requests.Load()))
			go func() {
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
				var buf []byte
				chunk := make([]byte, 65536)
				for bytes.Count(buf, []byte("\r\n\r\n")) < n {
					k, err := conn.Read(chunk)
					buf = append(buf, chunk[:k]...)
					if err != nil {
						break
					}
				}
				c.got <- buf
				resp := strings.Repeat("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", n-1) +
					"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
				_, _ = io.WriteString(conn, resp)
			}()
		}
	}()
	return c
}

func (c *rawCapture) port() int { return c.l.Addr().(*net.TCPAddr).Port }

func (c *rawCapture) next(t *testing.T) []byte {
	t.Helper()
	select {
	case b := <-c.got:
		return b
	case <-time.After(10 * time.Second):
		t.Fatal("the downstream received no request")
		return nil
	}
}

// rawRequest is "GET /raw HTTP/1.1", Host, then the extra header lines,
// then the blank line.
func rawRequest(extra ...string) []byte {
	var b strings.Builder
	b.WriteString("GET /raw?x=1 HTTP/1.1\r\nHost: downstream\r\n")
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	return []byte(b.String())
}

// padHeaders is n header lines of size bytes each (with their CRLF).
func padHeaders(n, size int) []string {
	out := make([]string, n)
	for i := range out {
		name := fmt.Sprintf("X-Pad-%03d: ", i)
		out[i] = name + strings.Repeat("p", size-len(name)-2)
	}
	return out
}

// every is the cut offsets every step bytes from first, below n.
func every(first, step, n int) []int {
	var out []int
	for c := first; c < n; c += step {
		out = append(out, c)
	}
	return out
}

// headerCase is one request of TestHeaderBlocks.
type headerCase struct {
	name       string
	raw        []byte
	cuts       []int
	flags      string // of the incoming traceparent
	tracestate string // put in tracestates for the SERVER span
	inject     string // tracestate value expected after the traceparent
	untouched  bool
	appIDs     bool // the CLIENT span has the ids of the app's own traceparent (ownTP)
	counter    func(c Counters) uint64
	// Pipelined requests in the raw bytes: requests header blocks (0 is
	// 1), the first injected of them get a header (0: all), clients of
	// them get a CLIENT span (0: all).
	requests, injected, clients int
}

// headerSender is a traced process serving POST /send (see pyRawSender).
type headerSender struct {
	name string
	lib  bool // also sends with its HTTP library (lib=1)
	// libWrite is the library's write buffer: a longer header block goes
	// in several writes (0: one write whatever the size).
	libWrite int
	script
}

const (
	headerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	// ownTP is an application's own traceparent line.
	ownTP = "traceparent: 00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01"
)

// TestHeaderBlocks sends requests from traced Python, Node and Go processes
// serving a traced request: raw, in one or in several writes (Python
// socket.sendall, Node net.Socket.write, Go net.Conn.Write), and through
// Node's http.request and Go's net/http client (which writes a block in
// 4 KiB writes), and checks the exact bytes the downstream received: what
// the sender wrote, plus at its header block's end one traceparent (and the
// context's tracestate) line naming the CLIENT span, or untouched.
func TestHeaderBlocks(t *testing.T) {
	tr, p, rd := attached(t)
	py := startPyScript(t, pyRawSender)
	node := startScript(t, "node", "testdata/nodesender.js")
	for _, pid := range []int{py.pid, node.pid} {
		if err := tr.Trace(uint32(pid)); err != nil {
			t.Fatal(err)
		}
	}
	senders := []headerSender{
		{name: "python", script: py},
		{name: "node", lib: true, script: node},
		{name: "go", lib: true, libWrite: 4096, script: startGoTraced(t, tr, "./testdata/gosender")},
	}
	down := startRawCapture(t)

	big := rawRequest(padHeaders(40, 100)...) // 4 KiB
	cookie := rawRequest("Accept: */*", "Cookie: c="+strings.Repeat("k", 6144), "User-Agent: raw")
	block16k := rawRequest(padHeaders(162, 100)...)
	over16k := rawRequest(padHeaders(166, 100)...)
	ownSplit := rawRequest("Accept: */*", "X-A: 1", "TraceParent: 00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01")
	nameAt := bytes.Index(ownSplit, []byte("TraceParent"))
	small := rawRequest("Accept: */*")
	second := rawRequest("X-Second: 2")
	cat := func(rs ...[]byte) []byte { return bytes.Join(rs, nil) }
	for _, tc := range []headerCase{
		// httptrace needs 16 bytes in the first write for a CLIENT span.
		{name: "small", raw: small},
		{name: "unsampled", raw: small, flags: "00"},
		{name: "40 headers of 100 bytes", raw: big},
		{name: "6 KiB cookie", raw: cookie},
		{name: "16 KiB block", raw: block16k},
		{name: "tracestate", raw: small, tracestate: "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7", inject: "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"},
		{name: "own tracestate", raw: rawRequest("TRACESTATE: app=1"), tracestate: "ours=1"},
		{name: "own traceparent", raw: rawRequest("Accept: */*", ownTP), tracestate: "ours=1", untouched: true, appIDs: true, counter: func(c Counters) uint64 { return c.AppHeader }},
		{name: "writes of 7 bytes", raw: big, cuts: append(every(20, 7, 600), every(600, 500, len(big))...), counter: func(c Counters) uint64 { return c.Split }},
		{name: "writes of 4096 bytes", raw: block16k, cuts: every(4096, 4096, len(block16k)), counter: func(c Counters) uint64 { return c.Split }},
		{name: "request line alone", raw: cookie, cuts: []int{bytes.IndexByte(cookie, '\n') + 1}, counter: func(c Counters) uint64 { return c.Split }},
		{name: "blank line cut", raw: small, cuts: []int{len(small) - 2, len(small) - 1}, counter: func(c Counters) uint64 { return c.Split }},
		{name: "blank line alone", raw: small, cuts: []int{len(small) - 2}, counter: func(c Counters) uint64 { return c.Split }},
		{name: "own traceparent, name cut", raw: ownSplit, cuts: []int{nameAt + 3, nameAt + 5, nameAt + 20}, untouched: true, counter: func(c Counters) uint64 { return c.AppHeader }},
		{name: "own traceparent, later write", raw: ownSplit, cuts: []int{nameAt}, untouched: true, appIDs: true, counter: func(c Counters) uint64 { return c.AppHeader }},
		// Go's net/http writes it in the second 4 KiB write.
		{name: "own traceparent after 6 KiB", raw: rawRequest("Cookie: c="+strings.Repeat("k", 6144), ownTP), untouched: true, appIDs: true, counter: func(c Counters) uint64 { return c.AppHeader }},
		{name: "over 16 KiB", raw: over16k, untouched: true, counter: func(c Counters) uint64 { return c.HeadersTooLong }},
		{name: "over 16 KiB in writes", raw: over16k, cuts: every(4096, 4096, len(over16k)), untouched: true, counter: func(c Counters) uint64 { return c.HeadersTooLong }},
		// A pipelining client: each request of a write gets its own CLIENT
		// span and header, as far as httptrace sees the write.
		{name: "two requests in one write", raw: cat(small, second), requests: 2},
		{name: "four requests in one write", raw: cat(small, second, rawRequest(padHeaders(3, 100)...), small), requests: 4},
		{name: "second with its own traceparent", raw: cat(small, rawRequest(ownTP), second), requests: 3, counter: func(c Counters) uint64 { return c.AppHeader }},
		{name: "five requests in one write", raw: cat(small, small, small, small, second), requests: 5, injected: 4, clients: 4, counter: func(c Counters) uint64 { return c.PipelinedSkipped }},
		{name: "second past 1 KiB", raw: cat(rawRequest(padHeaders(10, 100)...), second), requests: 2, injected: 1, clients: 1, counter: func(c Counters) uint64 { return c.PipelinedSkipped }},
		{name: "second block in the next write", raw: cat(small, second), cuts: []int{len(small) + 30}, requests: 2, injected: 1, counter: func(c Counters) uint64 { return c.PipelinedSkipped }},
		{name: "second after a split first", raw: cat(small, second), cuts: []int{20}, requests: 2, injected: 1, clients: 1, counter: func(c Counters) uint64 { return c.PipelinedSkipped }},
	} {
		for _, snd := range senders {
			for _, lib := range []bool{false, true} {
				// The library chooses its own writes.
				if lib && (!snd.lib || tc.cuts != nil || tc.requests > 1) {
					continue
				}
				mode := "raw"
				if lib {
					mode = "lib"
				}
				t.Run(snd.name+"/"+mode+"/"+tc.name, func(t *testing.T) {
					sendHeaderBlock(t, tr, p, rd, down, snd, lib, tc)
				})
			}
		}
	}
}

// sendHeaderBlock has sender send tc's request to down while it serves a
// request of headerTrace, and checks what down received.
func sendHeaderBlock(t *testing.T, tr *httptrace.Tracer, p *Propagator, rd *ringbuf.Reader, down *rawCapture, sender headerSender, lib bool, tc headerCase) {
	const trace = headerTrace
	flags := tc.flags
	if flags == "" {
		flags = "01"
	}
	down.requests.Store(int32(tc.requests))
	before, err := p.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	wait := filepath.Join(t.TempDir(), "go")
	cuts := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(tc.cuts)), ","), "[]")
	url := fmt.Sprintf("http://127.0.0.1:%d/send?port=%d&wait=%s", sender.port, down.port(), wait)
	if lib {
		url += "&lib=1"
	}
	req, err := http.NewRequest("POST", url, strings.NewReader(cuts+"\n"+string(tc.raw)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("traceparent", "00-"+trace+"-00f067aa0ba902b7-"+flags)
	done := make(chan string, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		done <- string(b)
	}()
	// The sender serves the request: name its SERVER span's
	// tracestate, then let it call.
	server := serverSpanOf(t, tr, trace)
	if tc.tracestate != "" {
		var v [520]byte
		v[0] = byte(len(tc.tracestate))
		copy(v[8:], tc.tracestate)
		if err := tr.Shared().Tracestates.Put(server, v); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tr.Shared().Tracestates.Delete(server) })
	}
	if err := os.WriteFile(wait, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	got := down.next(t)
	status, sent, _ := strings.Cut(<-done, "\n")
	if status != "HTTP/1.1 200 OK" {
		t.Fatalf("sender: %q", status)
	}
	requests := max(1, tc.requests)
	injected := cmp.Or(tc.injected, requests)
	var clients []spans.Request
	if flags == "00" {
		// An unsampled context sends no span: the id is the one the
		// downstream received, checked to be a valid span id.
		i := bytes.Index(got, []byte("traceparent: 00-"+trace+"-"))
		if i < 0 || len(got) < i+len("traceparent: 00-")+32+1+16 {
			t.Fatalf("no traceparent of trace %s downstream: %q", trace, tail(got))
		}
		id := got[i+len("traceparent: 00-")+33:][:16]
		b, err := hex.DecodeString(string(id))
		if err != nil || bytes.Equal(b, make([]byte, 8)) {
			t.Fatalf("span id %q", id)
		}
		var client spans.Request
		copy(client.SpanID[:], b)
		client.TraceID = mustTraceID(t, trace)
		clients = append(clients, client)
	} else {
		for _, r := range read(t, rd, 1+cmp.Or(tc.clients, requests)) {
			if r.Kind == spans.KindClient {
				clients = append(clients, r)
			}
		}
	}
	after, err := p.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	if tc.counter != nil && tc.counter(after) != tc.counter(before)+1 {
		t.Errorf("counter did not increment: %+v -> %+v", before, after)
	}
	if !lib && sent != string(tc.raw) {
		t.Fatalf("the sender wrote %d bytes, not the %d given", len(sent), len(tc.raw))
	}
	if tc.untouched {
		if string(got) != sent {
			t.Fatalf("downstream received %d bytes, want the %d sent untouched:\n%q", len(got), len(sent), head(got))
		}
		if after.Injected != before.Injected {
			t.Errorf("injected counter moved: %+v -> %+v", before, after)
		}
		if tc.appIDs && (len(clients) != 1 || clients[0].TraceID.String() != strings.Repeat("a", 32) || clients[0].SpanID.String() != strings.Repeat("b", 16)) {
			t.Errorf("CLIENT span %+v, want the ids of the app's own %q", clients, ownTP)
		}
		return
	}
	ts := ""
	if tc.inject != "" {
		ts = "tracestate: " + tc.inject + "\r\n"
	}
	// The sent bytes with, at the end of each of the first injected header
	// blocks that have no traceparent of their own, the header naming its
	// CLIENT span.
	var want strings.Builder
	rest, added := sent, 0
	for i := range requests {
		end := strings.Index(rest, "\r\n\r\n") + 2 // the last header line's end
		if end < 2 {
			t.Fatalf("the sender wrote no header block %d: %q", i, head([]byte(rest)))
		}
		want.WriteString(rest[:end])
		if i < injected && !strings.Contains(strings.ToLower(rest[:end]), "\r\ntraceparent:") {
			if i >= len(clients) {
				t.Fatalf("%d CLIENT spans for %d requests", len(clients), requests)
			}
			c := clients[i]
			if c.TraceID.String() != trace || c.SpanID.IsEmpty() {
				t.Fatalf("CLIENT span %d: %+v", i, c)
			}
			fmt.Fprintf(&want, "traceparent: 00-%s-%s-%s\r\n%s", trace, c.SpanID, flags, ts)
			added++
		}
		rest = rest[end:]
		if i == requests-1 {
			want.WriteString(rest)
		} else {
			want.WriteString(rest[:2])
			rest = rest[2:]
		}
	}
	if string(got) != want.String() {
		t.Fatalf("downstream received %d bytes, want %d:\n got %q\nwant %q", len(got), want.Len(), tail(got), tail([]byte(want.String())))
	}
	if after.Injected != before.Injected+uint64(added) {
		t.Errorf("injected counter: %+v -> %+v, want +%d", before, after, added)
	}
	if end := strings.Index(sent, "\r\n\r\n"); lib && sender.libWrite > 0 && end > sender.libWrite && after.Split != before.Split+1 {
		t.Errorf("a %d-byte block from the library was not injected across writes: %+v -> %+v", end, before, after)
	}
}

func head(b []byte) []byte { return b[:min(len(b), 300)] }
func tail(b []byte) []byte { return b[max(0, len(b)-300):] }

// serverSpanOf waits for a thread (or goroutine) serving a request of trace
// and returns its SERVER span id.
func serverSpanOf(t *testing.T, tr *httptrace.Tracer, trace string) [8]byte {
	t.Helper()
	want, _ := hex.DecodeString(trace)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range []*ebpf.Map{tr.Shared().ThreadCtxs, tr.Shared().GoCtxs} {
			k := make([]byte, m.KeySize())
			v := make([]byte, m.ValueSize())
			for it := m.Iterate(); it.Next(k, v); {
				if bytes.Equal(v[:16], want) {
					var id [8]byte
					copy(id[:], v[16:24])
					return id
				}
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no thread serves trace %s", trace)
	return [8]byte{}
}

type script struct{ pid, port int }

// startPyScript runs a Python server script on a free port until the test
// ends.
func startPyScript(t *testing.T, src string) script {
	return startScript(t, "python3", "-c", src)
}

// startScript runs argv with a free port appended until the test ends, and
// waits for its first line ("ready").
func startScript(t *testing.T, argv ...string) script {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command(argv[0], append(argv[1:], fmt.Sprint(port))...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	return script{pid: cmd.Process.Pid, port: port}
}

func mustTraceID(t *testing.T, s string) (id pcommon.TraceID) {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != 16 {
		t.Fatalf("trace id %q", s)
	}
	copy(id[:], b)
	return id
}
