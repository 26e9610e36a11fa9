//go:build linux

package goruntime

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"

	"github.com/ebpftracing/ebpftracingreceiver/internal/goexe"
)

// ErrNotGo is returned by AttachProcess for an executable that is not a Go
// program.
var ErrNotGo = goexe.ErrNotGo

// Functions probed, in the net/http client, if the program has one.
const (
	// roundTrip(pc *persistConn, req *transportRequest): the caller hands
	// its context to the connection's writeLoop goroutine.
	symRoundTrip = "net/http.(*persistConn).roundTrip"
	// writeLoop(pc *persistConn): the goroutine that writes pc's requests
	// starts (once per connection).
	symWriteLoop = "net/http.(*persistConn).writeLoop"
	// queueForDial(t *Transport, w *wantConn): the caller has no idle
	// connection and a goroutine is started to dial one (optional: the
	// hand-over works without it, but may lose the ancestry through an
	// exited goroutine).
	symQueueForDial = "net/http.(*Transport).queueForDial"
)

// Attach variants, chosen at Load by a feature probe.
const (
	// VariantUprobeMulti attaches one uprobe_multi link per program and
	// process (Linux 6.6): the kernel filters to the process, all threads.
	VariantUprobeMulti = "uprobe_multi"
	// VariantUprobe attaches one perf-event uprobe per probed instruction
	// and executable, for every process running it: a perf-event uprobe
	// given a pid fires for that one thread only. The programs filter on
	// traced_pids.
	VariantUprobe = "uprobe"
)

// maxExes bounds the cache of analysed executables.
const maxExes = 256

// Maps are the maps the programs share with httptrace and ctxprop. A nil
// field makes Load create that map from the package's own spec (standalone
// use and tests); Tracker.Maps returns the maps in use.
type Maps struct {
	TracedPids *ebpf.Map // tgid -> 1: processes to trace
	ThreadCtxs *ebpf.Map // pid_tgid -> context of the goroutine the thread runs
	GoProcs    *ebpf.Map // tgid -> go_proc: Go processes whose goroutines are tracked
	GoCtxs     *ebpf.Map // go_key{tgid, goid} -> context of the goroutine
	GoParents  *ebpf.Map // go_key{tgid, goid} -> parentGoid, learnt from allgs
}

// Options configure Load.
type Options struct {
	// NoHandOver leaves the net/http client unprobed: goroutines are still
	// followed (no uprobe at all), but a request written by the transport's
	// writeLoop on a pooled connection gets no parent.
	NoHandOver bool
	// ReturnAtOnce loads programs that return as soon as they run (the
	// benchmark floor).
	ReturnAtOnce bool
}

type programs struct {
	RoundTrip *ebpf.Program `ebpf:"goruntime_round_trip"`
	WriteLoop *ebpf.Program `ebpf:"goruntime_write_loop"`
	Dial      *ebpf.Program `ebpf:"goruntime_dial"`
}

type multiPrograms struct {
	RoundTrip *ebpf.Program `ebpf:"goruntime_round_trip_multi"`
	WriteLoop *ebpf.Program `ebpf:"goruntime_write_loop_multi"`
	Dial      *ebpf.Program `ebpf:"goruntime_dial_multi"`
}

// Tracker is the loaded goroutine tracker; AttachProcess adds processes.
type Tracker struct {
	mu     sync.Mutex
	maps   goruntimeMaps
	single programs
	multi  *multiPrograms // nil: the kernel has no uprobe_multi links
	// useMulti selects VariantUprobeMulti (tests force VariantUprobe).
	useMulti bool
	handOver bool // the net/http client's hand-over is probed
	exes     map[exeKey]*exeInfo
	procs    map[int]exeKey
	links    map[int][]link.Link         // VariantUprobeMulti: per process
	shared   map[exeKey]*executableLinks // VariantUprobe: per executable
	closed   bool
}

// executableLinks are the system-wide uprobes of one executable, shared by
// the processes that run it.
type executableLinks struct {
	links []link.Link
	pids  int
}

// exeKey names one version of an executable file.
type exeKey struct {
	dev, ino uint64
	size     int64
	mtimeNs  int64
}

