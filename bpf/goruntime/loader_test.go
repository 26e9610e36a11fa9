//go:build linux

package goruntime

import (
	"debug/elf"
	"errors"
	"os"
	"testing"
)

// TestAnalyze checks the probe sites found in a Go 1.26 executable: the
// entry probes on the JBE of the stack check, and every RET of newproc1.
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
	for _, s := range syms {
		if s.Name != symNewproc1 {
			continue
		}
		start, _, err := fileOffset(f, &s)
		if err != nil {
			t.Fatal(err)
		}
		probe := info.newproc1
		for _, r := range info.rets {
			if r <= start || r >= start+s.Size || raw[r] != 0xc3 {
				t.Errorf("%s: RET site %#x is not a RET inside the function", s.Name, r)
			}
		}
		// CMPQ SP, 0x10(R14) is 4 bytes; JBE rel32 is 0f 86.
		if probe != start+4 || raw[probe] != 0x0f || raw[probe+1] != 0x86 {
			t.Errorf("%s: entry probe at +%d (% x), want the JBE at +4", s.Name, probe-start, raw[probe:probe+2])
		}
	}
	if len(info.rets) == 0 {
		t.Fatal("no RET site")
	}
	t.Logf("%+v", *info)
}

func TestAnalyzeNotGo(t *testing.T) {
	if info := analyze("/bin/sh"); !errors.Is(info.err, ErrNotGo) {
		t.Fatalf("/bin/sh: %v, want ErrNotGo", info.err)
	}
}
