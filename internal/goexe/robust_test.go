package goexe

import (
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestUnknownRelease: a stripped binary whose build info names a release
// the table does not hold is refused with ErrUnsupportedGo, naming the
// version; with DWARF the same binary is still understood (the offsets come
// from DWARF, not the table).
func TestUnknownRelease(t *testing.T) {
	v := runtime.Version()
	fake := "go1.99" + v[len("go1.99"):] // same length: go1.99.8 for go1.26.8
	if len(v) < len("go1.26.8") || strings.Contains(v, " ") {
		t.Skipf("installed release %q", v)
	}
	for _, c := range []struct {
		ldflags string
		ok      bool
	}{{"-s -w", false}, {"", true}} {
		bin := build(t, "", c.ldflags)
		if err := SetGoVersion(bin, fake); err != nil {
			t.Fatal(err)
		}
		info, err := Inspect(bin, symRoundTrip)
		switch {
		case c.ok && err != nil:
			t.Errorf("ldflags %q: %v", c.ldflags, err)
		case c.ok && (info.GoVersion != fake || !info.HasDWARF):
			t.Errorf("ldflags %q: %+v", c.ldflags, info)
		case !c.ok && (!errors.Is(err, ErrUnsupportedGo) || !strings.Contains(err.Error(), fake+", stripped")):
			t.Errorf("ldflags %q: %v, want ErrUnsupportedGo naming %s", c.ldflags, err, fake)
		}
	}
	// A release before go1.21 (no parentGoid) is refused the same way.
	bin := build(t, "", "-s -w")
	if err := SetGoVersion(bin, "go1.20"+v[len("go1.20"):]); err != nil {
		t.Fatal(err)
	}
	if _, err := Inspect(bin); !errors.Is(err, ErrUnsupportedGo) {
		t.Errorf("go1.20: %v, want ErrUnsupportedGo", err)
	}
}

// TestNotGoExecutables: programs that are not Go are told apart by a clean
// ErrNotGo, whatever their kind: a dynamic C program, python3, a shell
// script, an empty file, a directory.
func TestNotGoExecutables(t *testing.T) {
	dir := t.TempDir()
	paths := []string{"/bin/true"}
	if py, err := filepath.EvalSymlinks("/usr/bin/python3"); err == nil {
		paths = append(paths, py)
	}
	for name, content := range map[string]string{"script.sh": "#!/bin/sh\necho hi\n", "empty": "", "text": "not an ELF at all"} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	for _, p := range paths {
		_, err := Inspect(p)
		if err == nil {
			t.Errorf("%s: no error", p)
			continue
		}
		elfFile := !strings.HasPrefix(p, dir)
		if elfFile && !errors.Is(err, ErrNotGo) {
			t.Errorf("%s: %v, want ErrNotGo", p, err)
		}
		if !elfFile && !strings.Contains(err.Error(), "parse executable") {
			t.Errorf("%s: %v, want a parse error", p, err)
		}
	}
	if _, err := Inspect(dir); err == nil {
		t.Errorf("directory: no error")
	}
	if _, err := Inspect(filepath.Join(dir, "missing")); err == nil {
		t.Errorf("missing file: no error")
	}
}

// TestCorruptExecutables: Go executables cut short at many lengths, and
// with random bytes overwritten, give an error or a result, never a panic
// (Inspect recovers from a panic in the ELF, DWARF or pclntab readers and
// returns it as an error).
func TestCorruptExecutables(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewSource(1))
	for _, ldflags := range []string{"", "-s -w"} {
		orig, err := os.ReadFile(build(t, "", ldflags))
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, "bin")
		try := func(what string, b []byte) {
			if err := os.WriteFile(p, b, 0o755); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if r := recover(); r != nil {
					t.Fatalf("ldflags %q, %s: panic %v", ldflags, what, r)
				}
			}()
			_, _ = Inspect(p, symRoundTrip, symWriteLoop)
		}
		// Truncated: inside the ELF header, the program headers, and at
		// fractions of the file (sections, DWARF, pclntab, section headers).
		cuts := []int{0, 1, 4, 16, 52, 63, 64, 100, 200, 4096, len(orig) - 1, len(orig) - 64}
		for i := 1; i < 40; i++ {
			cuts = append(cuts, len(orig)*i/40)
		}
		for _, n := range cuts {
			if n >= 0 && n <= len(orig) {
				try("truncated", orig[:n])
			}
		}
		// Corrupted: bursts of random bytes over the headers and the body.
		for i := 0; i < 60; i++ {
			b := append([]byte(nil), orig...)
			at := rng.Intn(len(b))
			if i < 20 {
				at = rng.Intn(4096) // the ELF and program headers
			} else if i < 30 {
				at = len(b) - 1 - rng.Intn(4096) // the section headers
			}
			for j := 0; j < 64 && at+j < len(b); j++ {
				b[at+j] = byte(rng.Intn(256))
			}
			try("corrupted", b)
		}
	}
}
