//go:build linux

package goruntime

import (
	"debug/elf"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/ebpftracing/ebpftracingreceiver/internal/goexe"
)

// TestAnalyze checks the probe sites found in a Go executable, with and
// without symbols: the entry probes on the JBE of the stack check (emulated
// by the kernel, no single-step), the same in both builds.
func TestAnalyze(t *testing.T) {
	bin := buildGochain(t, "")
	info := analyze(bin)
	if info.err != nil {
		t.Fatal(info.err)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	sites := map[string]uint64{symRoundTrip: info.roundTrip, symWriteLoop: info.writeLoop}
	for _, s := range syms {
		probe, ok := sites[s.Name]
		if !ok {
			continue
		}
		delete(sites, s.Name)
		start, _, err := goexe.FileOffset(f, s.Name, s.Value, s.Size)
		if err != nil {
			t.Fatal(err)
		}
		// CMPQ SP, 0x10(R14) is 4 bytes; JBE rel32 is 0f 86. Large frames
		// start with LEAQ -n(SP), R12 (5 or 8 bytes) and CMPQ R12, 0x10(R14).
		if probe < start || probe > start+16 || raw[probe] != 0x0f || raw[probe+1] != 0x86 {
			t.Errorf("%s: entry probe at +%d (% x), want the JBE of the stack check", s.Name, probe-start, raw[probe:probe+2])
		}
	}
	if len(sites) != 0 {
		t.Fatalf("symbols not found: %v", sites)
	}
	// The writeLoop goroutine's g.startpc: the go wrapper dialConn starts.
	start := ""
	for _, s := range syms {
		if s.Value == info.proc.WriteLoop && elf.ST_TYPE(s.Info) == elf.STT_FUNC {
			start = s.Name
		}
	}
	if !strings.HasPrefix(start, "net/http.(*Transport).dialConn.") {
		t.Errorf("writeLoop goroutine's start %#x is %q, want dialConn's go wrapper", info.proc.WriteLoop, start)
	}
	stripped := analyze(buildGochain(t, "-s -w"))
	if stripped.err != nil {
		t.Fatal(stripped.err)
	}
	if stripped.proc.Allgs == 0 {
		t.Fatal("stripped build: no allgs")
	}
	stripped.proc.Allgs = info.proc.Allgs // data moves a little without symbols
	if stripped.roundTrip != info.roundTrip || stripped.writeLoop != info.writeLoop || stripped.proc != info.proc {
		t.Errorf("stripped build: %+v, with symbols: %+v", *stripped, *info)
	}
	t.Logf("%+v", *info)
}

func TestAnalyzeNotGo(t *testing.T) {
	if info := analyze("/bin/sh"); !errors.Is(info.err, ErrNotGo) {
		t.Fatalf("/bin/sh: %v, want ErrNotGo", info.err)
	}
}
