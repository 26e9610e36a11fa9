//go:build linux && privileged

package ctxprop

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/ebpftracing/ebpftracingreceiver/bpf/goruntime"
	"github.com/ebpftracing/ebpftracingreceiver/bpf/httptrace"
	"github.com/ebpftracing/ebpftracingreceiver/internal/kernelprobe"
	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
)

// A thread-per-request Python server: GET /call?port=N calls
// 127.0.0.1:N/ with urllib (optionally setting its own traceparent) and
// returns the downstream's body; any other path returns the traceparent
// header(s) it received.
const pyServer = `
import subprocess, sys, threading, urllib.request, urllib.parse
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(u.query)
        if u.path == "/process-call":
            body = subprocess.run([sys.executable, "-c",
                "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:%s/').read().decode())" % q["port"][0]],
                capture_output=True, check=True).stdout
        elif u.path in ("/call", "/thread-call"):
            req = urllib.request.Request("http://127.0.0.1:%s/" % q["port"][0])
            if "tp" in q:
                req.add_header("traceparent", q["tp"][0])
            out = []
            call = lambda: out.append(urllib.request.urlopen(req).read())
            if u.path == "/call":
                call()
            else:
                th = threading.Thread(target=call)
                th.start()
                th.join()
            body = out[0]
        else:
            body = "|".join(self.headers.get_all("traceparent") or []).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
`

func startPy(t *testing.T) (int, int) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command("python3", "-c", pyServer, fmt.Sprint(port))
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
	return cmd.Process.Pid, port
}

