//go:build linux && privileged

package goruntime

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

type proc struct {
	t     testing.TB
	cmd   *exec.Cmd
	in    io.WriteCloser
	lines chan string
	pid   int
}

func start(t testing.TB, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: cmd, in: in, lines: make(chan string, 16), pid: cmd.Process.Pid}
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			p.lines <- s.Text()
		}
		close(p.lines)
	}()
	t.Cleanup(func() {
		_ = in.Close()
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return p
}

// read returns the next output line, which must start with want.
func (p *proc) read(want string) []string {
	p.t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("pid %d exited (%v) waiting for %q", p.pid, p.cmd.Wait(), want)
		}
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != want {
			p.t.Fatalf("pid %d said %q, want %q", p.pid, l, want)
		}
		return f
	case <-time.After(30 * time.Second):
		p.t.Fatalf("pid %d: no %q within 30 s", p.pid, want)
	}
	return nil
}

// do sends a command and reads its reply, after letting the goroutine that
// wrote the last reply park.
func (p *proc) do(cmd, want string) []string {
	p.t.Helper()
	time.Sleep(20 * time.Millisecond)
	if _, err := fmt.Fprintln(p.in, cmd); err != nil {
		p.t.Fatalf("send %q to pid %d: %v", cmd, p.pid, err)
	}
	return p.read(want)
}

func (p *proc) num(f []string) int {
	p.t.Helper()
	n, err := strconv.Atoi(f[1])
	if err != nil {
		p.t.Fatal(err)
	}
	return n
}

func load(t testing.TB) *Tracker {
	t.Helper()
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	tr, err := Load(Maps{})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Error(err)
		}
	})
	return tr
}

// goroutine parses the g address gochain prints after a thread id.
func (p *proc) goroutine(f []string) uint64 {
	p.t.Helper()
	g, err := strconv.ParseUint(f[2], 10, 64)
	if err != nil || g == 0 {
		p.t.Fatalf("goroutine address in %q: %v", f, err)
	}
	return g
}

func lookupCtx(t *testing.T, m *ebpf.Map, key any) (goruntimeThreadCtx, bool) {
	t.Helper()
	var c goruntimeThreadCtx
	err := m.Lookup(key, &c)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return c, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return c, true
}

func seedCtx() goruntimeThreadCtx {
	var c goruntimeThreadCtx
	for i := range c.TraceId {
		c.TraceId[i] = 0xa0 + byte(i)
	}
	for i := range c.SpanId {
		c.SpanId[i] = 0xb0 + byte(i)
	}
	c.TraceFlags = 1
	return c
}

func TestInherit(t *testing.T) {
	for _, variant := range []string{VariantUprobeMulti, VariantUprobe} {
		t.Run(variant, func(t *testing.T) {
			tr := load(t)
			if variant == VariantUprobeMulti && tr.multi == nil {
				t.Fatal("kernel has no uprobe_multi links: PLATFORM.md says it has")
			}
			tr.useMulti = variant == VariantUprobeMulti
			testInherit(t, tr)
		})
	}
}

