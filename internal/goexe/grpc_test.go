package goexe

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// buildGRPCApp builds test/e2e/apps/gogrpc (a module of its own: the module
// proxy's google.golang.org/grpc) with the given -ldflags.
func buildGRPCApp(t *testing.T, ldflags string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "gogrpc")
	cmd := exec.Command("go", "build", "-ldflags="+ldflags, "-o", bin, ".")
	cmd.Dir = "../../test/e2e/apps/gogrpc"
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build gogrpc: %v\n%s", err, b)
	}
	return bin
}

// TestInspectGRPC: the probe sites and struct offsets of a grpc program
// with DWARF (entry probes on the stack check's JBE); a stripped one is refused with
// ErrNoGRPCOffsets, a Go program without grpc with ErrNoGRPC.
func TestInspectGRPC(t *testing.T) {
	bin := buildGRPCApp(t, "")
	info, err := InspectGRPC(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !info.HasClient || !info.HasServe || info.HandleStream == 0 || info.WriteStatus == 0 || info.StatusErrorItab == 0 || info.ServerTransportItab == 0 {
		t.Fatalf("%+v", info)
	}
	raw, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if info.IOEOF == 0 {
		t.Error("io.EOF not found")
	}
	for _, off := range []uint64{info.ClientWrite, info.Finish, info.HandleStream, info.WriteStatus} {
		if raw[off] != 0x76 && (raw[off] != 0x0f || raw[off+1] != 0x86) { // JBE rel8, JBE rel32
			t.Errorf("entry site %#x: % x, want the JBE of the stack check", off, raw[off:off+2])
		}
	}
	o := info.Offsets
	if o.StreamID == 0 || o.StreamMethod == 0 || o.ClientStreamCT == 0 || o.ClientLocal == 0 || o.ClientRemote == 0 ||
		o.ServerPeer == 0 || o.PeerLocal == 0 || o.TCPAddrPort == 0 || o.ProtoCode == 0 {
		t.Fatalf("offsets %+v", o)
	}
	t.Logf("%+v", info)
	if _, err := InspectGRPC(buildGRPCApp(t, "-s -w")); !errors.Is(err, ErrNoGRPCOffsets) {
		t.Fatalf("stripped: %v, want ErrNoGRPCOffsets", err)
	}
	if _, err := InspectGRPC(build(t, "", "")); !errors.Is(err, ErrNoGRPC) {
		t.Fatalf("net/http program: %v, want ErrNoGRPC", err)
	}
}
