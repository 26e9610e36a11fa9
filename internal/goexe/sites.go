package goexe

import (
	"debug/elf"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// FileOffset converts a function's address to its offset in the file (what
// uprobes take), and reads its code.
func FileOffset(f *elf.File, name string, addr, size uint64) (uint64, []byte, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Flags&elf.PF_X == 0 || addr < p.Vaddr || addr >= p.Vaddr+p.Filesz {
			continue
		}
		off := addr - p.Vaddr
		if size == 0 || off+size > p.Filesz {
			return 0, nil, fmt.Errorf("function %s: size %d outside its segment", name, size)
		}
		code := make([]byte, size)
		if _, err := p.ReadAt(code, int64(off)); err != nil {
			return 0, nil, fmt.Errorf("read code of %s: %w", name, err)
		}
		return p.Off + off, code, nil
	}
	return 0, nil, fmt.Errorf("function %s: address %#x in no executable segment", name, addr)
}

// EntryOffset is where to probe a function's entry. Go functions start with
// a stack check, "CMPQ SP, 16(R14); JBE morestack" (with "LEAQ -n(SP), R12"
// first for large frames). x86 uprobes emulate a conditional jump but
// single-step a CMP or LEA out of line, a second trap: probing the JBE costs
// one trap instead of two (measured in bpf/httptrace's TestGoTLSSiteCost).
// Arguments are still in their registers there (R12 is a scratch register,
// not an argument one). Any other prologue is probed at its first
// instruction. If the stack must grow, the function restarts and the probe
// fires twice with the same arguments: programs there must be idempotent.
func EntryOffset(code []byte) uint64 {
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

// ProbeSite is the file offset where to probe fn's entry (EntryOffset).
func ProbeSite(f *elf.File, name string, fn Func) (uint64, error) {
	off, code, err := FileOffset(f, name, fn.Entry, fn.End-fn.Entry)
	if err != nil {
		return 0, err
	}
	return off + EntryOffset(code), nil
}

// RetSites are the file offsets of fn's RET instructions (amd64): where a
// return is probed in Go code, which uretprobes crash (they replace the
// return address the runtime's stack unwinder checks).
func RetSites(f *elf.File, name string, fn Func) ([]uint64, error) {
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("RET sites of %s: %s code", name, f.Machine)
	}
	off, code, err := FileOffset(f, name, fn.Entry, fn.End-fn.Entry)
	if err != nil {
		return nil, err
	}
	var rets []uint64
	for i := 0; i < len(code); {
		inst, err := x86asm.Decode(code[i:], 64)
		if err != nil || inst.Len == 0 {
			// Go pads functions with INT3; a byte that does not decode
			// cannot start an instruction the code reaches.
			i++
			continue
		}
		if inst.Op == x86asm.RET {
			rets = append(rets, off+uint64(i))
		}
		i += inst.Len
	}
	if len(rets) == 0 {
		return nil, fmt.Errorf("RET sites of %s: none found", name)
	}
	return rets, nil
}

// LoadBias is how far a position-independent executable was loaded from
// its link addresses: the start of its first mapping (file offset 0) in
// /proc/<pid>/maps, as its first PT_LOAD segment is linked at 0. exe is
// /proc/<pid>/exe.
func LoadBias(pid int, exe string) (uint64, error) {
	target, err := os.Readlink(exe)
	if err != nil {
		return 0, fmt.Errorf("load bias: %w", err)
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, fmt.Errorf("load bias: %w", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[2] != "00000000" || strings.Join(f[5:], " ") != target {
			continue
		}
		start, _, _ := strings.Cut(f[0], "-")
		v, err := strconv.ParseUint(start, 16, 64)
		if err != nil {
			return 0, fmt.Errorf("load bias: %q: %w", line, err)
		}
		return v, nil
	}
	return 0, fmt.Errorf("load bias: %s not mapped in pid %d", target, pid)
}
