package goexe

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// buildH2CApp builds test/e2e/apps/goh2c (a module of its own: the module
// proxy's golang.org/x/net) with the given -ldflags.
func buildH2CApp(t *testing.T, ldflags string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "goh2c")
	cmd := exec.Command("go", "build", "-ldflags="+ldflags, "-o", bin, ".")
	cmd.Dir = "../../test/e2e/apps/goh2c"
	cmd.Env = append(os.Environ(), "GOWORK=off")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build goh2c: %v\n%s", err, b)
	}
	return bin
}

// TestInspectH2: a program with both copies of Go's HTTP/2 (net/http's
// bundled one and golang.org/x/net/http2) has both, each with its server
// and client sites on the stack check's JBE and its struct offsets; the
// fields read are where the programs expect them (HeaderField.Name first);
// a stripped one is refused with ErrNoH2Offsets.
func TestInspectH2(t *testing.T) {
	bin := buildH2CApp(t, "")
	info, err := InspectH2(bin)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Copies) != 2 || info.Copies[0].Name != "net/http" || info.Copies[1].Name != "golang.org/x/net/http2" {
		t.Fatalf("copies %+v", info.Copies)
	}
	raw, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range info.Copies {
		if !c.HasServer || !c.HasClient {
			t.Fatalf("%+v", c)
		}
		for _, off := range []uint64{c.RunHandler, c.HandlerDone, c.EncodeHeaders, c.WriteHeaders, c.HandleResponse} {
			if off == 0 || raw[off] != 0x76 && (raw[off] != 0x0f || raw[off+1] != 0x86) { // JBE rel8, JBE rel32
				t.Errorf("%s: entry site %#x: % x, want the JBE of the stack check", c.Name, off, raw[off:off+2])
			}
		}
		o := c.Offsets
		if o.SCConn == 0 || o.RwsStatus == 0 || o.StreamID == 0 || o.CCTconn == 0 || o.MHFFields == 0 || o.HFValue != 16 {
			t.Errorf("%s: offsets %+v", c.Name, o)
		}
	}
	o := info.Offsets
	if o.ReqURL == 0 || o.ReqHost == 0 || o.ReqURI == 0 || o.URLPath == 0 || o.URLQuery == 0 || o.FDLaddr == 0 || o.FDRaddr == 0 || o.TCPAddrPort == 0 {
		t.Errorf("offsets %+v", o)
	}
	if !o.MapOK || o.MapDirPtr != 16 || o.MapDirLen != 24 || o.ReqHeader == 0 {
		t.Errorf("map offsets %+v (the programs expect Go 1.24+'s maps.Map)", o)
	}
	if info.TCPConnItab == 0 {
		t.Error("no *net.TCPConn net.Conn itab")
	}
	if _, err := InspectH2(buildH2CApp(t, "-s -w")); !errors.Is(err, ErrNoH2Offsets) {
		t.Fatalf("stripped: %v, want ErrNoH2Offsets", err)
	}
}