// exeInfo is the analysis of an executable: what the programs read in its
// goroutines, file offsets of the probed instructions, or why it cannot be
// followed.
type exeInfo struct {
	proc goruntimeGoProc // addresses as linked (before any PIE bias)
	pie  bool
	// The net/http client sites (file offsets), 0 when the program has no
	// net/http client.
	roundTrip uint64
	writeLoop uint64
	dial      uint64 // 0: not probed
	err       error
}

// Load loads the programs, sharing the given maps. On a verifier refusal the
// error carries the verifier log.
func Load(maps Maps, opts Options) (*Tracker, error) {
	spec, err := loadGoruntime()
	if err != nil {
		return nil, fmt.Errorf("load goruntime spec: %w", err)
	}
	if opts.ReturnAtOnce {
		if err := spec.Variables["return_at_once"].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("set return_at_once: %w", err)
		}
	}
	repl := map[string]*ebpf.Map{}
	for name, m := range map[string]*ebpf.Map{
		"traced_pids": maps.TracedPids,
		"thread_ctxs": maps.ThreadCtxs,
		"go_procs":    maps.GoProcs,
		"go_ctxs":     maps.GoCtxs,
		"go_parents":  maps.GoParents,
	} {
		if m != nil {
			repl[name] = m
		}
	}
	t := &Tracker{
		exes:     map[exeKey]*exeInfo{},
		procs:    map[int]exeKey{},
		links:    map[int][]link.Link{},
		shared:   map[exeKey]*executableLinks{},
		handOver: !opts.NoHandOver,
	}
	if err := spec.LoadAndAssign(&t.maps, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		return nil, fmt.Errorf("load goruntime maps: %w", err)
	}
	if !t.handOver {
		return t, nil
	}
	all := map[string]*ebpf.Map{
		"traced_pids":    t.maps.TracedPids,
		"thread_ctxs":    t.maps.ThreadCtxs,
		"go_procs":       t.maps.GoProcs,
		"go_ctxs":        t.maps.GoCtxs,
		"go_parents":     t.maps.GoParents,
		"go_write_loops": t.maps.GoWriteLoops,
		"go_handed":      t.maps.GoHanded,
	}
	if err := loadPrograms(spec, &t.single, all); err != nil {
		_ = t.maps.Close()
		return nil, err
	}
	if features.HaveBPFLinkUprobeMulti() == nil {
		t.multi = &multiPrograms{}
		if err := loadPrograms(spec, t.multi, all); err != nil {
			_ = t.closePrograms()
			_ = t.maps.Close()
			return nil, err
		}
		t.useMulti = true
	}
	return t, nil
}

func loadPrograms(spec *ebpf.CollectionSpec, to any, maps map[string]*ebpf.Map) error {
	err := spec.LoadAndAssign(to, &ebpf.CollectionOptions{MapReplacements: maps})
	if err == nil {
		return nil
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) {
		return fmt.Errorf("load goruntime programs: %w\n%+v", err, ve)
	}
	return fmt.Errorf("load goruntime programs: %w", err)
}

// Variant is the attach variant in use: VariantUprobeMulti or VariantUprobe,
// or "none" without the net/http hand-over.
func (t *Tracker) Variant() string {
	switch {
	case !t.handOver:
		return "none"
	case t.useMulti:
		return VariantUprobeMulti
	}
	return VariantUprobe
}

// Maps returns the maps in use, the given ones or those Load created. They
// stay owned by the Tracker (or the caller that passed them).
func (t *Tracker) Maps() Maps {
	return Maps{TracedPids: t.maps.TracedPids, ThreadCtxs: t.maps.ThreadCtxs, GoProcs: t.maps.GoProcs, GoCtxs: t.maps.GoCtxs, GoParents: t.maps.GoParents}
}

