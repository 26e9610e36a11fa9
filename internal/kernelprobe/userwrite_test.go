//go:build linux

package kernelprobe

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Capability sets as /proc/<pid>/status shows them.
const (
	capEffRoot  = "000001ffffffffff"                                    // all, CAP_SYS_ADMIN included
	capEffNoSys = "000001ffffdfffff"                                    // all but CAP_SYS_ADMIN (bit 21)
	mountsSecFS = "securityfs /sys/kernel/security securityfs rw 0 0\n" // securityfs mounted
	mountsNone  = "proc /proc proc rw 0 0\n"
)

// TestUserWrites covers each condition of the gate with injected inputs:
// the decision, every reason given, the lockdown read, and whether the load
// probe ran.
func TestUserWrites(t *testing.T) {
	refused := errors.New("verifier: program of this type cannot use helper bpf_probe_write_user#36")
	cases := []struct {
		name     string
		capEff   string // "" leaves the CapEff line out
		lockdown string // "-" for no file
		mounts   string
		probe    error
		on       bool
		reasons  []string
		mode     string
		note     bool
		probed   bool
	}{
		{name: "all met, lockdown none", capEff: capEffRoot, lockdown: "[none] integrity confidentiality\n", mounts: mountsSecFS, on: true, mode: "none", probed: true},
		{name: "all met, no lockdown file", capEff: capEffRoot, lockdown: "-", mounts: mountsSecFS, on: true, mode: "none", probed: true},
		{name: "securityfs not mounted", capEff: capEffRoot, lockdown: "-", mounts: mountsNone, on: true, mode: "none", note: true, probed: true},
		{name: "securityfs not mounted, probe refused", capEff: capEffRoot, lockdown: "-", mounts: mountsNone, probe: refused, reasons: []string{"bpf_probe_write_user refused: " + refused.Error()}, mode: "none", note: true, probed: true},
		{name: "CAP_SYS_ADMIN missing", capEff: capEffNoSys, lockdown: "[none] integrity confidentiality\n", mounts: mountsSecFS, reasons: []string{"CAP_SYS_ADMIN missing"}, mode: "none"},
		{name: "no CapEff line", capEff: "", lockdown: "-", mounts: mountsSecFS, reasons: []string{"capabilities unknown: "}, mode: "none"},
		{name: "bad CapEff", capEff: "zz", lockdown: "-", mounts: mountsSecFS, reasons: []string{"capabilities unknown: "}, mode: "none"},
		{name: "lockdown integrity", capEff: capEffRoot, lockdown: "none [integrity] confidentiality\n", mounts: mountsSecFS, reasons: []string{"kernel lockdown integrity"}, mode: "integrity", probed: true},
		{name: "lockdown integrity, probe refused", capEff: capEffRoot, lockdown: "none [integrity] confidentiality\n", mounts: mountsSecFS, probe: refused, reasons: []string{"kernel lockdown integrity", "bpf_probe_write_user refused: " + refused.Error()}, mode: "integrity", probed: true},
		{name: "lockdown confidentiality", capEff: capEffRoot, lockdown: "none integrity [confidentiality]\n", mounts: mountsSecFS, reasons: []string{"kernel lockdown confidentiality"}, mode: "confidentiality", probed: true},
		{name: "lockdown unreadable format", capEff: capEffRoot, lockdown: "garbage", mounts: mountsSecFS, reasons: []string{"kernel lockdown unknown"}, mode: "unknown", probed: true},
		{name: "probe refused only", capEff: capEffRoot, lockdown: "[none] integrity confidentiality\n", mounts: mountsSecFS, probe: refused, reasons: []string{"bpf_probe_write_user refused: " + refused.Error()}, mode: "none", probed: true},
		{name: "CAP missing and lockdown", capEff: capEffNoSys, lockdown: "none integrity [confidentiality]\n", mounts: mountsSecFS, probe: refused, reasons: []string{"CAP_SYS_ADMIN missing", "kernel lockdown confidentiality"}, mode: "confidentiality"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			write := func(name, content string) string {
				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
				return p
			}
			status := "Name:\tcollector\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n"
			if c.capEff != "" {
				status += "CapEff:\t" + c.capEff + "\n"
			}
			in := UserWriteInputs{
				StatusPath:   write("status", status),
				LockdownPath: filepath.Join(dir, "security", "lockdown"),
				MountsPath:   write("mounts", c.mounts),
			}
			if c.lockdown != "-" {
				if err := os.Mkdir(filepath.Join(dir, "security"), 0o755); err != nil {
					t.Fatal(err)
				}
				write("security/lockdown", c.lockdown)
			}
			probed := false
			in.Probe = func() error { probed = true; return c.probe }
			g := UserWrites(in)
			if g.On != c.on {
				t.Errorf("on = %v, want %v (%s)", g.On, c.on, g)
			}
			if len(g.Reasons) != len(c.reasons) {
				t.Fatalf("reasons %q, want %q", g.Reasons, c.reasons)
			}
			for i, want := range c.reasons {
				if !strings.HasPrefix(g.Reasons[i], want) {
					t.Errorf("reason %d: %q, want %q", i, g.Reasons[i], want)
				}
			}
			if g.Lockdown != c.mode {
				t.Errorf("lockdown %q, want %q", g.Lockdown, c.mode)
			}
			if (g.Note != "") != c.note {
				t.Errorf("note %q, want one: %v", g.Note, c.note)
			}
			if c.note && !strings.Contains(g.Note, "securityfs not mounted") {
				t.Errorf("note %q does not say securityfs is not mounted", g.Note)
			}
			if probed != c.probed {
				t.Errorf("load probe ran: %v, want %v", probed, c.probed)
			}
			if c.on && g.String() != "on" || !c.on && g.String() != "off: "+strings.Join(g.Reasons, "; ") {
				t.Errorf("String() = %q", g.String())
			}
		})
	}
}

// TestUserWritesMissingStatus: an unreadable status file turns the gate
// off, it does not panic or skip the lockdown read.
func TestUserWritesMissingStatus(t *testing.T) {
	dir := t.TempDir()
	g := UserWrites(UserWriteInputs{
		StatusPath:   filepath.Join(dir, "nope"),
		LockdownPath: filepath.Join(dir, "lockdown"),
		MountsPath:   filepath.Join(dir, "mounts"),
		Probe:        func() error { t.Error("probe ran without capabilities"); return nil },
	})
	if g.On || len(g.Reasons) != 1 || !strings.HasPrefix(g.Reasons[0], "capabilities unknown") || g.Note == "" {
		t.Fatalf("%+v", g)
	}
}

func TestStatusCapEffReal(t *testing.T) {
	eff, err := statusCapEff(ProcSelfStatus)
	if err != nil {
		t.Fatal(err)
	}
	caps, err := effectiveCaps()
	if err != nil {
		t.Fatal(err)
	}
	if eff != caps {
		t.Fatalf("CapEff %#x, capget %#x", eff, caps)
	}
}
