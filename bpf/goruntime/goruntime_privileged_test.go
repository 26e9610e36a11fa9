//go:build linux && privileged

package goruntime

import (
	"bufio"
	"encoding/binary"
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
	tr, err := Load(Maps{}, Options{})
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

func (p *proc) uint(f []string, i int) uint64 {
	p.t.Helper()
	v, err := strconv.ParseUint(f[i], 10, 64)
	if err != nil {
		p.t.Fatalf("field %d of %q: %v", i, f, err)
	}
	return v
}

// peek reads a uint64 of process pid's memory.
func peek(t *testing.T, pid int, addr uint64) uint64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [8]byte
	if _, err := f.ReadAt(b[:], int64(addr)); err != nil {
		t.Fatalf("read pid %d at %#x: %v", pid, addr, err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

// TestGoProc checks what AttachProcess gives the kernel programs for a Go
// executable built with and without symbols: the same offsets, that read
// the goid and parentGoid the goroutines have, and a goroutine table that
// holds the running goroutine.
func TestGoProc(t *testing.T) {
	var procs []goruntimeGoProc
	for _, ldflags := range []string{"", "-s -w"} {
		t.Run(fmt.Sprintf("ldflags=%q", ldflags), func(t *testing.T) {
			tr := load(t)
			bin := buildGochain(t, ldflags)
			p := start(t, bin)
			ready := p.read("ready")
			g, id := p.uint(ready, 1), p.uint(ready, 2)
			if err := tr.AttachProcess(p.pid, bin); err != nil {
				t.Fatal(err)
			}
			var gp goruntimeGoProc
			if err := tr.maps.GoProcs.Lookup(uint32(p.pid), &gp); err != nil {
				t.Fatal(err)
			}
			t.Logf("go_proc: %+v", gp)
			if gp.GoidOff == 0 || gp.ParentOff == 0 || gp.StartpcOff == 0 || gp.Allgs == 0 || gp.WritechOff == 0 || gp.RecvqOff == 0 {
				t.Fatalf("incomplete go_proc %+v", gp)
			}
			if got := peek(t, p.pid, g+uint64(gp.GoidOff)); got != id {
				t.Fatalf("goid read at g+%d = %d, the goroutine says %d", gp.GoidOff, got, id)
			}
			chained := p.do("chain 3", "chained")
			cg, cid, parent := p.uint(chained, 1), p.uint(chained, 2), p.uint(chained, 3)
			if got := peek(t, p.pid, cg+uint64(gp.GoidOff)); got != cid {
				t.Fatalf("goid of the chained goroutine = %d, want %d", got, cid)
			}
			if got := peek(t, p.pid, cg+uint64(gp.ParentOff)); got != parent {
				t.Fatalf("parentGoid read at g+%d = %d, want %d", gp.ParentOff, got, parent)
			}
			arr, n := peek(t, p.pid, gp.Allgs), peek(t, p.pid, gp.Allgs+8)
			found := false
			for i := uint64(0); i < n && i < 1<<16; i++ {
				if peek(t, p.pid, arr+8*i) == cg {
					found = true
					break
				}
			}
			if !found {
				t.Fatalf("the chained goroutine's g %#x is not among the %d of allgs at %#x", cg, n, gp.Allgs)
			}
			p.do("release", "released")
			procs = append(procs, gp)
		})
	}
	// The linker lays data out a little differently without symbols: allgs
	// moves (each build's was checked live above).
	if len(procs) == 2 {
		procs[1].Allgs = procs[0].Allgs
	}
	if len(procs) == 2 && procs[0] != procs[1] {
		t.Errorf("stripped build differs: %+v, with symbols %+v", procs[1], procs[0])
	}
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
			tr, err := Load(Maps{}, Options{})
			if err != nil {
				t.Fatal(err)
			}
			tr.useMulti = variant == VariantUprobeMulti
			ids := map[ebpf.ProgramID]bool{}
			for _, prog := range []*ebpf.Program{tr.progs().RoundTrip, tr.progs().WriteLoop} {
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