func testInherit(t *testing.T, tr *Tracker) {
	bin := buildGochain(t, "")
	p := start(t, bin)
	gP := p.goroutine(p.read("ready"))
	if err := tr.AttachProcess(p.pid, bin); err != nil {
		t.Fatal(err)
	}
	if err := tr.maps.TracedPids.Put(uint32(p.pid), uint32(1)); err != nil {
		t.Fatal(err)
	}
	var one uint32
	if err := tr.maps.GoProcs.Lookup(uint32(p.pid), &one); err != nil || one != 1 {
		t.Fatalf("go_procs of an attached process: %d, %v", one, err)
	}

	// P gets a context, as httptrace gives one to the goroutine that reads a
	// request. P starts G2, G2 starts G3: both inherit it, once.
	seed := seedCtx()
	if err := tr.maps.GoCtxs.Put(goruntimeGoKey{Tgid: uint32(p.pid), G: gP}, seed); err != nil {
		t.Fatal(err)
	}
	g3 := p.goroutine(p.do("chain", "locked"))
	p.do("wake", "woke")
	if g3 == gP {
		t.Fatalf("G3 has P's g %#x", gP)
	}
	want := seed
	want.Inherited = 1
	if c, ok := lookupCtx(t, tr.maps.GoCtxs, goruntimeGoKey{Tgid: uint32(p.pid), G: g3}); !ok || c != want {
		t.Fatalf("go_ctxs of G3 (g %#x) = %+v, %v; want the seeded context, inherited", g3, c, ok)
	}
	inherited := inheritedGs(t, tr, p.pid, want)
	if len(inherited) != 2 {
		t.Fatalf("goroutines with the inherited context: %#x; want G2 and G3", inherited)
	}
	p.do("done", "done")

	// P loses its context; new goroutines get none, even on a reused g.
	if err := tr.maps.GoCtxs.Delete(goruntimeGoKey{Tgid: uint32(p.pid), G: gP}); err != nil {
		t.Fatal(err)
	}
	reused := 0
	for range 5 {
		g := p.goroutine(p.do("chain", "locked"))
		p.do("wake", "woke")
		for _, old := range inherited {
			if g == old {
				reused++
			}
		}
		if c, ok := lookupCtx(t, tr.maps.GoCtxs, goruntimeGoKey{Tgid: uint32(p.pid), G: g}); ok {
			t.Fatalf("go_ctxs of a goroutine started without context (g %#x): %+v", g, c)
		}
		p.do("done", "done")
	}
	t.Logf("g structs of G2/G3 reused by the 5 later chains: %d times, each time without their stale context", reused)

	if err := tr.DetachProcess(p.pid); err != nil {
		t.Fatal(err)
	}
	if err := tr.maps.GoProcs.Lookup(uint32(p.pid), &one); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("go_procs after detach: %v", err)
	}
}

