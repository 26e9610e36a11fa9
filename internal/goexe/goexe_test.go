package goexe

import (
	"bufio"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"testing"
)

const (
	symRoundTrip = "net/http.(*persistConn).roundTrip"
	symWriteLoop = "net/http.(*persistConn).writeLoop"
)

// TestStrippedSameAsSymbols: a binary built with -ldflags "-s -w" gives the
// same offsets (from the table), functions (from .gopclntab) and goroutine
// table (from the code of runtime.forEachG) as the same program with
// symbols and DWARF.
func TestStrippedSameAsSymbols(t *testing.T) {
	full, err := Inspect(build(t, "", ""), symRoundTrip, symWriteLoop, "no.such.func")
	if err != nil {
		t.Fatal(err)
	}
	if !full.HasDWARF || full.AllGs == 0 || len(full.Funcs) != 2 {
		t.Fatalf("with symbols: %+v", full)
	}
	stripped, err := Inspect(build(t, "", "-s -w"), symRoundTrip, symWriteLoop)
	if err != nil {
		t.Fatal(err)
	}
	if stripped.HasDWARF {
		t.Fatal("stripped build has DWARF")
	}
	// Function ends differ (.gopclntab counts the padding up to the next
	// function), and the linker lays data out a little differently without
	// symbols: allgs is checked live below.
	entries := func(i *Info) map[string]uint64 {
		out := map[string]uint64{}
		for n, f := range i.Funcs {
			out[n] = f.Entry
		}
		return out
	}
	if full.G != stripped.G || full.GoVersion != stripped.GoVersion || !reflect.DeepEqual(entries(full), entries(stripped)) {
		t.Fatalf("stripped %+v\nwith symbols %+v", stripped, full)
	}
	if stripped.AllGs == 0 {
		t.Fatal("stripped: no allgs")
	}
	// `go pconn.writeLoop()` starts a wrapper: the goroutine's startpc.
	if full.Starts[symWriteLoop] == 0 || full.Starts[symWriteLoop] == full.Funcs[symWriteLoop].Entry || !reflect.DeepEqual(full.Starts, stripped.Starts) {
		t.Fatalf("go wrapper of writeLoop: with symbols %#x, stripped %#x", full.Starts, stripped.Starts)
	}
	t.Logf("%+v", full)
}

// TestAllGsLive reads the goroutine table of a running stripped program at
// the address found: a slice whose first g is the main goroutine (goid 1).
func TestAllGsLive(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("reading another process's memory needs root")
	}
	for _, ldflags := range []string{"", "-s -w"} {
		bin := build(t, "", ldflags)
		info, err := Inspect(bin)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin)
		out, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		_, _ = bufio.NewReader(out).ReadString('\n')
		mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", cmd.Process.Pid))
		if err != nil {
			t.Fatal(err)
		}
		word := func(addr uint64) uint64 {
			var b [8]byte
			if _, err := mem.ReadAt(b[:], int64(addr)); err != nil {
				t.Fatalf("read %#x: %v", addr, err)
			}
			return binary.LittleEndian.Uint64(b[:])
		}
		arr, n, c := word(info.AllGs), word(info.AllGs+8), word(info.AllGs+16)
		if arr == 0 || n == 0 || n > c {
			t.Errorf("ldflags %q: allgs at %#x = {%#x, %d, %d}", ldflags, info.AllGs, arr, n, c)
		} else if id := word(word(arr) + info.G.Goid); id != 1 {
			t.Errorf("ldflags %q: first goroutine's goid %d, want 1 (main)", ldflags, id)
		}
		mem.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
}

// TestAllGsFromCode: the code reading finds the symbol table's runtime.allgs
// in every release's build (when GOEXE_RELEASES lists them, else the
// installed one).
func TestAllGsFromCode(t *testing.T) {
	for _, tc := range append([]string{""}, releases()...) {
		bin := build(t, tc, "")
		info, err := Inspect(bin)
		if err != nil {
			t.Fatal(err)
		}
		f, fe := openFunc(t, bin, "runtime.forEachG")
		got, err := allgsFromCode(f, fe)
		f.Close()
		if err != nil || got != info.AllGs {
			t.Errorf("%s: allgs from code %#x (%v), symbol %#x", info.GoVersion, got, err, info.AllGs)
		}
	}
}

func TestNotGo(t *testing.T) {
	if _, err := Inspect("/bin/true"); !errors.Is(err, ErrNotGo) {
		t.Fatalf("/bin/true: %v, want ErrNotGo", err)
	}
}

func TestRelease(t *testing.T) {
	for v, want := range map[string]string{"go1.26.8": "go1.26", "go1.21.0": "go1.21", "go1.24rc1": "go1.24rc1", "go1.25.1 X:boringcrypto": "go1.25"} {
		if got, _ := tableRelease(v); got != want {
			t.Errorf("%s: %s, want %s", v, got, want)
		}
	}
	if _, ok := tableOffsets("go1.20.14"); ok {
		t.Error("go1.20 has no parentGoid: it must not be in the table")
	}
	if _, ok := tableOffsets("devel +abc"); ok {
		t.Error("a development build is not a release")
	}
}

// TestTLSOffsets: the crypto/tls.Conn → fd offsets of the installed release
// (DWARF) are the table's, a stripped build gets them from the table, and
// the RET sites of (*Conn).Read are RET instructions, the same in both.
func TestTLSOffsets(t *testing.T) {
	const read, write = "crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write"
	rets := map[string][]uint64{}
	for _, ldflags := range []string{"", "-s -w"} {
		bin := build(t, "", ldflags)
		info, err := Inspect(bin, read, write)
		if err != nil {
			t.Fatal(err)
		}
		if info.TLS == nil || *info.TLS != tlsOffsets {
			t.Fatalf("ldflags %q: TLS offsets %+v, want %+v", ldflags, info.TLS, tlsOffsets)
		}
		if (info.TCPConnItab != 0) != (ldflags == "") {
			t.Errorf("ldflags %q: *net.TCPConn itab %#x", ldflags, info.TCPConnItab)
		}
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		r, err := RetSites(f, read, info.Funcs[read])
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := os.ReadFile(bin)
		for _, off := range r {
			if raw[off] != 0xc3 {
				t.Errorf("ldflags %q: RET site %#x holds %#x", ldflags, off, raw[off])
			}
		}
		f.Close()
		rets[ldflags] = r
	}
	if !reflect.DeepEqual(rets[""], rets["-s -w"]) {
		t.Errorf("RET sites differ: %x with symbols, %x stripped", rets[""], rets["-s -w"])
	}
	t.Logf("%d RET sites in %s", len(rets[""]), read)
}
