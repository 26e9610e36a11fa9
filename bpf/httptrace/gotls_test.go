//go:build linux

package httptrace

import (
	"bytes"
	"debug/elf"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestInspectGoTLSNotGo: a program that is not Go has no Go TLS sites and
// no error (the OpenSSL path handles it).
func TestInspectGoTLSNotGo(t *testing.T) {
	s, err := inspectGoTLS("/bin/sh")
	if s != nil || err != nil {
		t.Fatalf("/bin/sh: %+v, %v", s, err)
	}
}

// TestInspectGoTLSUnknownRelease: a stripped executable of a Go release the
// offset table lacks (the build info's version rewritten to go1.99) is
// refused with ErrGoTLSUnknown, not probed blind.
func TestInspectGoTLSUnknownRelease(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "gotls")
	if out, err := exec.Command("go", "build", "-ldflags=-s -w", "-o", bin, "./testdata/gotls").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if s, err := inspectGoTLS(bin); err != nil || s == nil {
		t.Fatalf("stripped build of this release: %+v, %v", s, err)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	sec := f.Section(".go.buildinfo")
	off := int64(sec.Offset)
	size := sec.Size
	f.Close()
	raw, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	release, _, _ := strings.Cut(strings.TrimPrefix(runtime.Version(), "go1."), ".")
	info := raw[off : off+int64(size)]
	i := bytes.Index(info, []byte("go1."+release+"."))
	if i < 0 {
		t.Fatalf("%s not in .go.buildinfo", runtime.Version())
	}
	copy(info[i+4:], "99"[:len(release)])
	if err := os.WriteFile(bin, raw, 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := inspectGoTLS(bin)
	if !errors.Is(err, ErrGoTLSUnknown) || s != nil {
		t.Fatalf("go1.99 stripped: %+v, %v; want ErrGoTLSUnknown", s, err)
	}
	t.Log(err)
}
