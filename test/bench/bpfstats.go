//go:build linux

package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// enableBPFStats turns on the kernel's BPF run-time statistics (run_time_ns,
// run_cnt per program) until the returned closer is closed.
//
// It uses BPF_ENABLE_STATS rather than writing the kernel.bpf_stats_enabled
// sysctl: the kernel counts the holders of these fds apart from the sysctl,
// so the sysctl keeps whatever value it had (another session on the machine
// may have set it), and the statistics go off again when this process exits,
// even if it is killed. Linux 5.8 or later.
func enableBPFStats() (io.Closer, error) {
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return nil, fmt.Errorf("enable BPF run-time statistics (BPF_ENABLE_STATS, Linux 5.8+): %w", err)
	}
	return c, nil
}

// progStat is one BPF program's cumulative run-time statistics.
type progStat struct {
	name string // the kernel's name for it (at most 15 characters)
	kind string // program type; "uprobe" for kprobe programs (see progKind)
	ns   uint64 // run_time_ns
	runs uint64 // run_cnt
}

// progStats is a snapshot of the statistics of a process's programs.
type progStats map[ebpf.ProgramID]progStat

// programsOf reads the statistics of every BPF program the process pid
// holds, directly (a bpf-prog fd) or through a link (a bpf_link fd): a
// program whose fd the loader closed after attaching stays reachable from its
// link. Both fd kinds list prog_id in /proc/<pid>/fdinfo.
func programsOf(pid int) (progStats, error) {
	ids, err := programIDs(pid)
	if err != nil {
		return nil, err
	}
	out := progStats{}
	for _, id := range ids {
		st, err := readProgStat(id)
		if err != nil {
			// The program went away between the two reads: the collector
			// detached it (a traced process exited).
			continue
		}
		out[id] = st
	}
	return out, nil
}

func programIDs(pid int) ([]ebpf.ProgramID, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list BPF programs of pid %d: %w", pid, err)
	}
	var ids []ebpf.ProgramID
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(dir, fd.Name()))
		if err != nil || (target != "anon_inode:bpf-prog" && target != "anon_inode:bpf_link") {
			continue
		}
		id, ok := fdinfoProgID(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, fd.Name()))
		if ok && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids, nil
}

func fdinfoProgID(path string) (ebpf.ProgramID, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "prog_id:"); ok {
			id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			return ebpf.ProgramID(id), err == nil && id > 0
		}
	}
	return 0, false
}

func readProgStat(id ebpf.ProgramID) (progStat, error) {
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return progStat{}, err
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return progStat{}, err
	}
	st, err := p.Stats()
	if err != nil {
		return progStat{}, err
	}
	return progStat{name: info.Name, kind: progKind(info.Type), ns: uint64(st.Runtime / time.Nanosecond), runs: st.RunCount}, nil
}

// progKind names a program type for the report. A kprobe-type program is a
// uprobe here: this receiver attaches no kprobe (the kernels it targets may
// lack CONFIG_KPROBES); its runs are uprobe hits.
func progKind(t ebpf.ProgramType) string {
	switch t {
	case ebpf.Kprobe:
		return "uprobe"
	case ebpf.RawTracepoint:
		return "raw_tp"
	case ebpf.TracePoint:
		return "tracepoint"
	case ebpf.Tracing:
		return "tp_btf"
	case ebpf.SockOps:
		return "sockops"
	case ebpf.SkMsg:
		return "sk_msg"
	case ebpf.SchedCLS:
		return "tc"
	}
	return strings.ToLower(t.String())
}

// progDelta is what one program ran between two snapshots.
type progDelta struct {
	name, kind string
	ns, runs   uint64
}

// since returns what each program of s ran after the snapshot before, keyed
// by "name kind" (a name can be shared by the programs of one loader that
// attach twice, e.g. once per traced executable: their runs add up).
func (s progStats) since(before progStats) map[string]progDelta {
	out := map[string]progDelta{}
	for id, a := range s {
		b := before[id] // zero when the program was loaded after before
		k := a.name + " " + a.kind
		d := out[k]
		d.name, d.kind = a.name, a.kind
		d.ns += a.ns - min(a.ns, b.ns)
		d.runs += a.runs - min(a.runs, b.runs)
		out[k] = d
	}
	return out
}
