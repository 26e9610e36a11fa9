package goexe

import (
	"debug/elf"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// EntrySite is the file offset (what uprobes take) where to probe fn's
// entry: see EntryOffset.
func EntrySite(f *elf.File, name string, fn Func) (uint64, error) {
	off, code, err := FileOffset(f, name, fn.Entry, fn.End-fn.Entry)
	if err != nil {
		return 0, err
	}
	return off + EntryOffset(code), nil
}

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
// single-step a CMP out of line, a second trap: probing the JBE costs one
// trap instead of two. Arguments are still in their registers there (R12 is
// a scratch register, not an argument one). Any other prologue is probed at
// its first instruction. If the stack must grow, the function restarts and
// the probe fires twice with the same arguments: programs must be
// idempotent.
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
