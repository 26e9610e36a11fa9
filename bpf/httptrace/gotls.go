//go:build linux

package httptrace

import (
	"debug/elf"
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/ebpftracing/ebpftracingreceiver/internal/goexe"
)

// Go's crypto/tls, probed in Go executables (Go does not use OpenSSL): the
// entry of (*Conn).Write, the entry of (*Conn).Read and each of its RET
// instructions (never a uretprobe: they crash Go programs). Entries are
// probed on the JBE of the stack check (goexe.EntryOffset), which the kernel
// emulates. uprobe_multi only: a perf-event uprobe given a pid fires for
// one thread.
const (
	symGoTLSWrite = "crypto/tls.(*Conn).Write"
	symGoTLSRead  = "crypto/tls.(*Conn).Read"

	progGoTLSWrite   = "httptrace_go_tls_write"
	progGoTLSRead    = "httptrace_go_tls_read"
	progGoTLSReadRet = "httptrace_go_tls_read_ret"
)

var goTLSProgs = []string{progGoTLSWrite, progGoTLSRead, progGoTLSReadRet}

// ErrGoTLSUnknown is returned for a Go executable using crypto/tls whose
// *tls.Conn → fd offsets are not known (stripped, of a release the table
// lacks): its HTTPS is not traced.
var ErrGoTLSUnknown = errors.New("Go crypto/tls offsets unknown (stripped executable of a release not in the table): no HTTPS spans")

// goTLSSites are the probe sites of a Go executable's crypto/tls, as file
// offsets, and what the programs read (addresses as linked).
type goTLSSites struct {
	write, read uint64
	rets        []uint64
	proc        httptraceGoTlsProc
	pie         bool
}

// inspectGoTLS finds the crypto/tls probe sites of path; nil without error
// for a program that is not Go or has no crypto/tls.
func inspectGoTLS(path string) (*goTLSSites, error) {
	info, err := goexe.Inspect(path, symGoTLSWrite, symGoTLSRead)
	switch {
	case errors.Is(err, goexe.ErrNotGo):
		return nil, nil
	case errors.Is(err, goexe.ErrUnsupportedGo):
		return nil, fmt.Errorf("%w: %v", ErrGoTLSUnknown, err)
	case err != nil:
		return nil, err
	}
	wr, okW := info.Funcs[symGoTLSWrite]
	rd, okR := info.Funcs[symGoTLSRead]
	if !okW || !okR {
		return nil, nil
	}
	if info.TLS == nil {
		return nil, fmt.Errorf("%w: %s", ErrGoTLSUnknown, info.GoVersion)
	}
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("parse executable: %w", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("go crypto/tls probes on %s: %w", f.Machine, ebpf.ErrNotSupported)
	}
	s := &goTLSSites{pie: f.Type == elf.ET_DYN}
	if s.write, err = goexe.ProbeSite(f, symGoTLSWrite, wr); err != nil {
		return nil, err
	}
	if s.read, err = goexe.ProbeSite(f, symGoTLSRead, rd); err != nil {
		return nil, err
	}
	if s.rets, err = goexe.RetSites(f, symGoTLSRead, rd); err != nil {
		return nil, err
	}
	s.proc = httptraceGoTlsProc{
		TcpconnItab: info.TCPConnItab,
		ConnOff:     uint32(info.TLS.Conn),
		FdOff:       uint32(info.TLS.FD),
		PfdOff:      uint32(info.TLS.PFD),
		SysfdOff:    uint32(info.TLS.Sysfd),
		GoidOff:     uint32(info.G.Goid),
	}
	return s, nil
}

// attachGo probes the crypto/tls of pid's executable (path is
// /proc/<pid>/exe). nil without error when it has none. An executable that
// cannot be probed gets an attachment without links and the error, so it
// is not inspected again.
func (x *TLS) attachGo(pid int, path string) (*tlsAttach, error) {
	if x.progs[progGoTLSWrite] == nil {
		return nil, nil
	}
	s, err := inspectGoTLS(path)
	if err != nil {
		return &tlsAttach{refs: 1, goTLS: true}, fmt.Errorf("go crypto/tls: %w", err)
	}
	if s == nil {
		return nil, nil
	}
	proc := s.proc
	if s.pie && proc.TcpconnItab != 0 {
		bias, err := goexe.LoadBias(pid, path)
		if err != nil {
			return nil, err
		}
		proc.TcpconnItab += bias
	}
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return nil, err
	}
	a := &tlsAttach{refs: 1, goTLS: true}
	for _, site := range []struct {
		prog  string
		sym   string
		addrs []uint64
	}{
		{progGoTLSWrite, symGoTLSWrite, []uint64{s.write}},
		{progGoTLSRead, symGoTLSRead, []uint64{s.read}},
		{progGoTLSReadRet, symGoTLSRead + " RET", s.rets},
	} {
		l, err := ex.UprobeMulti(nil, x.progs[site.prog], &link.UprobeMultiOptions{Addresses: site.addrs, PID: uint32(pid)})
		if err != nil {
			_ = closeAll(a.links)
			return nil, fmt.Errorf("uprobe_multi on %s at %#x: %w", site.sym, site.addrs, err)
		}
		a.links = append(a.links, l)
	}
	if err := x.goProcs.Put(uint32(pid), proc); err != nil {
		_ = closeAll(a.links)
		return nil, fmt.Errorf("go crypto/tls: %w", err)
	}
	return a, nil
}