// AttachProcess follows the goroutines of Go process pid: what the kernel
// programs read in its goroutines goes to go_procs and, unless Options
// NoHandOver, the net/http client's hand-over is probed. The executable is
// opened through /proc/<pid>/exe, which resolves in the process's mount
// namespace (containers); exePath only names it in errors. The analysis of
// an executable (build info, DWARF or the per-release offsets, pclntab) is
// cached by device, inode, size and mtime, so processes of one binary share
// it. Stripped executables are followed too. Returns an error wrapping
// ErrNotGo for a non-Go executable (cheap: one ELF section lookup), and
// ebpf.ErrNotSupported for another architecture than amd64.
// The programs act only on processes in traced_pids, which httptrace fills.
// Attaching a process already attached with the same executable is a no-op.
func (t *Tracker) AttachProcess(pid int, exePath string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return fmt.Errorf("attach go runtime probes to pid %d: tracker closed", pid)
	}
	path := fmt.Sprintf("/proc/%d/exe", pid)
	key, err := statKey(path)
	if err != nil {
		return fmt.Errorf("attach go runtime probes to pid %d (%s): %w", pid, exePath, err)
	}
	if old, ok := t.procs[pid]; ok {
		if old == key {
			return nil
		}
		// The pid was reused by another program.
		if err := t.detachLocked(pid); err != nil {
			return err
		}
	}
	info := t.exes[key]
	if info == nil {
		info = analyze(path)
		if len(t.exes) >= maxExes {
			for k := range t.exes {
				delete(t.exes, k)
				break
			}
		}
		t.exes[key] = info
	}
	if info.err != nil {
		return fmt.Errorf("attach go runtime probes to pid %d (%s): %w", pid, exePath, info.err)
	}
	proc := info.proc
	if info.pie {
		bias, err := goexe.LoadBias(pid, path)
		if err != nil {
			return fmt.Errorf("attach go runtime probes to pid %d (%s): %w", pid, exePath, err)
		}
		if proc.Allgs != 0 {
			proc.Allgs += bias
		}
		if proc.WriteLoop != 0 {
			proc.WriteLoop += bias
		}
	}
	if t.handOver && info.roundTrip != 0 && info.writeLoop != 0 {
		ex, err := link.OpenExecutable(path)
		if err != nil {
			return fmt.Errorf("attach go runtime probes to pid %d (%s): %w", pid, exePath, err)
		}
		if t.useMulti {
			links, err := attachMulti(ex, t.progs(), info, pid)
			if err != nil {
				return fmt.Errorf("attach go runtime probes to pid %d (%s): %w", pid, exePath, err)
			}
			t.links[pid] = links
		} else if sh := t.shared[key]; sh != nil {
			sh.pids++
		} else {
			links, err := attachSingle(ex, t.single, info)
			if err != nil {
				return fmt.Errorf("attach go runtime probes to pid %d (%s): %w", pid, exePath, err)
			}
			t.shared[key] = &executableLinks{links: links, pids: 1}
		}
	}
	t.procs[pid] = key
	// From now on httptrace and ctxprop key the process's contexts by
	// goroutine.
	if err := t.maps.GoProcs.Put(uint32(pid), proc); err != nil {
		_ = t.detachLocked(pid)
		return fmt.Errorf("attach go runtime probes to pid %d (%s): %w", pid, exePath, err)
	}
	return nil
}

// progs are the programs of the variant in use.
func (t *Tracker) progs() programs {
	if t.useMulti {
		return programs(*t.multi)
	}
	return t.single
}

// site is one probed instruction and its program.
type site struct {
	prog *ebpf.Program
	sym  string
	addr uint64 // file offset
}

// probeSites are the instructions to probe in an executable (the optional
// ones it has).
func probeSites(p programs, info *exeInfo) []site {
	all := []site{
		{p.RoundTrip, symRoundTrip, info.roundTrip},
		{p.WriteLoop, symWriteLoop, info.writeLoop},
		{p.Dial, symQueueForDial, info.dial},
	}
	var sites []site
	for _, s := range all {
		if s.addr != 0 {
			sites = append(sites, s)
		}
	}
	return sites
}

func attachMulti(ex *link.Executable, p programs, info *exeInfo, pid int) ([]link.Link, error) {
	var links []link.Link
	for _, s := range probeSites(p, info) {
		l, err := ex.UprobeMulti(nil, s.prog, &link.UprobeMultiOptions{Addresses: []uint64{s.addr}, PID: uint32(pid)})
		if err != nil {
			closeLinks(links)
			return nil, fmt.Errorf("uprobe_multi on %s: %w", s.sym, err)
		}
		links = append(links, l)
	}
	return links, nil
}

func attachSingle(ex *link.Executable, p programs, info *exeInfo) ([]link.Link, error) {
	var links []link.Link
	for _, s := range probeSites(p, info) {
		l, err := ex.Uprobe("", s.prog, &link.UprobeOptions{Address: s.addr})
		if err != nil {
			closeLinks(links)
			return nil, fmt.Errorf("uprobe on %s at file offset %#x: %w", s.sym, s.addr, err)
		}
		links = append(links, l)
	}
	return links, nil
}

