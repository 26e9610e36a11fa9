//go:build linux

package httptrace

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
)

// TLS attach variants, chosen by LoadTLS with a feature probe.
const (
	// TLSUprobeMulti attaches uprobe_multi links per process (Linux 6.6):
	// the kernel places the breakpoints in that process only, so other
	// processes using the same libssl pay nothing.
	TLSUprobeMulti = "uprobe_multi"
	// TLSUprobe attaches perf-event uprobes per library file, for every
	// process mapping it (a perf-event uprobe given a pid fires for one
	// thread only); the programs drop processes not in traced_pids, but
	// every process using that file takes the trap.
	TLSUprobe = "uprobe"
)

// The OpenSSL/BoringSSL functions probed, with their entry programs; the
// reads also get the return program.
var tlsSymbols = []struct {
	sym, prog string
	read      bool
}{
	{"SSL_read", "httptrace_ssl_read", true},
	{"SSL_read_ex", "httptrace_ssl_read_ex", true},
	{"SSL_write", "httptrace_ssl_write", false},
	{"SSL_write_ex", "httptrace_ssl_write_ex", false},
}

const tlsReturnProg = "httptrace_ssl_read_return"

// TLS places the TLS library uprobes (OpenSSL, BoringSSL) in selected
// processes: on every libssl mapped in /proc/<pid>/maps and on the
// executable itself when it exports SSL_read (Node.js links OpenSSL
// statically). The plaintext goes through the same per-connection state as
// the socket path, so HTTPS spans carry the same attributes.
type TLS struct {
	mu      sync.Mutex
	multi   bool
	progs   map[string]*ebpf.Program
	procs   map[int]map[fileKey]*tlsAttach // per process: the files probed
	shared  map[fileKey]*tlsAttach         // TLSUprobe: per file, shared
	membio  *ebpf.Map                      // tls_membio: OpenSSL linked into the executable
	goProcs *ebpf.Map                      // go_tls_procs: Go processes whose crypto/tls is probed
	closed  bool
}

type fileKey struct{ dev, ino uint64 }

type tlsAttach struct {
	links []link.Link
	refs  int
	goTLS bool // Go's crypto/tls in the executable (gotls.go)
}

// LoadTLS loads the TLS programs, sharing t's maps. UprobeMulti selects
// uprobe_multi links when the kernel has them; false forces TLSUprobe.
func (t *Tracer) LoadTLS(multi bool) (*TLS, error) {
	if multi && features.HaveBPFLinkUprobeMulti() != nil {
		multi = false
	}
	coll := &ebpf.CollectionSpec{
		Maps:      t.spec.Maps,
		Programs:  map[string]*ebpf.ProgramSpec{},
		Variables: t.spec.Variables,
		Types:     t.spec.Types,
		ByteOrder: t.spec.ByteOrder,
	}
	suffix := ""
	if multi {
		suffix = "_multi"
	}
	names := []string{tlsReturnProg}
	for _, s := range tlsSymbols {
		names = append(names, s.prog)
	}
	for _, n := range names {
		if coll.Programs[n] = t.spec.Programs[n+suffix]; coll.Programs[n] == nil {
			return nil, fmt.Errorf("load tls programs: no program %s", n+suffix)
		}
	}
	if multi {
		// Go's crypto/tls: uprobe_multi only (gotls.go).
		for _, n := range goTLSProgs {
			coll.Programs[n] = t.spec.Programs[n]
			names = append(names, n)
		}
	}
	c, err := ebpf.NewCollectionWithOptions(coll, ebpf.CollectionOptions{MapReplacements: t.mapReplacements()})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load tls programs: %w\n%+v", err, ve)
		}
		return nil, fmt.Errorf("load tls programs: %w", err)
	}
	x := &TLS{membio: t.objs.TlsMembio, goProcs: t.objs.GoTlsProcs, multi: multi, progs: map[string]*ebpf.Program{}, procs: map[int]map[fileKey]*tlsAttach{}, shared: map[fileKey]*tlsAttach{}}
	for _, n := range names {
		x.progs[n] = c.DetachProgram(n)
	}
	c.Close()
	return x, nil
}

