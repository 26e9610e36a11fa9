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
	"golang.org/x/arch/x86/x86asm"
)

// ErrNotGo is returned by AttachProcess for an executable that is not a Go
// program, or a Go program without a symbol table (built with -ldflags=-s).
var ErrNotGo = errors.New("not a Go executable with a symbol table")

// Symbols probed in the Go runtime.
const (
	symNewproc1 = "runtime.newproc1" // newproc1(fn *funcval, callergp *g, callerpc uintptr, parked bool, waitreason waitReason) *g
	// net/http client, optional: a request handed to the transport's
	// writeLoop goroutine on a pooled connection.
	symRoundTrip    = "net/http.(*persistConn).roundTrip" // roundTrip(pc *persistConn, req *transportRequest)
	symRequestWrite = "net/http.(*Request).write"         // write(r *Request, w io.Writer, ...)
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
	GoProcs    *ebpf.Map // tgid -> 1: Go processes whose goroutines are tracked
	GoCtxs     *ebpf.Map // go_key{tgid, g} -> context of the goroutine
}

type programs struct {
	Newproc1     *ebpf.Program `ebpf:"goruntime_newproc1"`
	Newproc1Ret  *ebpf.Program `ebpf:"goruntime_newproc1_ret"`
	RoundTrip    *ebpf.Program `ebpf:"goruntime_round_trip"`
	RequestWrite *ebpf.Program `ebpf:"goruntime_request_write"`
}

type multiPrograms struct {
	Newproc1     *ebpf.Program `ebpf:"goruntime_newproc1_multi"`
	Newproc1Ret  *ebpf.Program `ebpf:"goruntime_newproc1_ret_multi"`
	RoundTrip    *ebpf.Program `ebpf:"goruntime_round_trip_multi"`
	RequestWrite *ebpf.Program `ebpf:"goruntime_request_write_multi"`
}