func closeLinks(links []link.Link) error {
	var errs []error
	for _, l := range links {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

// DetachProcess removes the probes of process pid (with VariantUprobe, the
// executable's probes when its last attached process goes). A pid not
// attached is not an error.
func (t *Tracker) DetachProcess(pid int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.detachLocked(pid)
}

func (t *Tracker) detachLocked(pid int) error {
	key, ok := t.procs[pid]
	if !ok {
		return nil
	}
	delete(t.procs, pid)
	_ = t.maps.GoProcs.Delete(uint32(pid))
	var err error
	if links, ok := t.links[pid]; ok {
		delete(t.links, pid)
		err = closeLinks(links)
	} else if sh := t.shared[key]; sh != nil {
		if sh.pids--; sh.pids == 0 {
			delete(t.shared, key)
			err = closeLinks(sh.links)
		}
	}
	if err != nil {
		return fmt.Errorf("detach go runtime probes from pid %d: %w", pid, err)
	}
	return nil
}

// Close detaches every process and closes the programs and maps. Safe to
// call twice.
func (t *Tracker) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	for pid := range t.procs {
		errs = append(errs, t.detachLocked(pid))
	}
	errs = append(errs, t.closePrograms())
	if err := t.maps.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close goruntime maps: %w", err))
	}
	return errors.Join(errs...)
}

func (t *Tracker) closePrograms() error {
	progs := []*ebpf.Program{t.single.RoundTrip, t.single.WriteLoop, t.single.Dial}
	if t.multi != nil {
		progs = append(progs, t.multi.RoundTrip, t.multi.WriteLoop, t.multi.Dial)
	}
	var errs []error
	for _, p := range progs {
		if p != nil {
			if err := p.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close goruntime program: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

func statKey(path string) (exeKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return exeKey{}, fmt.Errorf("stat executable: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return exeKey{}, fmt.Errorf("stat executable %s: no device and inode", path)
	}
	return exeKey{dev: st.Dev, ino: st.Ino, size: st.Size, mtimeNs: fi.ModTime().UnixNano()}, nil
}

// analyze reads what the kernel programs need of an executable: runtime.g
// offsets, the goroutine table, and the file offsets of the net/http
// client's probe sites if it has them.
func analyze(path string) *exeInfo {
	info, err := analyzeELF(path)
	if err != nil {
		return &exeInfo{err: err}
	}
	return info
}

func analyzeELF(path string) (*exeInfo, error) {
	gi, err := goexe.Inspect(path, symRoundTrip, symWriteLoop, symQueueForDial)
	if err != nil {
		return nil, err
	}
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("parse executable: %w", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("follow goroutines of a %s executable: %w", f.Machine, ebpf.ErrNotSupported)
	}
	info := &exeInfo{pie: f.Type == elf.ET_DYN}
	info.proc = goruntimeGoProc{
		Allgs:      gi.AllGs,
		GoidOff:    uint32(gi.G.Goid),
		ParentOff:  uint32(gi.G.ParentGoid),
		StartpcOff: uint32(gi.G.StartPC),
		WritechOff: uint32(gi.G.Writech),
		RecvqOff:   uint32(gi.G.Recvq),
	}
	rt, okRT := gi.Funcs[symRoundTrip]
	wl, okWL := gi.Funcs[symWriteLoop]
	if okRT && okWL {
		// What the writeLoop goroutine's g.startpc holds: the wrapper the
		// go statement starts (writeLoop itself if none is found).
		info.proc.WriteLoop = wl.Entry
		if start := gi.Starts[symWriteLoop]; start != 0 {
			info.proc.WriteLoop = start
		}
		if info.roundTrip, err = goexe.EntrySite(f, symRoundTrip, rt); err != nil {
			return nil, err
		}
		if info.writeLoop, err = goexe.EntrySite(f, symWriteLoop, wl); err != nil {
			return nil, err
		}
		if qd, ok := gi.Funcs[symQueueForDial]; ok {
			if info.dial, err = goexe.EntrySite(f, symQueueForDial, qd); err != nil {
				return nil, err
			}
		}
	}
	return info, nil
}