// Variant is TLSUprobeMulti or TLSUprobe.
func (x *TLS) Variant() string {
	if x.multi {
		return TLSUprobeMulti
	}
	return TLSUprobe
}

// AttachProcess probes the TLS libraries process pid has mapped that are not
// probed yet: a second call (after a dlopen) adds only the new ones. A
// process without a TLS library is not an error. Returns the number of
// files newly probed.
func (x *TLS) AttachProcess(pid int) (int, error) {
	files, err := tlsFiles(pid)
	if err != nil {
		return 0, fmt.Errorf("tls probes for pid %d: %w", pid, err)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return 0, fmt.Errorf("tls probes for pid %d: closed", pid)
	}
	have := x.procs[pid]
	if have == nil {
		have = map[fileKey]*tlsAttach{}
		x.procs[pid] = have
	}
	var added int
	var errs []error
	for key, path := range files {
		if have[key] != nil {
			continue
		}
		a, err := x.attachFile(pid, key, path)
		if err != nil {
			errs = append(errs, fmt.Errorf("tls probes for pid %d on %s: %w", pid, path, err))
		}
		if a != nil {
			have[key] = a
			added++
			if strings.HasSuffix(path, "/exe") && !a.goTLS {
				// OpenSSL inside the executable (Node.js): it reads the
				// ciphertext into a memory BIO before SSL_read.
				if err := x.membio.Put(uint32(pid), uint32(1)); err != nil {
					errs = append(errs, fmt.Errorf("tls probes for pid %d: %w", pid, err))
				}
			}
		}
	}
	return added, errors.Join(errs...)
}

// Rescan is AttachProcess for a process already attached (after a dlopen);
// a process detached meanwhile is left alone.
func (x *TLS) Rescan(pid int) {
	x.mu.Lock()
	_, ok := x.procs[pid]
	x.mu.Unlock()
	if ok {
		_, _ = x.AttachProcess(pid)
	}
}

// Pids lists the processes attached (to rescan them for dlopen'ed libraries).
func (x *TLS) Pids() []int {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]int, 0, len(x.procs))
	for pid := range x.procs {
		out = append(out, pid)
	}
	return out
}

// attachFile probes one file for pid; nil without error when the file has
// no SSL_read.
func (x *TLS) attachFile(pid int, key fileKey, path string) (*tlsAttach, error) {
	if !x.multi {
		if a := x.shared[key]; a != nil {
			a.refs++
			return a, nil
		}
	}
	syms, err := exportedTLSSymbols(path)
	if err != nil {
		return nil, err
	}
	if len(syms) == 0 {
		if strings.HasSuffix(path, "/exe") {
			return x.attachGo(pid, path)
		}
		return nil, nil
	}
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return nil, err
	}
	a := &tlsAttach{refs: 1}
	fail := func(err error) (*tlsAttach, error) {
		_ = closeAll(a.links)
		return nil, err
	}
	var reads []string
	for _, s := range tlsSymbols {
		if !syms[s.sym] {
			continue
		}
		if s.read {
			reads = append(reads, s.sym)
		}
		if x.multi {
			l, err := ex.UprobeMulti([]string{s.sym}, x.progs[s.prog], &link.UprobeMultiOptions{PID: uint32(pid)})
			if err != nil {
				return fail(fmt.Errorf("uprobe_multi %s: %w", s.sym, err))
			}
			a.links = append(a.links, l)
			continue
		}
		l, err := ex.Uprobe(s.sym, x.progs[s.prog], nil)
		if err != nil {
			return fail(fmt.Errorf("uprobe %s: %w", s.sym, err))
		}
		a.links = append(a.links, l)
	}
	if x.multi && len(reads) > 0 {
		l, err := ex.UretprobeMulti(reads, x.progs[tlsReturnProg], &link.UprobeMultiOptions{PID: uint32(pid)})
		if err != nil {
			return fail(fmt.Errorf("uretprobe_multi %v: %w", reads, err))
		}
		a.links = append(a.links, l)
	} else {
		for _, sym := range reads {
			l, err := ex.Uretprobe(sym, x.progs[tlsReturnProg], nil)
			if err != nil {
				return fail(fmt.Errorf("uretprobe %s: %w", sym, err))
			}
			a.links = append(a.links, l)
		}
	}
	if !x.multi {
		x.shared[key] = a
	}
	return a, nil
}