// inheritedGs lists the gs of process pid whose context is c.
func inheritedGs(t *testing.T, tr *Tracker, pid int, c goruntimeThreadCtx) []uint64 {
	t.Helper()
	var (
		k  goruntimeGoKey
		v  goruntimeThreadCtx
		gs []uint64
	)
	it := tr.maps.GoCtxs.Iterate()
	for it.Next(&k, &v) {
		if k.Tgid == uint32(pid) && v == c {
			gs = append(gs, k.G)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return gs
}

func TestNotGo(t *testing.T) {
	tr := load(t)
	py, err := filepath.EvalSymlinks("/usr/bin/python3")
	if err != nil {
		t.Fatal(err)
	}
	p := start(t, py, "-c", "import sys; print('ready 0', flush=True); sys.stdin.read()")
	p.read("ready")
	begin := time.Now()
	err = tr.AttachProcess(p.pid, py)
	if !errors.Is(err, ErrNotGo) {
		t.Fatalf("attach %s: %v, want ErrNotGo", py, err)
	}
	t.Logf("%s: %v (%v)", py, err, time.Since(begin))

	stripped := buildGochain(t, "-s -w")
	s := start(t, stripped)
	s.read("ready")
	if err := tr.AttachProcess(s.pid, stripped); !errors.Is(err, ErrNotGo) {
		t.Fatalf("attach stripped Go binary: %v, want ErrNotGo", err)
	} else {
		t.Logf("stripped: %v", err)
	}
}

// TestChurn runs goroutine churn and goroutine switches with and without
// the probes, with and without a context to inherit, and logs the costs.
func TestChurn(t *testing.T) {
	tr := load(t)
	bin := buildGochain(t, "")
	p := start(t, bin)
	gP := p.goroutine(p.read("ready"))
	const ms = 2500
	measure := func(what string) (churn, pingpong float64) {
		churn = float64(p.num(p.do(fmt.Sprintf("churn %d", ms), "churned"))) / (ms / 1000.0)
		pingpong = float64(p.num(p.do("pingpong 1000", "pingpong")))
		t.Logf("%-34s goroutines started: %8.0f/s; switches (GOMAXPROCS=1): %8.0f/s, %5.0f ns each",
			what, churn, 2*pingpong, 1e9/(2*pingpong))
		return churn, pingpong
	}
	baseChurn, basePP := measure("no probes:")

	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	begin := time.Now()
	if err := tr.AttachProcess(p.pid, bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("attach (%s, analysis included): %v", tr.Variant(), time.Since(begin))
	begin = time.Now()
	p2 := start(t, bin)
	p2.read("ready")
	if err := tr.AttachProcess(p2.pid, bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("attach of a second process of the same executable (cached analysis): %v", time.Since(begin))
	if err := tr.DetachProcess(p2.pid); err != nil {
		t.Fatal(err)
	}

	_, _ = measure("probes, process not traced:")
	if err := tr.maps.TracedPids.Put(uint32(p.pid), uint32(1)); err != nil {
		t.Fatal(err)
	}
	tracedChurn, tracedPP := measure("probes, traced, no context:")
	p.do("ping", "pong")
	if err := tr.maps.GoCtxs.Put(goruntimeGoKey{Tgid: uint32(p.pid), G: gP}, seedCtx()); err != nil {
		t.Fatal(err)
	}
	ctxChurn, _ := measure("probes, traced, every g inherits:")
	t.Logf("per goroutine start: +%.0f ns traced, +%.0f ns inheriting; per switch: +%.0f ns traced",
		1e9/tracedChurn-1e9/baseChurn, 1e9/ctxChurn-1e9/baseChurn, 1e9/(2*tracedPP)-1e9/(2*basePP))
	for name, prog := range map[string]*ebpf.Program{
		"newproc1": tr.progs().Newproc1, "newproc1 RET": tr.progs().Newproc1Ret,
	} {
		st, err := prog.Stats()
		if err != nil {
			t.Fatal(err)
		}
		if st.RunCount == 0 {
			t.Fatalf("program %s never ran", name)
		}
		t.Logf("program %-12s runs %9d, %4.0f ns per run in BPF", name, st.RunCount, float64(st.Runtime.Nanoseconds())/float64(st.RunCount))
	}
	// Still alive and answering after the churn.
	p.do("ping", "pong")
	if p.cmd.ProcessState != nil {
		t.Fatalf("pid %d exited: %v", p.pid, p.cmd.ProcessState)
	}
}

// ourLinks lists the BPF links, as bpftool shows them, running programs
// with the given ids.
func ourLinks(t *testing.T, ids map[ebpf.ProgramID]bool) []string {
	t.Helper()
	out, err := exec.Command("bpftool", "-j", "link", "show").Output()
	if err != nil {
		t.Fatalf("bpftool link show: %v", err)
	}
	var links []struct {
		ID     int             `json:"id"`
		Type   json.RawMessage `json:"type"` // a number for types bpftool does not know
		ProgID int             `json:"prog_id"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatalf("parse bpftool output: %v", err)
	}
	var ours []string
	for _, l := range links {
		if ids[ebpf.ProgramID(l.ProgID)] {
			ours = append(ours, fmt.Sprintf("%d:%s", l.ID, strings.Trim(string(l.Type), `"`)))
		}
	}
	return ours
}

func TestDetachLeavesNoLinks(t *testing.T) {
	for _, variant := range []string{VariantUprobeMulti, VariantUprobe} {
		t.Run(variant, func(t *testing.T) {
			if err := rlimit.RemoveMemlock(); err != nil {
				t.Fatal(err)
			}
			tr, err := Load(Maps{})
			if err != nil {
				t.Fatal(err)
			}
			tr.useMulti = variant == VariantUprobeMulti
			ids := map[ebpf.ProgramID]bool{}
			for _, prog := range []*ebpf.Program{tr.progs().Newproc1, tr.progs().Newproc1Ret, tr.progs().RoundTrip, tr.progs().RequestWrite} {
				info, err := prog.Info()
				if err != nil {
					t.Fatal(err)
				}
				id, _ := info.ID()
				ids[id] = true
			}
			bin := buildGochain(t, "")
			p1, p2 := start(t, bin), start(t, bin)
			p1.read("ready")
			p2.read("ready")
			for _, p := range []*proc{p1, p2} {
				if err := tr.AttachProcess(p.pid, bin); err != nil {
					t.Fatal(err)
				}
			}
			attached := ourLinks(t, ids)
			t.Logf("links with two processes: %v", attached)
			if len(attached) == 0 {
				t.Fatal("bpftool shows no link of ours")
			}
			begin := time.Now()
			if err := tr.DetachProcess(p1.pid); err != nil {
				t.Fatal(err)
			}
			t.Logf("detach one process: %v", time.Since(begin))
			if variant == VariantUprobeMulti {
				if left := ourLinks(t, ids); len(left) != len(attached)/2 {
					t.Fatalf("links after detaching one of two processes: %v", left)
				}
			}
			begin = time.Now()
			if err := tr.Close(); err != nil {
				t.Fatal(err)
			}
			t.Logf("close: %v", time.Since(begin))
			if left := ourLinks(t, ids); len(left) != 0 {
				t.Fatalf("links left after Close: %v", left)
			}
			if err := tr.Close(); err != nil {
				t.Fatalf("second Close: %v", err)
			}
		})
	}
}
