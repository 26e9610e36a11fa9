//go:build linux && privileged

package httptrace

import (
	"bufio"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/ebpftracing/ebpftracingreceiver/internal/goexe"
	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
)

// buildGoTLS builds testdata/gotls with ldflags.
func buildGoTLS(t *testing.T, ldflags string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gotls")
	cmd := exec.Command("go", "build", "-ldflags="+ldflags, "-o", bin, "./testdata/gotls")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./testdata/gotls: %v\n%s", err, out)
	}
	return bin
}

// goTLSProc is a running testdata/gotls: its stdin, and its stdout by line.
type goTLSProc struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines *bufio.Scanner
}

// startGoTLS starts bin with args and waits for its first line when it
// prints one ("ready"); killed when the test ends.
func startGoTLS(t *testing.T, bin string, waitReady bool, args ...string) *goTLSProc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	p := &goTLSProc{cmd: cmd, in: in, lines: bufio.NewScanner(out)}
	if waitReady {
		if l := p.line(t); l != "ready" {
			t.Fatalf("%s %v: %q, want ready", bin, args, l)
		}
	}
	return p
}

func (p *goTLSProc) line(t *testing.T) string {
	t.Helper()
	if !p.lines.Scan() {
		t.Fatalf("%v: no output: %v", p.cmd.Args, p.lines.Err())
	}
	return p.lines.Text()
}

// traceGo traces pid and places the TLS probes on it: Go's crypto/tls.
func traceGo(t *testing.T, tr *Tracer, x *TLS, pid int) {
	t.Helper()
	if err := tr.Trace(uint32(pid)); err != nil {
		t.Fatal(err)
	}
	n, err := x.AttachProcess(pid)
	if err != nil || n != 1 {
		t.Fatalf("attach go tls probes to %d: %d files, %v", pid, n, err)
	}
}

// TestGoTLSSpans: a Go HTTPS server and a Go HTTPS client (crypto/tls, no
// OpenSSL), built with and without symbols: SERVER and CLIENT spans with
// method, path, status and TLS set, nothing else from the ciphertext on the
// same sockets, an incoming traceparent honoured; HTTP/2 (ALPN h2) gives no
// span and is counted. Logs the probes' hits and run time per request.
func TestGoTLSSpans(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	for _, ldflags := range []string{"", "-s -w"} {
		t.Run(fmt.Sprintf("ldflags=%q", ldflags), func(t *testing.T) {
			bin := buildGoTLS(t, ldflags)
			testGoTLSSpans(t, bin, cert, key)
		})
	}
	t.Run("h2", func(t *testing.T) {
		bin := buildGoTLS(t, "")
		tr, rd := attached(t, Options{TrackRequestHeaders: true})
		x, err := tr.LoadTLS(true)
		if err != nil {
			t.Fatal(err)
		}
		defer x.Close()
		port := freePort(t)
		srv := startGoTLS(t, bin, true, "server", fmt.Sprint(port), cert, key, "h2")
		traceGo(t, tr, x, srv.cmd.Process.Pid)
		cli := startGoTLS(t, bin, false, "client", fmt.Sprintf("https://127.0.0.1:%d/hello", port), "3", "h2")
		traceGo(t, tr, x, cli.cmd.Process.Pid)
		fmt.Fprintln(cli.in)
		if l := cli.line(t); l != "done 200" {
			t.Fatalf("client: %q", l)
		}
		if got := readRequests(t, rd, NewClock(monoNow(t)), 1, time.Second); len(got) != 0 {
			t.Errorf("HTTP/2 parsed as HTTP/1.x: %+v", got)
		}
		c, _ := tr.ReadCounters()
		// The client writes the preface, the server reads it.
		if c.TLSHTTP2 != 2 {
			t.Errorf("HTTP/2 prefaces counted: %d, want 2", c.TLSHTTP2)
		}
	})
}

