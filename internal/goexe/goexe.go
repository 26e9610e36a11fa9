// Package goexe reads, from a Go executable file, what the kernel programs
// need to follow its goroutines, whether or not the binary is stripped
// (`go build -ldflags "-s -w"` removes the symbol table and DWARF, but keeps
// the build info and .gopclntab):
//
//   - the offsets of runtime.g's goid, parentGoid and startpc: from DWARF
//     when present, else from a per-release table (table.go, generated from
//     the DWARF of each release's own build, see gen_test.go) keyed by the
//     build info's Go version;
//   - function entries: from the symbol table when present, else from
//     .gopclntab (debug/gosym reads it in stripped binaries too);
//   - the address of the goroutine table runtime.allgs (a []*g): from the
//     symbol table when present, else from the code of runtime.forEachG,
//     which loads the slice's array and length (two RIP-relative loads of
//     adjacent words, A and A+8) after taking allglock (an address, LEA):
//     the lowest A loaded together with A+8 is allgs. Tests check it against
//     the symbol table of the same program built with symbols.
//
// amd64 only for allgs (the instruction decoder is x86's).
package goexe

import (
	"debug/buildinfo"
	"debug/dwarf"
	"debug/elf"
	"debug/gosym"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// ErrNotGo is returned for an executable that is not a Go program.
var ErrNotGo = errors.New("not a Go executable")

// ErrUnsupportedGo is returned for a stripped executable of a Go release the
// offset table does not hold (runtime.g has parentGoid since Go 1.21).
var ErrUnsupportedGo = errors.New("Go release without known runtime.g offsets")

// Func is a function's code, as virtual addresses.
type Func struct{ Entry, End uint64 }

// Offsets are byte offsets of runtime.g fields, and of the fields that lead
// from a net/http client connection to the goroutine that writes its
// requests: net/http.persistConn's writech (a channel) and runtime.hchan's
// recvq (its waiting receivers). Writech and Recvq are 0 in a program
// without net/http.
type Offsets struct {
	Goid, ParentGoid, StartPC uint64
	Writech, Recvq            uint64
}

// TLSOffsets lead from a *crypto/tls.Conn to the socket's file descriptor:
// Conn.conn (a net.Conn interface) holds a *net.TCPConn, which embeds
// net.conn, whose fd is a *net.netFD, whose pfd (an internal/poll.FD) has
// Sysfd.
type TLSOffsets struct {
	Conn  uint64 // crypto/tls.Conn.conn
	FD    uint64 // net.conn.fd
	PFD   uint64 // net.netFD.pfd
	Sysfd uint64 // internal/poll.FD.Sysfd
}

// tlsOffsets are TLSOffsets for stripped executables of the releases in the
// offset table: these fields have not moved since Go 1.9 (TestTLSOffsets
// checks the installed release's DWARF against it).
var tlsOffsets = TLSOffsets{Conn: 0, FD: 0, PFD: 0, Sysfd: 16}

// Info is what Inspect found.
type Info struct {
	// TLS is set when the program has crypto/tls.Conn and the offsets
	// leading to its socket are known (DWARF, else tlsOffsets).
	TLS *TLSOffsets
	// TCPConnItab is the link-time address of the itab of *net.TCPConn as
	// a net.Conn (symbol table only; 0 when stripped): what Conn.conn's
	// first word holds for a TCP connection.
	TCPConnItab uint64
	GoVersion   string // from the build info, e.g. "go1.26.8"
	HasDWARF    bool
	G           Offsets
	// AllGs is the link-time address of runtime.allgs, 0 if not found.
	AllGs uint64
	// Funcs holds the functions asked for that the program has.
	Funcs map[string]Func
	// Starts maps a function asked for to the entry of the wrapper a `go`
	// statement runs for it (`go pc.writeLoop()` starts
	// net/http.(*Transport).dialConn.gowrap3, which calls writeLoop): what
	// runtime.g.startpc holds in the goroutine. amd64 only.
	Starts map[string]uint64
}

const (
	symAllGs       = "runtime.allgs"
	symTCPConnItab = "go:itab.*net.TCPConn,net.Conn"
)

// hasFunc reports whether a function asked for (in funcs) of the package
// prefix pkg was found.
func hasFunc(all map[string]Func, funcs []string, pkg string) bool {
	for _, n := range funcs {
		if _, ok := all[n]; ok && strings.HasPrefix(n, pkg) {
			return true
		}
	}
	return false
}

// Inspect reads path. funcs names functions to look up (absent ones are
// left out of Info.Funcs).
func Inspect(path string, funcs ...string) (info *Info, err error) {
	// The standard library's ELF, DWARF and pclntab readers are meant to
	// return errors on bad input, but an executable on the host is input
	// nobody checked: a panic in them is one more reason to skip it.
	defer func() {
		if r := recover(); r != nil {
			info, err = nil, fmt.Errorf("parse executable: unreadable (%v)", r)
		}
	}()
	return inspect(path, funcs)
}

func inspect(path string, funcs []string) (*Info, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("parse executable: %w", err)
	}
	defer f.Close()
	// Every Go executable has it, stripped or not: nothing else is read
	// for other programs.
	if f.Section(".go.buildinfo") == nil {
		return nil, ErrNotGo
	}
	bi, err := buildinfo.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read Go build info: %w", err)
	}
	info := &Info{GoVersion: bi.GoVersion, Funcs: map[string]Func{}}

	if d, err := f.DWARF(); err == nil {
		if off, tlsOff, err := dwarfOffsets(d); err == nil {
			info.HasDWARF = true
			info.G = off
			info.TLS = tlsOff
		}
	}
	if !info.HasDWARF {
		off, ok := tableOffsets(info.GoVersion)
		if !ok {
			return nil, fmt.Errorf("%s, stripped: %w", info.GoVersion, ErrUnsupportedGo)
		}
		info.G = off
	}

	want := map[string]bool{"runtime.forEachG": true}
	pkgs := map[string]bool{}
	for _, n := range funcs {
		want[n] = true
		pkgs[funcPackage(n)] = true
	}
	all, objs, err := functions(f, func(name string) bool {
		return want[name] || (pkgs[funcPackage(name)] && isWrapper(name))
	})
	if err != nil {
		return nil, err
	}
	allgs := objs[symAllGs]
	info.TCPConnItab = objs[symTCPConnItab]
	if !info.HasDWARF && hasFunc(all, funcs, "crypto/tls.") {
		off := tlsOffsets
		info.TLS = &off
	}
	info.Starts = map[string]uint64{}
	for _, n := range funcs {
		fn, ok := all[n]
		if !ok {
			continue
		}
		info.Funcs[n] = fn
		if f.Machine != elf.EM_X86_64 {
			continue
		}
		for name, w := range all {
			if !want[name] && funcPackage(name) == funcPackage(n) && calls(f, w, fn.Entry) {
				info.Starts[n] = w.Entry
				break
			}
		}
	}
	info.AllGs = allgs
	if info.AllGs == 0 && f.Machine == elf.EM_X86_64 {
		if fe, ok := all["runtime.forEachG"]; ok {
			info.AllGs, _ = allgsFromCode(f, fe)
		}
	}
	return info, nil
}