// Tracker is the loaded goroutine tracker; AttachProcess adds processes.
type Tracker struct {
	mu     sync.Mutex
	maps   goruntimeMaps
	single programs
	multi  *multiPrograms // nil: the kernel has no uprobe_multi links
	// useMulti selects VariantUprobeMulti (tests force VariantUprobe).
	useMulti bool
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

// exeInfo is the analysis of an executable: file offsets of the probed
// instructions, or why it cannot be probed.
type exeInfo struct {
	newproc1 uint64
	rets     []uint64
	// The net/http client sites, 0 when the program has no net/http client.
	roundTrip    uint64
	requestWrite uint64
	err          error
}

// Load loads the programs, sharing the given maps. On a verifier refusal the
// error carries the verifier log.
func Load(maps Maps) (*Tracker, error) {
	spec, err := loadGoruntime()
	if err != nil {
		return nil, fmt.Errorf("load goruntime spec: %w", err)
	}
	repl := map[string]*ebpf.Map{}
	for name, m := range map[string]*ebpf.Map{
		"traced_pids": maps.TracedPids,
		"thread_ctxs": maps.ThreadCtxs,
		"go_procs":    maps.GoProcs,
		"go_ctxs":     maps.GoCtxs,
	} {
		if m != nil {
			repl[name] = m
		}
	}
	t := &Tracker{
		exes:   map[exeKey]*exeInfo{},
		procs:  map[int]exeKey{},
		links:  map[int][]link.Link{},
		shared: map[exeKey]*executableLinks{},
	}
	if err := spec.LoadAndAssign(&t.maps, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		return nil, fmt.Errorf("load goruntime maps: %w", err)
	}
	all := map[string]*ebpf.Map{
		"traced_pids":        t.maps.TracedPids,
		"thread_ctxs":        t.maps.ThreadCtxs,
		"go_procs":           t.maps.GoProcs,
		"go_ctxs":            t.maps.GoCtxs,
		"go_newproc_pending": t.maps.GoNewprocPending,
		"go_http_reqs":       t.maps.GoHttpReqs,
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

// Variant is the attach variant in use: VariantUprobeMulti or VariantUprobe.
func (t *Tracker) Variant() string {
	if t.useMulti {
		return VariantUprobeMulti
	}
	return VariantUprobe
}

// Maps returns the maps in use, the given ones or those Load created. They
// stay owned by the Tracker (or the caller that passed them).
func (t *Tracker) Maps() Maps {
	return Maps{TracedPids: t.maps.TracedPids, ThreadCtxs: t.maps.ThreadCtxs, GoProcs: t.maps.GoProcs, GoCtxs: t.maps.GoCtxs}
}

// AttachProcess probes the Go runtime of process pid. The executable is
// opened through /proc/<pid>/exe, which resolves in the process's mount
// namespace (containers); exePath only names it in errors. The analysis of
// an executable (symbols, RET instructions) is cached by device, inode,
// size and mtime, so processes of one binary share it. Returns an error
// wrapping ErrNotGo for a non-Go or stripped executable (cheap: one ELF
// section lookup), and ebpf.ErrNotSupported for a Go executable of another
// architecture than amd64 (RET sites are found by an x86 disassembler).
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
	t.procs[pid] = key
	// From now on httptrace and ctxprop key the process's contexts by
	// goroutine.
	if err := t.maps.GoProcs.Put(uint32(pid), uint32(1)); err != nil {
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

func attachMulti(ex *link.Executable, p programs, info *exeInfo, pid int) ([]link.Link, error) {
	sites := []struct {
		prog  *ebpf.Program
		sym   string
		addrs []uint64
	}{
		{p.Newproc1, symNewproc1, []uint64{info.newproc1}},
		{p.Newproc1Ret, symNewproc1 + " RET", info.rets},
	}
	if info.roundTrip != 0 && info.requestWrite != 0 {
		sites = append(sites,
			struct {
				prog  *ebpf.Program
				sym   string
				addrs []uint64
			}{p.RoundTrip, symRoundTrip, []uint64{info.roundTrip}},
			struct {
				prog  *ebpf.Program
				sym   string
				addrs []uint64
			}{p.RequestWrite, symRequestWrite, []uint64{info.requestWrite}})
	}
	var links []link.Link
	for _, s := range sites {
		l, err := ex.UprobeMulti(nil, s.prog, &link.UprobeMultiOptions{Addresses: s.addrs, PID: uint32(pid)})
		if err != nil {
			closeLinks(links)
			return nil, fmt.Errorf("uprobe_multi on %s: %w", s.sym, err)
		}
		links = append(links, l)
	}
	return links, nil
}

func attachSingle(ex *link.Executable, p programs, info *exeInfo) ([]link.Link, error) {
	type site struct {
		prog *ebpf.Program
		sym  string
		addr uint64
	}
	sites := []site{{p.Newproc1, symNewproc1, info.newproc1}}
	for _, r := range info.rets {
		sites = append(sites, site{p.Newproc1Ret, symNewproc1 + " RET", r})
	}
	if info.roundTrip != 0 && info.requestWrite != 0 {
		sites = append(sites, site{p.RoundTrip, symRoundTrip, info.roundTrip}, site{p.RequestWrite, symRequestWrite, info.requestWrite})
	}
	var links []link.Link
	for _, s := range sites {
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
	progs := []*ebpf.Program{t.single.Newproc1, t.single.Newproc1Ret, t.single.RoundTrip, t.single.RequestWrite}
	if t.multi != nil {
		progs = append(progs, t.multi.Newproc1, t.multi.Newproc1Ret, t.multi.RoundTrip, t.multi.RequestWrite)
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

// analyze finds the file offsets of runtime.newproc1 and of its RET
// instructions, and of the net/http client sites if the program has them.
func analyze(path string) *exeInfo {
	info, err := analyzeELF(path)
	if err != nil {
		return &exeInfo{err: err}
	}
	return info
}

func analyzeELF(path string) (*exeInfo, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("parse executable: %w", err)
	}
	defer f.Close()
	// Every Go executable has it, stripped or not: no symbol table read
	// for other programs.
	if f.Section(".go.buildinfo") == nil {
		return nil, ErrNotGo
	}
	syms, err := f.Symbols()
	if errors.Is(err, elf.ErrNoSymbols) {
		return nil, fmt.Errorf("go executable without symbol table (stripped): %w", ErrNotGo)
	}
	if err != nil {
		return nil, fmt.Errorf("read symbol table: %w", err)
	}
	var np, rt, rw *elf.Symbol
	for i := range syms {
		s := &syms[i]
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC {
			continue
		}
		switch s.Name {
		case symNewproc1:
			np = s
		case symRoundTrip:
			rt = s
		case symRequestWrite:
			rw = s
		}
	}
	if np == nil {
		return nil, fmt.Errorf("symbol %s not found: %w", symNewproc1, ErrNotGo)
	}
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("find RET instructions of %s: %s executable: %w", symNewproc1, f.Machine, ebpf.ErrNotSupported)
	}
	info := &exeInfo{}
	npOff, npCode, err := fileOffset(f, np)
	if err != nil {
		return nil, err
	}
	info.newproc1 = npOff + entryOffset(npCode)
	rets, err := retOffsets(npCode)
	if err != nil {
		return nil, fmt.Errorf("find RET instructions of %s: %w", symNewproc1, err)
	}
	for _, r := range rets {
		info.rets = append(info.rets, npOff+r)
	}
	if rt != nil && rw != nil {
		rtOff, rtCode, err := fileOffset(f, rt)
		if err != nil {
			return nil, err
		}
		rwOff, rwCode, err := fileOffset(f, rw)
		if err != nil {
			return nil, err
		}
		info.roundTrip = rtOff + entryOffset(rtCode)
		info.requestWrite = rwOff + entryOffset(rwCode)
	}
	return info, nil
}

// fileOffset converts a function symbol's address to its offset in the file
// (what uprobes take), and reads its code.
func fileOffset(f *elf.File, s *elf.Symbol) (uint64, []byte, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Flags&elf.PF_X == 0 || s.Value < p.Vaddr || s.Value >= p.Vaddr+p.Filesz {
			continue
		}
		off := s.Value - p.Vaddr
		if s.Size == 0 || off+s.Size > p.Filesz {
			return 0, nil, fmt.Errorf("symbol %s: size %d outside its segment", s.Name, s.Size)
		}
		code := make([]byte, s.Size)
		if _, err := p.ReadAt(code, int64(off)); err != nil {
			return 0, nil, fmt.Errorf("read code of %s: %w", s.Name, err)
		}
		return p.Off + off, code, nil
	}
	return 0, nil, fmt.Errorf("symbol %s: address %#x in no executable segment", s.Name, s.Value)
}

// entryOffset is where to probe a function's entry. Go functions start with
// a stack check, "CMPQ SP, 16(R14); JBE morestack" (with "LEAQ -n(SP), R12"
// first for large frames). x86 uprobes emulate a conditional jump but
// single-step a CMP out of line, a second trap: probing the JBE costs one
// trap instead of two. Arguments are still in their registers there (R12 is
// a scratch register, not an argument one). Any other prologue is probed at
// its first instruction. If the stack must grow, the function restarts and
// the probe fires twice with the same arguments: the programs are
// idempotent (and newproc1 runs on the system stack).
func entryOffset(code []byte) uint64 {
	var off uint64
	for range 3 {
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			return 0
		}
		switch {
		case inst.Op == x86asm.JBE || inst.Op == x86asm.JB || inst.Op == x86asm.JA || inst.Op == x86asm.JAE:
			return off
		case inst.Op == x86asm.CMP:
		case inst.Op == x86asm.LEA && inst.Args[0] == x86asm.R12:
		default:
			return 0
		}
		off += uint64(inst.Len)
	}
	return 0
}

// retOffsets disassembles amd64 code linearly (Go puts no data in its
// functions' code) and returns the offsets of its RET instructions. A byte
// that does not decode is skipped.
func retOffsets(code []byte) ([]uint64, error) {
	var rets []uint64
	for i := 0; i < len(code); {
		inst, err := x86asm.Decode(code[i:], 64)
		if err != nil || inst.Len == 0 {
			i++
			continue
		}
		if inst.Op == x86asm.RET {
			rets = append(rets, uint64(i))
		}
		i += inst.Len
	}
	if len(rets) == 0 {
		return nil, errors.New("no RET instruction")
	}
	return rets, nil
}