// attached loads and attaches httptrace and the injector (on the cgroup v2
// root) and opens the ring buffer, all closed when the test ends.
func attached(t *testing.T) (*httptrace.Tracer, *Propagator, *ringbuf.Reader) {
	t.Helper()
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	report, err := kernelprobe.Probe()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := httptrace.Load(httptrace.Options{RingBufferSize: 1 << 20, TrackRequestHeaders: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	if err := tr.Attach(); err != nil {
		t.Fatal(err)
	}
	p, err := Load(tr.Shared(), httptrace.Sampler{}, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if err := p.Attach(report.CgroupV2); err != nil {
		t.Fatal(err)
	}
	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rd.Close() })
	return tr, p, rd
}

func get(t *testing.T, url string) string {
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestInjectTraceparent(t *testing.T) {
	tr, p, rd := attached(t)

	proxyPid, proxyPort := startPy(t)
	_, downPort := startPy(t) // not traced: reports what it received
	if err := tr.Trace(uint32(proxyPid)); err != nil {
		t.Fatal(err)
	}

	// Injected: the downstream gets exactly one header naming the CLIENT span.
	got := get(t, fmt.Sprintf("http://127.0.0.1:%d/call?port=%d", proxyPort, downPort))
	reqs := read(t, rd, 2)
	var server, client spans.Request
	for _, r := range reqs {
		if r.Kind == spans.KindServer {
			server = r
		} else {
			client = r
		}
	}
	// A root context: sampled (0x01) and a random trace id (0x02, W3C Level 2).
	want := fmt.Sprintf("00-%s-%s-03", client.TraceID, client.SpanID)
	if got != want {
		t.Fatalf("downstream received %q, want %q", got, want)
	}
	if client.TraceID != server.TraceID || client.ParentSpanID != server.SpanID {
		t.Errorf("client span not a child of the server span: %+v / %+v", client, server)
	}

	// The application's own header is kept and not duplicated.
	own := "00-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb-01"
	got = get(t, fmt.Sprintf("http://127.0.0.1:%d/call?port=%d&tp=%s", proxyPort, downPort, own))
	if got != own {
		t.Fatalf("downstream received %q, want only the app's %q", got, own)
	}
	reqs = read(t, rd, 2)
	for _, r := range reqs {
		if r.Kind == spans.KindClient && (r.TraceID.String() != strings.Repeat("a", 32) || r.SpanID.String() != strings.Repeat("b", 16)) {
			t.Errorf("client span does not use the app's ids: %+v", r)
		}
	}
	// A thread created while serving inherits the context.
	got = get(t, fmt.Sprintf("http://127.0.0.1:%d/thread-call?port=%d", proxyPort, downPort))
	reqs = read(t, rd, 2)
	for _, r := range reqs {
		if r.Kind == spans.KindServer {
			server = r
		} else {
			client = r
		}
	}
	if want := fmt.Sprintf("00-%s-%s-03", client.TraceID, client.SpanID); got != want {
		t.Errorf("call from a new thread: downstream received %q, want %q", got, want)
	}
	if client.TraceID != server.TraceID || client.ParentSpanID != server.SpanID {
		t.Errorf("call from a new thread is not a child of the server span: %+v / %+v", client, server)
	}

	// A process created while serving (here python running urllib) is traced
	// while it lives and inherits the context.
	got = get(t, fmt.Sprintf("http://127.0.0.1:%d/process-call?port=%d", proxyPort, downPort))
	reqs = read(t, rd, 2)
	for _, r := range reqs {
		if r.Kind == spans.KindServer {
			server = r
		} else {
			client = r
		}
	}
	if want := fmt.Sprintf("00-%s-%s-03", client.TraceID, client.SpanID); got != want {
		t.Errorf("call from a child process: downstream received %q, want %q", got, want)
	}
	if client.TraceID != server.TraceID || client.ParentSpanID != server.SpanID || client.PID == server.PID {
		t.Errorf("call from a child process is not a child of the server span: %+v / %+v", client, server)
	}
	// ...and stops being traced when it exits.
	var key, val uint32
	for it := tr.Shared().TracedPids.Iterate(); it.Next(&key, &val); {
		if key == client.PID {
			t.Errorf("exited child process %d still traced (value %d)", key, val)
		}
	}

	// A request that is not served under a traced request gets nothing.
	if got := get(t, fmt.Sprintf("http://127.0.0.1:%d/", downPort)); got != "" {
		t.Errorf("untraced request received %q", got)
	}
	c, err := p.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	if c.Injected != 3 || c.AppHeader != 1 {
		t.Errorf("counters %+v, want 3 injected and 1 app header", c)
	}
}

func read(t *testing.T, rd *ringbuf.Reader, want int) []spans.Request {
	var out []spans.Request
	clock := httptrace.NewClock(0)
	deadline := time.Now().Add(5 * time.Second)
	for len(out) < want && time.Now().Before(deadline) {
		rd.SetDeadline(time.Now().Add(100 * time.Millisecond))
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if httptrace.IsTraceState(rec.RawSample) {
			continue // the tracestate of a SERVER span, not a span
		}
		var r spans.Request
		if err := httptrace.Decode(rec.RawSample, clock, &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	if len(out) != want {
		t.Fatalf("got %d records, want %d", len(out), want)
	}
	return out
}

// The context of a request ends with its response: the next request served
// by the same thread on the same keep-alive connection gets its own.
func TestContextEndsWithResponse(t *testing.T) {
	tr, _, rd := attached(t)
	proxyPid, proxyPort := startPy(t)
	_, downPort := startPy(t)
	if err := tr.Trace(uint32(proxyPid)); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}} // one keep-alive connection
	call := func(incoming string) (string, []spans.Request) {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/call?port=%d", proxyPort, downPort), nil)
		if incoming != "" {
			req.Header.Set("traceparent", incoming)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), read(t, rd, 2)
	}
	first := "00-11111111111111111111111111111111-2222222222222222-01"
	got1, _ := call(first)
	if !strings.HasPrefix(got1, "00-11111111111111111111111111111111-") {
		t.Fatalf("first call: downstream received %q", got1)
	}
	got2, reqs := call("")
	if strings.Contains(got2, "1111111111111111") {
		t.Fatalf("second request on the same connection got the first one's context: %q", got2)
	}
	var server spans.Request
	for _, r := range reqs {
		if r.Kind == spans.KindServer {
			server = r
		}
	}
	if !strings.HasPrefix(got2, "00-"+server.TraceID.String()+"-") {
		t.Errorf("second call: downstream received %q, want the second request's trace %s", got2, server.TraceID)
	}
}

// A Go service's outgoing requests get the context of the request they serve,
// also on a pooled keep-alive connection, where the transport's writeLoop
// goroutine writes them (goroutine tracking and the net/http hand-over).
func TestGoPooledConnection(t *testing.T) {
	tr, _, rd := attached(t)
	port := startGoTraced(t, tr, "./testdata/goproxy").port
	_, downPort := startPy(t)

	seen := map[string]bool{}
	for i := 0; i < 4; i++ {
		got := get(t, fmt.Sprintf("http://127.0.0.1:%d/call?port=%d", port, downPort))
		var server, client spans.Request
		for _, r := range read(t, rd, 2) {
			if r.Kind == spans.KindServer {
				server = r
			} else {
				client = r
			}
		}
		want := fmt.Sprintf("00-%s-%s-03", server.TraceID, client.SpanID)
		if got != want {
			t.Errorf("call %d: downstream received %q, want %q", i, got, want)
		}
		if client.ParentSpanID != server.SpanID {
			t.Errorf("call %d: CLIENT span parent %s, want the SERVER span %s", i, client.ParentSpanID, server.SpanID)
		}
		seen[server.TraceID.String()] = true
	}
	if len(seen) != 4 {
		t.Errorf("%d distinct traces for 4 calls", len(seen))
	}
}

// startGoTraced builds the Go program of pkg, runs it with a free port as
// its argument until the test ends, traces it, and attaches goroutine
// tracking (with the net/http hand-over) to it.
func startGoTraced(t *testing.T, tr *httptrace.Tracer, pkg string) script {
	t.Helper()
	sh := tr.Shared()
	gr, err := goruntime.Load(goruntime.Maps{TracedPids: sh.TracedPids, ThreadCtxs: sh.ThreadCtxs, GoProcs: sh.GoProcs, GoCtxs: sh.GoCtxs, GoParents: sh.GoParents}, goruntime.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gr.Close() })
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	sc := startScript(t, bin)
	if err := tr.Trace(uint32(sc.pid)); err != nil {
		t.Fatal(err)
	}
	if err := gr.AttachProcess(sc.pid, bin); err != nil {
		t.Fatal(err)
	}
	return sc
}

// A connection the process opened before it was traced (a keep-alive pool)
// is injected once AddExisting has put it in the sockhash.
func TestExistingConnection(t *testing.T) {
	_, downPort := startPy(t)
	// One connection, opened at start-up and reused by every request.
	pooled := fmt.Sprintf(`
import sys, http.client
from http.server import HTTPServer, BaseHTTPRequestHandler
conn = http.client.HTTPConnection("127.0.0.1", %d)
conn.connect()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        conn.request("GET", "/")
        body = conn.getresponse().read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
s = HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print("ready", flush=True)
s.serve_forever()
`, downPort)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command("python3", "-c", pooled, fmt.Sprint(port))
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

	tr, p, rd := attached(t)
	if err := tr.Trace(uint32(cmd.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	if got := get(t, url); got != "" {
		t.Fatalf("before AddExisting the pooled connection is not in the sockhash, yet %q was received", got)
	}
	read(t, rd, 2)
	if err := p.AddExisting(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	got := get(t, url)
	var client spans.Request
	for _, r := range read(t, rd, 2) {
		if r.Kind == spans.KindClient {
			client = r
		}
	}
	if want := fmt.Sprintf("00-%s-%s-03", client.TraceID, client.SpanID); got != want {
		t.Errorf("pooled connection after AddExisting: downstream received %q, want %q", got, want)
	}
}

// TestExistingBlockedReader: a process traced while one of its threads is
// blocked in recv() on a connection it opened. The connection must still
// deliver what the peer sends next, to that same blocked call, whatever
// AddExisting does with it (with an SK_SKB verdict on the sockhash, a
// socket enrolled under a blocked reader would leave the data where that
// reader no longer looks).
func TestExistingBlockedReader(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	client := fmt.Sprintf(`
import socket, sys
s = socket.create_connection(("127.0.0.1", %d))
s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
print("blocked", flush=True)
data = s.recv(100)
print("got", len(data), flush=True)
`, l.Addr().(*net.TCPAddr).Port)
	cmd := exec.Command("python3", "-c", client)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewReader(out)
	if _, err := lines.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	var srv net.Conn
	select {
	case srv = <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("client did not connect")
	}
	defer srv.Close()
	req := make([]byte, 200)
	if _, err := srv.Read(req); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // the client is in recv() now

	tr, p, _ := attached(t)
	if err := tr.Trace(uint32(cmd.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	if err := p.AddExisting(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Write([]byte("HTTP/1.1 204 No Content\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		s, _ := lines.ReadString('\n')
		got <- s
	}()
	select {
	case s := <-got:
		if s != "got 27\n" {
			t.Fatalf("blocked reader: %q, want %q", s, "got 27\n")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the reader blocked in recv() when its process was traced never got the response")
	}
}
