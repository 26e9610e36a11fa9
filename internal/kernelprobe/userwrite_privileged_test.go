//go:build linux && privileged

package kernelprobe

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/rlimit"
)

// TestProbeWriteUserReal loads the real probe program on this kernel. Under
// lockdown integrity (this machine) the verifier refuses the helper: the
// gate must be off and say so in the verifier's words. On a kernel that
// allows it the gate is on. Either way UserWrites reports, never fails.
func TestProbeWriteUserReal(t *testing.T) {
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	err := ProbeWriteUser()
	g := UserWrites(UserWriteInputs{})
	t.Logf("probe: %v; gate: %s (lockdown %s, note %q)", err, g, g.Lockdown, g.Note)
	mode, _ := ReadLockdown(LockdownPath)
	if mode == "none" {
		if g.On != (err == nil) {
			t.Fatalf("no lockdown: gate %s, probe %v", g, err)
		}
		return
	}
	// Lockdown integrity or confidentiality removes the helper.
	if err == nil {
		t.Fatalf("lockdown %s but the verifier accepted bpf_probe_write_user", mode)
	}
	if !strings.Contains(err.Error(), "bpf_probe_write_user") {
		t.Errorf("refusal does not name the helper: %v", err)
	}
	if g.On || !strings.Contains(g.Reason(), "kernel lockdown "+mode) || !strings.Contains(g.Reason(), "bpf_probe_write_user refused: verifier:") {
		t.Fatalf("gate %s, want off with lockdown %s and the verifier's reason", g, mode)
	}
}
