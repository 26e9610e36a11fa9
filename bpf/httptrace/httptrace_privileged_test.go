//go:build linux && privileged

package httptrace

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
)

func monoNow(t *testing.T) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ts.Nano())
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startPython starts python3's http.server and waits until it accepts.
func startPython(t *testing.T, port int) *exec.Cmd {
	cmd := exec.Command("python3", "-m", "http.server", fmt.Sprint(port), "--bind", "127.0.0.1", "--protocol", "HTTP/1.1")
	cmd.Dir = t.TempDir()
	if err := os.WriteFile(cmd.Dir+"/hello", []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			c.Close()
			return cmd
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("python server did not start")
	return nil
}

// attached loads and attaches a tracer and opens its ring buffer, all
// closed when the test ends.
func attached(t *testing.T, opts Options) (*Tracer, *ringbuf.Reader) {
	t.Helper()
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	tr, err := Load(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	if err := tr.Attach(); err != nil {
		t.Fatal(err)
	}
	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rd.Close() })
	return tr, rd
}

func readRequests(t *testing.T, rd *ringbuf.Reader, clock Clock, want int, timeout time.Duration) []spans.Request {
	var out []spans.Request
	ts := NewTraceStates()
	deadline := time.Now().Add(timeout)
	for len(out) < want && time.Now().Before(deadline) {
		rd.SetDeadline(time.Now().Add(100 * time.Millisecond))
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if IsTraceState(rec.RawSample) {
			if err := ts.Add(rec.RawSample); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var r spans.Request
		if err := Decode(rec.RawSample, clock, &r); err != nil {
			t.Fatal(err)
		}
		ts.Apply(&r)
		out = append(out, r)
	}
	return out
}

func TestTracerServerAndPipelining(t *testing.T) {
	for _, v := range Variants {
		t.Run(v, func(t *testing.T) { testServerAndPipelining(t, v) })
	}
}

// forVariants runs test once per hook: the socket tracepoints (the default)
// and the sys_exit fallback.
func forVariants(t *testing.T, test func(t *testing.T, variant string)) {
	for _, v := range []string{VariantSocket, VariantTPBTF} {
		t.Run(v, func(t *testing.T) { test(t, v) })
	}
}

func testServerAndPipelining(t *testing.T, variant string) {
	tr, rd := attached(t, Options{RingBufferSize: 1 << 20, WakeupRecords: 0, TrackRequestHeaders: true, Variant: variant})
	if tr.Variant() != variant {
		t.Fatalf("attached %s, want %s", tr.Variant(), variant)
	}
	clock := NewClock(monoNow(t))

	port := freePort(t)
	py := startPython(t, port)
	if err := tr.Trace(uint32(py.Process.Pid)); err != nil {
		t.Fatal(err)
	}

	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := "GET /hello?a=1 HTTP/1.1\r\nHost: example.test:8080\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n" +
		"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for i := 0; i < 3; i++ {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		// Drain headers and body.
		cl := 0
		for {
			h, err := br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if h == "\r\n" {
				break
			}
			if strings.HasPrefix(strings.ToLower(h), "content-length:") {
				fmt.Sscanf(strings.TrimSpace(h[15:]), "%d", &cl)
			}
		}
		if i == 1 {
			cl = 0 // HEAD
		}
		if _, err := br.Discard(cl); err != nil {
			t.Fatal(err)
		}
		t.Logf("response %d: %s", i, strings.TrimSpace(line))
	}

	got := readRequests(t, rd, clock, 3, 5*time.Second)
	if len(got) != 3 {
		t.Fatalf("got %d requests, want 3: %+v", len(got), got)
	}
	if got[0].Path != "/hello?a=1" || got[0].Method != "GET" || got[0].Status != 200 || got[0].Kind != spans.KindServer {
		t.Errorf("first: %+v", got[0])
	}
	if got[0].TraceID.String() != "4bf92f3577b34da6a3ce929d0e0e4736" || got[0].ParentSpanID.String() != "00f067aa0ba902b7" {
		t.Errorf("traceparent not honoured: trace %s parent %s", got[0].TraceID, got[0].ParentSpanID)
	}
	if got[0].Host != "example.test:8080" {
		t.Errorf("host %q", got[0].Host)
	}
	if got[0].Local.Port() != uint16(port) || got[0].Local.Addr().String() != "127.0.0.1" {
		t.Errorf("local %v", got[0].Local)
	}
	if got[2].Path != "/missing" || got[2].Status != 404 {
		t.Errorf("third: %+v", got[2])
	}
	if got[1].ParentSpanID != ([8]byte{}) || got[1].TraceID == got[0].TraceID {
		t.Errorf("second request must start its own trace: %+v", got[1])
	}
	if got[1].Method != "HEAD" || got[1].Status != 200 {
		t.Errorf("second: %+v", got[1])
	}
	for _, r := range got {
		if !r.End.After(r.Start) && !r.End.Equal(r.Start) {
			t.Errorf("end before start: %+v", r)
		}
		if d := time.Since(r.Start); d < 0 || d > time.Minute {
			t.Errorf("start time off by %v", d)
		}
	}
}

