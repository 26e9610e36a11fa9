//go:build linux && privileged

package gogrpc

import (
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

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/ebpftracing/ebpftracingreceiver/bpf/goruntime"
	"github.com/ebpftracing/ebpftracingreceiver/bpf/httptrace"
	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
)

// startH2Pair builds test/e2e/apps/goh2c and starts server B and server A
// (whose /call calls B over h2c) with HTTP/2 copy copyName, returning their
// pids and addresses.
func startH2Pair(t *testing.T, copyName string) (a, b int, aAddr, bAddr string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "goh2c")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = "../../test/e2e/apps/goh2c"
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build goh2c: %v\n%s", err, out)
	}
	var addrs [2]string
	for i := range addrs {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs[i] = l.Addr().String()
		l.Close()
	}
	start := func(addr string, env ...string) int {
		_, port, _ := net.SplitHostPort(addr)
		c := exec.Command(bin, port)
		c.Env = append(append(os.Environ(), "GOH2C_COPY="+copyName), env...)
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
		return c.Process.Pid
	}
	b = start(addrs[1])
	a = start(addrs[0], "GOH2C_TARGET="+addrs[1])
	for deadline := time.Now().Add(10 * time.Second); ; {
		c1, err1 := net.Dial("tcp", addrs[0])
		c2, err2 := net.Dial("tcp", addrs[1])
		if err1 == nil && err2 == nil {
			c1.Close()
			c2.Close()
			return a, b, addrs[0], addrs[1]
		}
		if time.Now().After(deadline) {
			t.Fatal("goh2c pair did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func h2Client(t *testing.T) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &p}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

func h2Call(t *testing.T, hc *http.Client, aAddr, path string) string {
	t.Helper()
	resp, err := hc.Get("http://" + aAddr + "/call?path=" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(body))
}

// TestH2CPair: Go h2c server A calling h2c server B from its handler, with
// each copy of Go's HTTP/2 (net/http's bundled one, golang.org/x/net's),
// both traced: per request A's SERVER record, A's CLIENT record (its
// child) and B's SERVER record (the client's child through the stream-id
// join), with method, path and status (200, 404). Also logs what the
// probes cost (bpf_stats: runs and ns per request).
func TestH2CPair(t *testing.T) {
	for _, c := range []string{"std", "xnet"} {
		t.Run(c, func(t *testing.T) { testH2CPair(t, c) })
	}
}

func testH2CPair(t *testing.T, copyName string) {
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	a, b, aAddr, bAddr := startH2Pair(t, copyName)
	hc := h2Client(t)
	// Connect before the probes: A's connection to B already exists.
	if got := h2Call(t, hc, aAddr, "/leaf"); got != "200 HTTP/2.0" {
		t.Fatalf("warm-up request: %q", got)
	}

	tr, err := httptrace.Load(httptrace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Attach(); err != nil {
		t.Fatal(err)
	}
	sh := tr.Shared()
	gr, err := goruntime.Load(goruntime.Maps{TracedPids: sh.TracedPids, ThreadCtxs: sh.ThreadCtxs, GoProcs: sh.GoProcs, GoCtxs: sh.GoCtxs, GoParents: sh.GoParents},
		goruntime.Options{NoHandOver: true})
	if err != nil {
		t.Fatal(err)
	}
	defer gr.Close()
	g, err := Load(Maps{TracedPids: sh.TracedPids, ThreadCtxs: sh.ThreadCtxs, GoProcs: sh.GoProcs, GoCtxs: sh.GoCtxs, GoParents: sh.GoParents, Events: tr.Events()}, Options{})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer g.Close()
	for _, pid := range []int{a, b} {
		if err := tr.Trace(uint32(pid)); err != nil {
			t.Fatal(err)
		}
		if err := gr.AttachProcess(pid, ""); err != nil {
			t.Fatal(err)
		}
		if ok, err := g.AttachProcess(pid, ""); err != nil || !ok {
			t.Fatalf("attach pid %d: %v %v", pid, ok, err)
		}
	}
	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	reqs := []struct {
		path   string
		status int
	}{{"/leaf", 200}, {"/missing", 404}, {"/leaf", 200}, {"/missing", 404}}
	progs := []*ebpf.Program{g.objs.Goh2RunHandler, g.objs.Goh2HandlerDone, g.objs.Goh2EncodeHeaders, g.objs.Goh2WriteHeaders, g.objs.Goh2HandleResponse}
	before := runStats(t, progs)
	for _, r := range reqs {
		if got, want := h2Call(t, hc, aAddr, r.path), fmt.Sprintf("%d HTTP/2.0", r.status); got != want {
			t.Fatalf("request %s: %q, want %q", r.path, got, want)
		}
	}
	after := runStats(t, progs)
	hits := logCost(t, progs, before, after, len(reqs))

	clock := httptrace.NewClock(monoNow())
	var dec Decoder
	var got []spans.Request
	for deadline := time.Now().Add(5 * time.Second); len(got) < 3*len(reqs) && time.Now().Before(deadline); {
		rd.SetDeadline(time.Now().Add(100 * time.Millisecond))
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if !IsH2Event(rec.RawSample) {
			t.Errorf("a record of %d bytes, not HTTP/2: h2c seen at the network level?", len(rec.RawSample))
			continue
		}
		var r spans.Request
		if err := dec.DecodeH2(rec.RawSample, clock, &r); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	var front, cli, srv []spans.Request
	for _, r := range got {
		if r.Method != "GET" || !r.HTTP2 || r.TraceID.IsEmpty() || r.SpanID.IsEmpty() || !r.End.After(r.Start) {
			t.Errorf("bad record %+v", r)
		}
		switch {
		case r.Kind == spans.KindServer && int(r.PID) == a:
			front = append(front, r)
		case r.Kind == spans.KindClient && int(r.PID) == a:
			cli = append(cli, r)
		case r.Kind == spans.KindServer && int(r.PID) == b:
			srv = append(srv, r)
		default:
			t.Errorf("record of kind %d from pid %d", r.Kind, r.PID)
		}
	}
	if len(front) != len(reqs) || len(cli) != len(reqs) || len(srv) != len(reqs) {
		t.Fatalf("%d front, %d client and %d server records, want %d each: %+v", len(front), len(cli), len(srv), len(reqs), got)
	}
	for i, r := range reqs {
		f, c, s := front[i], cli[i], srv[i]
		if f.Path != "/call?path="+r.path || f.Status != 200 || f.Local.String() != aAddr {
			t.Errorf("request %d: front %q status %d local %s", i, f.Path, f.Status, f.Local)
		}
		if c.Path != r.path || s.Path != r.path || c.Status != r.status || s.Status != r.status {
			t.Errorf("request %d: client %q %d, server %q %d, want %q %d", i, c.Path, c.Status, s.Path, s.Status, r.path, r.status)
		}
		if c.Host != bAddr || s.Host != bAddr {
			t.Errorf("request %d: client host %q, server host %q, want %q", i, c.Host, s.Host, bAddr)
		}
		if c.TraceID != f.TraceID || c.ParentSpanID != f.SpanID {
			t.Errorf("request %d: client %s parent %s, front %s/%s: not the handler's child", i, c.TraceID, c.ParentSpanID, f.TraceID, f.SpanID)
		}
		if s.TraceID != c.TraceID || s.ParentSpanID != c.SpanID {
			t.Errorf("request %d: server %s parent %s, client %s/%s: not joined", i, s.TraceID, s.ParentSpanID, c.TraceID, c.SpanID)
		}
		if s.Local != c.Peer || s.Peer != c.Local || s.Local.String() != bAddr {
			t.Errorf("request %d: server %s<-%s, client %s->%s", i, s.Local, s.Peer, c.Local, c.Peer)
		}
	}
	if c, err := g.ReadCounters(); err != nil || c.Joined < uint64(len(reqs)) || c.EventsLost != 0 {
		t.Errorf("counters %+v %v", c, err)
	}
	// Per request: A's server 2 (runHandler, handlerDone), A's client 3
	// (encodeAndWriteHeaders, writeHeaders, handleResponse), B's server 2.
	if hits != 7*uint64(len(reqs)) {
		t.Errorf("%d hits for %d requests, want 7 per request", hits, len(reqs))
	}
	const n = 500
	before = runStats(t, progs)
	for range n {
		h2Call(t, hc, aAddr, "/leaf")
	}
	logCost(t, progs, before, runStats(t, progs), n)
}