// dwarfOffsets finds the fields of Offsets in DWARF: runtime.g's are
// required, the others taken if present; TLSOffsets when the program has
// crypto/tls.Conn (nil otherwise).
func dwarfOffsets(d *dwarf.Data) (Offsets, *TLSOffsets, error) {
	want := map[string]map[string]uint64{"runtime.g": nil, "runtime.hchan": nil, "net/http.persistConn": nil,
		"crypto/tls.Conn": nil, "net.conn": nil, "net.netFD": nil, "internal/poll.FD": nil}
	left := len(want)
	r := d.Reader()
	for left > 0 {
		e, err := r.Next()
		if err != nil || e == nil {
			break
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		if f, ok := want[name]; e.Tag != dwarf.TagStructType || !ok || f != nil {
			if e.Children && e.Tag != dwarf.TagCompileUnit {
				r.SkipChildren()
			}
			continue
		}
		fields := map[string]uint64{}
		for {
			m, err := r.Next()
			if err != nil || m == nil || m.Tag == 0 {
				break
			}
			if m.Tag != dwarf.TagMember {
				continue
			}
			fname, _ := m.Val(dwarf.AttrName).(string)
			if loc, ok := m.Val(dwarf.AttrDataMemberLoc).(int64); ok {
				fields[fname] = uint64(loc)
			}
		}
		want[name] = fields
		left--
	}
	g := want["runtime.g"]
	if g == nil {
		return Offsets{}, nil, errors.New("runtime.g not in DWARF")
	}
	off := Offsets{Goid: g["goid"], ParentGoid: g["parentGoid"], StartPC: g["startpc"]}
	if off.Goid == 0 || off.ParentGoid == 0 || off.StartPC == 0 {
		return Offsets{}, nil, fmt.Errorf("runtime.g without goid, parentGoid or startpc: %v", g)
	}
	pc, ch := want["net/http.persistConn"], want["runtime.hchan"]
	if pc["writech"] != 0 && ch["recvq"] != 0 {
		off.Writech, off.Recvq = pc["writech"], ch["recvq"]
	}
	return off, dwarfTLS(want), nil
}

// dwarfTLS is TLSOffsets from the structs' fields, nil if one is missing.
func dwarfTLS(structs map[string]map[string]uint64) *TLSOffsets {
	var o TLSOffsets
	for _, f := range []struct {
		st, field string
		to        *uint64
	}{
		{"crypto/tls.Conn", "conn", &o.Conn},
		{"net.conn", "fd", &o.FD},
		{"net.netFD", "pfd", &o.PFD},
		{"internal/poll.FD", "Sysfd", &o.Sysfd},
	} {
		v, ok := structs[f.st][f.field]
		if !ok {
			return nil
		}
		*f.to = v
	}
	return &o
}

// tableRelease is version's release: "go1.26" of "go1.26.8" or of
// "go1.26.8 X:nocoverageredesign".
func tableRelease(version string) (string, bool) {
	version, _, _ = strings.Cut(version, " ")
	rest, ok := strings.CutPrefix(version, "go1.")
	if !ok {
		return version, false
	}
	minor, _, _ := strings.Cut(rest, ".")
	return "go1." + minor, true
}

// tableOffsets looks version's release up in the generated table.
func tableOffsets(version string) (Offsets, bool) {
	release, ok := tableRelease(version)
	if !ok {
		return Offsets{}, false
	}
	off, ok := gOffsets[release]
	return off, ok
}

// funcPackage is the package path of a function's symbol name:
// "net/http" of "net/http.(*persistConn).writeLoop".
func funcPackage(name string) string {
	slash := strings.LastIndexByte(name, '/') + 1
	dot := strings.IndexByte(name[slash:], '.')
	if dot < 0 {
		return name
	}
	return name[:slash+dot]
}

// isWrapper tells a compiler-generated function a `go` statement may start:
// a go wrapper (".gowrapN", Go ≥ 1.22) or a closure (".funcN", before).
func isWrapper(name string) bool {
	return strings.Contains(name, ".gowrap") || strings.Contains(name, ".func")
}

// calls reports whether fn's code has a direct CALL to target (amd64).
func calls(f *elf.File, fn Func, target uint64) bool {
	found := false
	err := eachInst(f, fn, func(inst x86asm.Inst, next uint64) {
		if rel, ok := inst.Args[0].(x86asm.Rel); ok && inst.Op == x86asm.CALL && next+uint64(int64(rel)) == target {
			found = true
		}
	})
	return err == nil && found
}

// eachInst decodes fn's code (amd64), calling visit with each instruction
// and the address of the next one; undecodable bytes are skipped.
func eachInst(f *elf.File, fn Func, visit func(inst x86asm.Inst, next uint64)) error {
	text := f.Section(".text")
	if text == nil || fn.Entry < text.Addr || fn.End > text.Addr+text.Size || fn.End <= fn.Entry || fn.End-fn.Entry > 1<<20 {
		return errors.New("function outside .text")
	}
	code := make([]byte, fn.End-fn.Entry)
	if _, err := text.ReadAt(code, int64(fn.Entry-text.Addr)); err != nil {
		return err
	}
	for i := 0; i < len(code); {
		inst, err := x86asm.Decode(code[i:], 64)
		if err != nil || inst.Len == 0 {
			i++
			continue
		}
		i += inst.Len
		visit(inst, fn.Entry+uint64(i))
	}
	return nil
}

// functions returns the functions named in want, from the symbol table if
// there is one, else from .gopclntab, and the addresses of runtime.allgs and
// the *net.TCPConn itab from the symbol table (none without one).
func functions(f *elf.File, want func(name string) bool) (map[string]Func, map[string]uint64, error) {
	out := map[string]Func{}
	syms, err := f.Symbols()
	if err == nil {
		objs := map[string]uint64{}
		for _, s := range syms {
			switch {
			case (s.Name == symAllGs || s.Name == symTCPConnItab) && elf.ST_TYPE(s.Info) == elf.STT_OBJECT:
				objs[s.Name] = s.Value
			case elf.ST_TYPE(s.Info) == elf.STT_FUNC && want(s.Name):
				out[s.Name] = Func{Entry: s.Value, End: s.Value + s.Size}
			}
		}
		return out, objs, nil
	}
	if !errors.Is(err, elf.ErrNoSymbols) {
		return nil, nil, fmt.Errorf("read symbol table: %w", err)
	}
	pcln := f.Section(".gopclntab")
	text := f.Section(".text")
	if pcln == nil || text == nil {
		return nil, nil, errors.New("stripped Go executable without .gopclntab")
	}
	data, err := pcln.Data()
	if err != nil {
		return nil, nil, fmt.Errorf("read .gopclntab: %w", err)
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		return nil, nil, fmt.Errorf("parse .gopclntab: %w", err)
	}
	for _, fn := range tab.Funcs {
		if want(fn.Name) {
			out[fn.Name] = Func{Entry: fn.Entry, End: fn.End}
		}
	}
	return out, nil, nil
}

// allgsFromCode finds runtime.allgs in the code of runtime.forEachG: the
// lowest address A it loads (MOV) together with A+8.
func allgsFromCode(f *elf.File, fn Func) (uint64, error) {
	loads := map[uint64]bool{}
	err := eachInst(f, fn, func(inst x86asm.Inst, next uint64) {
		if inst.Op != x86asm.MOV {
			return
		}
		for _, a := range inst.Args {
			if m, ok := a.(x86asm.Mem); ok && m.Base == x86asm.RIP {
				loads[next+uint64(m.Disp)] = true
			}
		}
	})
	if err != nil {
		return 0, fmt.Errorf("read runtime.forEachG: %w", err)
	}
	var best uint64
	for a := range loads {
		if loads[a+8] && (best == 0 || a < best) {
			best = a
		}
	}
	if best == 0 {
		return 0, errors.New("no slice load in runtime.forEachG")
	}
	return best, nil
}