func testGoTLSSpans(t *testing.T, bin, cert, key string) {
	tr, rd := attached(t, Options{TrackRequestHeaders: true})
	clock := NewClock(monoNow(t))
	x, err := tr.LoadTLS(true)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	port := freePort(t)
	srv := startGoTLS(t, bin, true, "server", fmt.Sprint(port), cert, key)
	traceGo(t, tr, x, srv.cmd.Process.Pid)
	stats, err := ebpf.EnableStats(0) // BPF_STATS_RUN_TIME
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	before, _ := x.Stats()

	const n = 50
	cli := startGoTLS(t, bin, false, "client", fmt.Sprintf("https://127.0.0.1:%d/hello?x=1", port), fmt.Sprint(n))
	traceGo(t, tr, x, cli.cmd.Process.Pid)
	fmt.Fprintln(cli.in)
	if l := cli.line(t); l != "done 200" {
		t.Fatalf("client: %q", l)
	}
	after, _ := x.Stats()
	// Two processes, n requests: each request is a Write and Reads on
	// both sides.
	var names []string
	for name := range after {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		runs := after[name].RunCount - before[name].RunCount
		rt := after[name].Runtime - before[name].Runtime
		if runs > 0 {
			t.Logf("%-28s %5.2f runs/req %6d ns/run", name, float64(runs)/n, int64(rt)/int64(runs))
		}
	}
	got := readRequests(t, rd, clock, 2*n+1, 2*time.Second)
	var server, client int
	for _, r := range got {
		if !r.TLS || r.Method != "GET" || r.Path != "/hello?x=1" || r.Status != 200 {
			t.Errorf("unexpected span: %+v", r)
			continue
		}
		switch {
		case r.Kind == spans.KindServer && int(r.PID) == srv.cmd.Process.Pid && r.Local.Port() == uint16(port):
			server++
		case r.Kind == spans.KindClient && int(r.PID) == cli.cmd.Process.Pid && r.Peer.Port() == uint16(port):
			client++
		default:
			t.Errorf("span of the wrong kind or process: %+v", r)
		}
	}
	if server != n || client != n {
		t.Errorf("%d SERVER and %d CLIENT spans, want %d each (of %d)", server, client, n, len(got))
	}

	// curl (not traced) with a traceparent, and a 404.
	const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	for _, args := range [][]string{
		{"-H", "traceparent: 00-" + trace + "-" + parent + "-01", fmt.Sprintf("https://127.0.0.1:%d/hello", port)},
		{fmt.Sprintf("https://127.0.0.1:%d/missing", port)},
	} {
		if out, err := exec.Command("curl", append([]string{"-ksS", "-o", "/dev/null"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("curl: %v %s", err, out)
		}
	}
	got = readRequests(t, rd, clock, 3, 2*time.Second)
	if len(got) != 2 {
		t.Fatalf("curl requests: %d spans, want 2: %+v", len(got), got)
	}
	if r := got[0]; r.Kind != spans.KindServer || r.Path != "/hello" || r.Status != 200 || !r.TLS ||
		r.TraceID.String() != trace || r.ParentSpanID.String() != parent {
		t.Errorf("traceparent not honoured: %+v", r)
	}
	if r := got[1]; r.Kind != spans.KindServer || r.Path != "/missing" || r.Status != 404 || !r.TLS || !r.ParentSpanID.IsEmpty() {
		t.Errorf("404: %+v", r)
	}
	if c, _ := tr.ReadCounters(); c.GoTLSNoFD != 0 {
		t.Errorf("Go TLS calls without a socket: %d", c.GoTLSNoFD)
	}

	// Close detaches every link of the TLS programs.
	ids := map[ebpf.ProgramID]string{}
	for name, p := range x.progs {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		ids[id] = name
	}
	if n := linksOf(t, ids); n != 6 {
		t.Errorf("%d links of the TLS programs before Close, want 6 (3 per process)", n)
	}
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	if n := linksOf(t, ids); n != 0 {
		t.Errorf("%d links of the TLS programs left after Close", n)
	}
}

// linksOf counts the kernel's links whose program is one of ids.
func linksOf(t *testing.T, ids map[ebpf.ProgramID]string) int {
	t.Helper()
	var n int
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		if _, ok := ids[info.Program]; ok {
			n++
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestGoTLSSiteCost measures the cost of one uprobe hit at each kind of
// site of crypto/tls's (*Conn).Write and Read: the function's first
// instruction (LEAQ or CMPQ: single-stepped out of line), the JBE of the
// stack check (a conditional jump: emulated), the PUSHQ BP after it, and
// the RET instructions of Read. A process not traced (the program returns
// after one map lookup) runs rounds of a 1-byte Write and Read each way on
// a TLS connection to itself; the wall time per round with the probe minus
// without it, alternated, divided by the hits per round (bpf_stats).
func TestGoTLSSiteCost(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	bin := buildGoTLS(t, "")
	tr, _ := attached(t, Options{})
	x, err := tr.LoadTLS(true)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	const n = 20000
	p := startGoTLS(t, bin, true, "loop", fmt.Sprint(freePort(t)), cert, key, fmt.Sprint(n))
	round := func() time.Duration {
		fmt.Fprintln(p.in)
		var ns int64
		if _, err := fmt.Sscan(p.line(t), &ns); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ns)
	}
	info, err := goexe.Inspect(bin, symGoTLSWrite, symGoTLSRead)
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type siteKind struct {
		name  string
		addrs []uint64
	}
	var kinds []siteKind
	for _, sym := range []string{symGoTLSWrite, symGoTLSRead} {
		fn := info.Funcs[sym]
		start, code, err := goexe.FileOffset(f, sym, fn.Entry, fn.End-fn.Entry)
		if err != nil {
			t.Fatal(err)
		}
		jbe := goexe.EntryOffset(code)
		if jbe == 0 || code[jbe] != 0x0f || code[jbe+6] != 0x55 {
			t.Fatalf("%s: prologue % x: no JBE rel32 then PUSHQ BP", sym, code[:16])
		}
		short := sym[strings.LastIndexByte(sym, '.')+1:]
		kinds = append(kinds,
			siteKind{short + " first instruction", []uint64{start}},
			siteKind{short + " JBE", []uint64{start + jbe}},
			siteKind{short + " PUSHQ BP", []uint64{start + jbe + 6}})
	}
	rets, err := goexe.RetSites(f, symGoTLSRead, info.Funcs[symGoTLSRead])
	if err != nil {
		t.Fatal(err)
	}
	kinds = append(kinds, siteKind{"Read RETs", rets})
	ex, err := link.OpenExecutable(bin)
	if err != nil {
		t.Fatal(err)
	}
	stats, err := ebpf.EnableStats(0)
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	prog := x.progs[progGoTLSWrite]
	round() // warm up
	for _, k := range kinds {
		var with, without []time.Duration
		var hits uint64
		for i := 0; i < 5; i++ {
			l, err := ex.UprobeMulti(nil, prog, &link.UprobeMultiOptions{Addresses: k.addrs, PID: uint32(p.cmd.Process.Pid)})
			if err != nil {
				t.Fatalf("%s: %v", k.name, err)
			}
			s0, _ := prog.Stats()
			with = append(with, round())
			s1, _ := prog.Stats()
			hits += s1.RunCount - s0.RunCount
			l.Close()
			without = append(without, round())
		}
		perRound := float64(hits) / (5 * n)
		w, wo := median(with), median(without)
		t.Logf("%-26s %.2f hits/round, round %v with, %v without: %.2f µs/hit", k.name, perRound, w, wo,
			float64(w-wo)/1000/perRound)
		if perRound < 0.99 {
			t.Errorf("%s: %.2f hits per round", k.name, perRound)
		}
	}
}

func median(d []time.Duration) time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}
