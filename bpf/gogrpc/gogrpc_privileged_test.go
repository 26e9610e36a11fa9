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

// startPair builds test/e2e/apps/gogrpc and starts its server and its
// client (an HTTP front whose /call makes one Health/Check), returning the
// pids and the front's address.
func startPair(t *testing.T) (server, client int, front string) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gogrpc")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Dir = "../../test/e2e/apps/gogrpc"
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build gogrpc: %v\n%s", err, b)
	}
	ports := make([]int, 2)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = l.Addr().(*net.TCPAddr).Port
		l.Close()
	}
	start := func(args ...string) int {
		c := exec.Command(bin, args...)
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Process.Kill(); _ = c.Wait() })
		return c.Process.Pid
	}
	server = start("server", fmt.Sprint(ports[0]))
	client = start("client", fmt.Sprint(ports[1]), fmt.Sprintf("127.0.0.1:%d", ports[0]))
	front = fmt.Sprintf("127.0.0.1:%d", ports[1])
	for deadline := time.Now().Add(10 * time.Second); ; {
		c1, err1 := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0]))
		c2, err2 := net.Dial("tcp", front)
		if err1 == nil && err2 == nil {
			c1.Close()
			c2.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("gogrpc pair did not start")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func call(t *testing.T, front, service string) string {
	t.Helper()
	resp, err := http.Get("http://" + front + "/call?service=" + service)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b))
}

// TestGRPCPair: a Go gRPC client and server (the module proxy's grpc),
// both traced: a CLIENT and a SERVER record per call with the method and
// status code (OK, NOT_FOUND), and the SERVER span a child of the CLIENT
// span (same trace) through the stream-id join. Also logs what the probes
// cost (bpf_stats: runs and ns per call).
func TestGRPCPair(t *testing.T) {
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	server, client, front := startPair(t)
	// Connect before the probes: the client's connection already exists.
	if got := call(t, front, "ok.Service"); got != "OK" {
		t.Fatalf("warm-up call: %q", got)
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
	for _, pid := range []int{server, client} {
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

	calls := []struct {
		service string
		code    int
	}{{"ok.Service", 0}, {"missing", 5}, {"ok.Service", 0}, {"missing", 5}}
	progs := []*ebpf.Program{g.objs.GogrpcClientWrite, g.objs.GogrpcFinish, g.objs.GogrpcHandleStream, g.objs.GogrpcWriteStatus}
	before := runStats(t, progs)
	for _, c := range calls {
		want := "OK"
		if c.code == 5 {
			want = "NotFound"
		}
		if got := call(t, front, c.service); got != want {
			t.Fatalf("call %s: %q, want %q", c.service, got, want)
		}
	}
	after := runStats(t, progs)
	hits := logCost(t, progs, before, after, len(calls))

	clock := httptrace.NewClock(monoNow())
	var dec Decoder
	var got []spans.RPC
	for deadline := time.Now().Add(5 * time.Second); len(got) < 2*len(calls) && time.Now().Before(deadline); {
		rd.SetDeadline(time.Now().Add(100 * time.Millisecond))
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if !IsEvent(rec.RawSample) {
			continue // the front's HTTP spans
		}
		var r spans.RPC
		if err := dec.Decode(rec.RawSample, clock, &r); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	var srv, cli []spans.RPC
	for _, r := range got {
		if r.Method != "/grpc.health.v1.Health/Check" || r.TraceID.IsEmpty() || r.SpanID.IsEmpty() || !r.End.After(r.Start) {
			t.Errorf("bad record %+v", r)
		}
		switch {
		case r.Kind == spans.KindServer && int(r.PID) == server:
			srv = append(srv, r)
		case r.Kind == spans.KindClient && int(r.PID) == client:
			cli = append(cli, r)
		default:
			t.Errorf("record of kind %d from pid %d", r.Kind, r.PID)
		}
	}
	if len(srv) != len(calls) || len(cli) != len(calls) {
		t.Fatalf("%d server and %d client records, want %d each: %+v", len(srv), len(cli), len(calls), got)
	}
	for i, c := range calls {
		s, cl := srv[i], cli[i]
		if s.Code != c.code || cl.Code != c.code {
			t.Errorf("call %d (%s): server code %d, client code %d, want %d", i, c.service, s.Code, cl.Code, c.code)
		}
		if s.TraceID != cl.TraceID || s.ParentSpanID != cl.SpanID {
			t.Errorf("call %d: server %s/%s parent %s, client %s/%s: not joined", i, s.TraceID, s.SpanID, s.ParentSpanID, cl.TraceID, cl.SpanID)
		}
		if s.Local != cl.Peer || s.Peer != cl.Local {
			t.Errorf("call %d: server %s<-%s, client %s->%s", i, s.Local, s.Peer, cl.Local, cl.Peer)
		}
		// The front's HTTP SERVER span is the CLIENT span's parent.
		if cl.ParentSpanID.IsEmpty() {
			t.Errorf("call %d: client span without the front's HTTP span as parent", i)
		}
	}
	c, err := g.ReadCounters()
	if err != nil || c.Joined < uint64(len(calls)) || c.EventsLost != 0 {
		t.Errorf("counters %+v %v", c, err)
	}
	if hits != 4*uint64(len(calls)) {
		t.Errorf("%d hits for %d calls, want 4 per call", hits, len(calls))
	}
	// Warm: the cost per call of many.
	const n = 500
	before = runStats(t, progs)
	for range n {
		call(t, front, "ok.Service")
	}
	logCost(t, progs, before, runStats(t, progs), n)
}

// logCost logs each program's runs and BPF time per call, and returns the
// runs of all.
func logCost(t *testing.T, progs []*ebpf.Program, before, after []runStat, calls int) uint64 {
	var hits, ns uint64
	for i, p := range progs {
		d := after[i].sub(before[i])
		hits += d.runs
		ns += d.ns
		t.Logf("%v: %.2f runs/call, %.0f ns/run", p, float64(d.runs)/float64(calls), float64(d.ns)/float64(max(d.runs, 1)))
	}
	t.Logf("%d calls: %.2f uprobe hits per call, %.0f ns of BPF per call", calls, float64(hits)/float64(calls), float64(ns)/float64(calls))
	return hits
}

type runStat struct{ runs, ns uint64 }

func (a runStat) sub(b runStat) runStat { return runStat{a.runs - b.runs, a.ns - b.ns} }

func runStats(t *testing.T, progs []*ebpf.Program) []runStat {
	out := make([]runStat, len(progs))
	for i, p := range progs {
		st, err := p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		out[i] = runStat{st.RunCount, uint64(st.Runtime)}
	}
	return out
}

func monoNow() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}