// DetachProcess removes the probes of pid. A pid not attached is no error.
func (x *TLS) DetachProcess(pid int) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.detachLocked(pid)
}

func (x *TLS) detachLocked(pid int) error {
	have, ok := x.procs[pid]
	if !ok {
		return nil
	}
	delete(x.procs, pid)
	var errs []error
	if err := x.membio.Delete(uint32(pid)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	if err := x.goProcs.Delete(uint32(pid)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, err)
	}
	for key, a := range have {
		if a.refs--; a.refs > 0 {
			continue
		}
		delete(x.shared, key)
		errs = append(errs, closeAll(a.links))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach tls probes from pid %d: %w", pid, err)
	}
	return nil
}

// Close detaches every process and closes the programs. Safe twice.
func (x *TLS) Close() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.closed {
		return nil
	}
	x.closed = true
	var errs []error
	for pid := range x.procs {
		errs = append(errs, x.detachLocked(pid))
	}
	for n, p := range x.progs {
		if err := p.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

func closeAll(links []link.Link) error {
	var errs []error
	for _, l := range links {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

// tlsFiles are the files of pid that may hold the TLS library: every mapped
// libssl (by base name) and the executable, by device and inode, opened
// through /proc/<pid>/root (the process's mount namespace).
func tlsFiles(pid int) (map[fileKey]string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[fileKey]string{}
	add := func(path string) {
		fi, err := os.Stat(path)
		if err != nil {
			return
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return
		}
		out[fileKey{dev: st.Dev, ino: st.Ino}] = path
	}
	add(fmt.Sprintf("/proc/%d/exe", pid))
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		i := strings.IndexByte(line, '/')
		if i < 0 {
			continue
		}
		p := line[i:]
		base := filepath.Base(p)
		if seen[p] || !(strings.HasPrefix(base, "libssl.so") || strings.HasPrefix(base, "libboringssl")) {
			continue
		}
		seen[p] = true
		add(fmt.Sprintf("/proc/%d/root%s", pid, p))
	}
	return out, sc.Err()
}

// exportedTLSSymbols lists which of the probed functions path defines in
// its dynamic symbol table.
func exportedTLSSymbols(path string) (map[string]bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	want := map[string]bool{}
	for _, s := range tlsSymbols {
		want[s.sym] = true
	}
	out := map[string]bool{}
	syms, err := f.DynamicSymbols()
	if err != nil {
		return nil, nil // static executable without exports: nothing to probe
	}
	for _, s := range syms {
		if want[s.Name] && s.Value != 0 && elf.ST_TYPE(s.Info) == elf.STT_FUNC {
			out[s.Name] = true
		}
	}
	if !out["SSL_read"] && !out["SSL_read_ex"] {
		return nil, nil
	}
	return out, nil
}

// Stats are the kernel's run statistics (kernel.bpf_stats_enabled) of each
// TLS program, by program name.
func (x *TLS) Stats() (map[string]*ebpf.ProgramStats, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := map[string]*ebpf.ProgramStats{}
	for n, p := range x.progs {
		st, err := p.Stats()
		if err != nil {
			return nil, fmt.Errorf("stats of %s: %w", n, err)
		}
		out[n] = st
	}
	return out, nil
}