// A server that reads the first byte of the next request on its own, as Go's
// net/http background read does, still gets its request traced.
func TestTracerOneBytePrefixRead(t *testing.T) { forVariants(t, testOneBytePrefixRead) }

func testOneBytePrefixRead(t *testing.T, variant string) {
	tr, rd := attached(t, Options{RingBufferSize: 1 << 20, TrackRequestHeaders: true, Variant: variant})
	clock := NewClock(monoNow(t))

	port := freePort(t)
	script := fmt.Sprintf(`
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", %d))
s.listen()
print("ready", flush=True)
c, _ = s.accept()
c.recv(4096)
c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
first = c.recv(1)
rest = c.recv(4096)
c.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
c.close()
`, port)
	py := exec.Command("python3", "-c", script)
	out, err := py.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := py.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = py.Process.Kill(); _ = py.Wait() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if err := tr.Trace(uint32(py.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 512)
	for _, path := range []string{"/first", "/second"} {
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	got := readRequests(t, rd, clock, 2, 5*time.Second)
	if len(got) != 2 {
		t.Fatalf("got %d requests, want 2: %+v", len(got), got)
	}
	if got[1].Path != "/second" || got[1].Method != "GET" || got[1].Status != 201 {
		t.Errorf("request after a 1-byte read: %+v", got[1])
	}
}

// Without bpf_loop (kernels before 5.17) the request line is still parsed,
// and headers are not.
func TestTracerWithoutBPFLoop(t *testing.T) { forVariants(t, testWithoutBPFLoop) }

func testWithoutBPFLoop(t *testing.T, variant string) {
	tr, rd := attached(t, Options{RingBufferSize: 1 << 20, TrackRequestHeaders: true, NoBPFLoop: true, Variant: variant})
	port := freePort(t)
	py := startPython(t, port)
	if err := tr.Trace(uint32(py.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /hello?x=1 HTTP/1.1\r\nHost: h\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 512)); err != nil {
		t.Fatal(err)
	}
	got := readRequests(t, rd, NewClock(monoNow(t)), 1, 5*time.Second)
	if len(got) != 1 {
		t.Fatalf("got %d requests", len(got))
	}
	r := got[0]
	if r.Method != "GET" || r.Path != "/hello?x=1" || r.Status != 200 {
		t.Errorf("request line not parsed: %+v", r)
	}
	if r.Host != "" || r.ParentSpanID != ([8]byte{}) || r.TraceID.String() == "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("headers parsed without bpf_loop: %+v", r)
	}
}

// An incoming traceparent is honoured only when valid per W3C Trace Context;
// otherwise the SERVER span starts a new trace.
func TestTracerTraceparentValidation(t *testing.T) { forVariants(t, testTraceparentValidation) }

func testTraceparentValidation(t *testing.T, variant string) {
	tr, rd := attached(t, Options{RingBufferSize: 1 << 20, TrackRequestHeaders: true, Variant: variant})
	port := freePort(t)
	py := startPython(t, port)
	if err := tr.Trace(uint32(py.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	cases := []struct {
		name, header string
		honoured     bool
	}{
		{"valid", "traceparent: 00-" + trace + "-" + parent + "-01", true},
		{"valid, not sampled", "traceparent: 00-" + trace + "-" + parent + "-00", true},
		{"header name in upper case", "TRACEPARENT: 00-" + trace + "-" + parent + "-01", true},
		{"no space after colon", "traceparent:00-" + trace + "-" + parent + "-01", true},
		{"future version with more fields", "traceparent: 01-" + trace + "-" + parent + "-01-what-ever", true},
		{"upper-case hex", "traceparent: 00-4BF92F3577B34DA6A3CE929D0E0E4736-" + parent + "-01", false},
		{"all-zero trace id", "traceparent: 00-00000000000000000000000000000000-" + parent + "-01", false},
		{"all-zero parent id", "traceparent: 00-" + trace + "-0000000000000000-01", false},
		{"version ff", "traceparent: ff-" + trace + "-" + parent + "-01", false},
		{"version 00 with trailing data", "traceparent: 00-" + trace + "-" + parent + "-01-extra", false},
		{"short trace id", "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e473-" + parent + "-01", false},
		{"long parent id", "traceparent: 00-" + trace + "-" + parent + "0-01", false},
		{"non-hex flags", "traceparent: 00-" + trace + "-" + parent + "-0x", false},
		{"missing dash", "traceparent: 00-" + trace + parent + "--01", false},
	}
	clock := NewClock(monoNow(t))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			before, err := tr.ReadCounters()
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(c, "HEAD /hello HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n", tc.header)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 512)); err != nil {
				t.Fatal(err)
			}
			if tc.honoured && strings.HasSuffix(tc.header, "-00") {
				// Not sampled, and the default sampler follows the
				// parent: counted, no record.
				if got := readRequests(t, rd, clock, 1, time.Second); len(got) != 0 {
					t.Fatalf("unsampled request emitted: %+v", got[0])
				}
				after, err := tr.ReadCounters()
				if err != nil {
					t.Fatal(err)
				}
				if after.Unsampled != before.Unsampled+1 {
					t.Fatalf("unsampled counter %d -> %d, want +1", before.Unsampled, after.Unsampled)
				}
				return
			}
			got := readRequests(t, rd, clock, 1, 5*time.Second)
			if len(got) != 1 {
				t.Fatalf("got %d requests", len(got))
			}
			r := got[0]
			honoured := r.TraceID.String() == trace && r.ParentSpanID.String() == parent
			if honoured != tc.honoured {
				t.Errorf("honoured = %v, want %v (trace %s parent %s)", honoured, tc.honoured, r.TraceID, r.ParentSpanID)
			}
			if !tc.honoured && (r.TraceID.IsEmpty() || !r.ParentSpanID.IsEmpty()) {
				t.Errorf("a rejected traceparent must start a new root trace: trace %s parent %s", r.TraceID, r.ParentSpanID)
			}
		})
	}
}

// A header block that arrives in several reads still counts: its traceparent
// and Host are honoured, whether the cut falls between lines or inside one.
func TestTracerHeadersSplitAcrossReads(t *testing.T) { forVariants(t, testHeadersSplitAcrossReads) }

func testHeadersSplitAcrossReads(t *testing.T, variant string) {
	tr, rd := attached(t, Options{RingBufferSize: 1 << 20, TrackRequestHeaders: true, Variant: variant})
	port := freePort(t)
	py := startPython(t, port)
	if err := tr.Trace(uint32(py.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	const tp = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
	cases := []struct {
		name   string
		pieces []string
		host   string
	}{
		{"between lines", []string{"HEAD /hello HTTP/1.1\r\nHost: split.test\r\n", tp + "\r\n"}, "split.test"},
		{"inside a line", []string{"HEAD /hello HTTP/1.1\r\nX-Long: 0123", "456789\r\n" + tp + "Host: late.test\r\n\r\n"}, "late.test"},
		{"three pieces", []string{"HEAD /hello HTTP/1.1\r\n", "X-A: 1\r\n", tp + "\r\n"}, ""},
	}
	clock := NewClock(monoNow(t))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, p := range tc.pieces {
				if _, err := c.Write([]byte(p)); err != nil {
					t.Fatal(err)
				}
				time.Sleep(100 * time.Millisecond) // let the server read each piece on its own
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Read(make([]byte, 512)); err != nil {
				t.Fatal(err)
			}
			got := readRequests(t, rd, clock, 1, 5*time.Second)
			if len(got) != 1 {
				t.Fatalf("got %d requests", len(got))
			}
			r := got[0]
			if r.TraceID.String() != "4bf92f3577b34da6a3ce929d0e0e4736" || r.ParentSpanID.String() != "00f067aa0ba902b7" {
				t.Errorf("traceparent in a later read not honoured: trace %s parent %s", r.TraceID, r.ParentSpanID)
			}
			if tc.host != "" && r.Host != tc.host {
				t.Errorf("host %q, want %q", r.Host, tc.host)
			}
			if r.Method != "HEAD" || r.Path != "/hello" || r.Status != 200 {
				t.Errorf("request %+v", r)
			}
		})
	}
}

// Incoming tracestate headers reach the SERVER span, combined, validated and
// normalized, whether they come in one read or several; the entry kept for
// ctxprop is gone once the response is written. Header blocks up to 16 KiB
// are scanned whole; past that the rest is not looked at, and counted.
func TestTracerTraceState(t *testing.T) { forVariants(t, testTraceState) }

func testTraceState(t *testing.T, variant string) {
	tr, rd := attached(t, Options{RingBufferSize: 1 << 20, TrackRequestHeaders: true, Variant: variant})
	port := freePort(t)
	py := startPython(t, port)
	if err := tr.Trace(uint32(py.Process.Pid)); err != nil {
		t.Fatal(err)
	}
	const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	const tp = "traceparent: 00-" + trace + "-" + parent + "-01\r\n"
	fill := func(lines, width int) string {
		var b strings.Builder
		for i := range lines {
			fmt.Fprintf(&b, "X-Fill-%d: %s\r\n", i, strings.Repeat("f", width))
		}
		return b.String()
	}
	cases := []struct {
		name     string
		pieces   []string
		honoured bool
		ts       string
	}{
		{"several headers in one read", []string{"HEAD /hello HTTP/1.1\r\n" + tp +
			"tracestate: rojo=00f067aa0ba902b7\r\nX-Other: 1\r\ntracestate:  congo=t61rcWkgMzE ,, \r\nTRACESTATE: a@b=c\r\n\r\n"},
			true, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,a@b=c"},
		{"cut inside a tracestate member", []string{"HEAD /hello HTTP/1.1\r\n" + tp + "tracestate: a=1,bb=x",
			"yz\r\ntracestate: c=3\r\n\r\n"}, true, "a=1,bb=xyz,c=3"},
		{"tracestate before a late traceparent", []string{"HEAD /hello HTTP/1.1\r\ntracestate: a=1\r\n",
			tp + "\r\n"}, true, "a=1"},
		{"invalid tracestate dropped", []string{"HEAD /hello HTTP/1.1\r\n" + tp + "tracestate: a=1,A=2\r\n\r\n"}, true, ""},
		{"no traceparent, no tracestate", []string{"HEAD /hello HTTP/1.1\r\ntracestate: a=1\r\n\r\n"}, false, ""},
		{"second traceparent in a later read restarts the trace", []string{"HEAD /hello HTTP/1.1\r\n" + tp + "tracestate: a=1\r\n",
			tp + "\r\n"}, false, ""},
		{"traceparent after 6 KiB of headers", []string{"HEAD /hello HTTP/1.1\r\n" + fill(30, 200) + tp + "tracestate: k=v\r\n\r\n"}, true, "k=v"},
		{"traceparent past 16 KiB", []string{"HEAD /hello HTTP/1.1\r\n" + fill(90, 200) + tp + "\r\n"}, false, ""},
	}
	clock := NewClock(monoNow(t))
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before, err := tr.ReadCounters()
			if err != nil {
				t.Fatal(err)
			}
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for _, p := range tc.pieces {
				if _, err := c.Write([]byte(p)); err != nil {
					t.Fatal(err)
				}
				time.Sleep(100 * time.Millisecond) // let the server read each piece on its own
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			resp, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(resp, " 200 ") {
				t.Fatalf("response %q", resp)
			}
			got := readRequests(t, rd, clock, 1, 5*time.Second)
			if len(got) != 1 {
				t.Fatalf("got %d requests", len(got))
			}
			r := got[0]
			honoured := r.TraceID.String() == trace && r.ParentSpanID.String() == parent
			if honoured != tc.honoured {
				t.Errorf("honoured = %v, want %v (trace %s parent %s)", honoured, tc.honoured, r.TraceID, r.ParentSpanID)
			}
			if !tc.honoured && !r.ParentSpanID.IsEmpty() {
				t.Errorf("not a new root: parent %s", r.ParentSpanID)
			}
			if r.TraceState != tc.ts {
				t.Errorf("tracestate %q, want %q", r.TraceState, tc.ts)
			}
			var v struct {
				Len  uint16
				Pad  [6]uint8
				Data [512]byte
			}
			if err := tr.objs.Tracestates.Lookup(binary.LittleEndian.Uint64(r.SpanID[:]), &v); err == nil {
				t.Errorf("tracestates entry of span %s left after the response", r.SpanID)
			}
			after, err := tr.ReadCounters()
			if err != nil {
				t.Fatal(err)
			}
			over := after.HeadersTooLarge > before.HeadersTooLarge
			if want := strings.Contains(tc.name, "16 KiB"); over != want {
				t.Errorf("headers-too-large counted %v, want %v", over, want)
			}
		})
	}
}
