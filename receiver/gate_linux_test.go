//go:build linux

package ebpfreceiver

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ebpftracing/ebpftracingreceiver/internal/kernelprobe"
)

// gateInputs writes a status file with capEff and a lockdown file (none if
// lockdown is "") and returns gate inputs reading them, with probe as the
// load probe.
func gateInputs(t *testing.T, capEff, lockdown string, probe func() error) kernelprobe.UserWriteInputs {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"status": "CapEff:\t" + capEff + "\n",
		"mounts": "securityfs /sys/kernel/security securityfs rw 0 0\n",
	}
	if lockdown != "" {
		files["lockdown"] = lockdown
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	in := kernelprobe.UserWriteInputs{
		StatusPath:   filepath.Join(dir, "status"),
		LockdownPath: filepath.Join(dir, "lockdown"),
		MountsPath:   filepath.Join(dir, "mounts"),
		Probe:        probe,
	}
	return in
}

// TestLogGoLibraryWrites: off gives exactly one warning naming the reason and
// the fallback; on gives none.
func TestLogGoLibraryWrites(t *testing.T) {
	refused := func() error {
		return errors.New("verifier: program of this type cannot use helper bpf_probe_write_user#36")
	}
	accepted := func() error { return nil }
	cases := []struct {
		name, mode, capEff, lockdown string
		probe                        func() error
		headers                      bool
		warn                         []string // substrings of the one warning; nil: no log at all
	}{
		{"lockdown integrity, headers", GoLibraryWritesAuto, "000001ffffffffff", "none [integrity] confidentiality", refused, true,
			[]string{"network level (sockops/sk_msg)", "reason=kernel lockdown integrity; bpf_probe_write_user refused: verifier: program of this type cannot use helper"}},
		{"lockdown integrity, no headers", GoLibraryWritesAuto, "000001ffffffffff", "none [integrity] confidentiality", refused, false,
			[]string{"does not include headers: Go requests get no traceparent", "reason=kernel lockdown integrity"}},
		{"CAP_SYS_ADMIN missing", GoLibraryWritesAuto, "000001ffffdfffff", "", accepted, true,
			[]string{"network level", "reason=CAP_SYS_ADMIN missing"}},
		{"probe refused, no lockdown", GoLibraryWritesAuto, "000001ffffffffff", "[none] integrity confidentiality", refused, true,
			[]string{"network level", "reason=bpf_probe_write_user refused: verifier:"}},
		{"configured off", GoLibraryWritesOff, "000001ffffffffff", "", func() error { t.Error("probe ran with go_library_writes: off"); return nil }, true,
			[]string{"network level", "reason=ebpf.go_library_writes: off"}},
		{"all met", GoLibraryWritesAuto, "000001ffffffffff", "[none] integrity confidentiality", accepted, true, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			g := goLibraryWrites(c.mode, gateInputs(t, c.capEff, c.lockdown, c.probe))
			logGoLibraryWrites(zap.New(core), g, c.headers)
			entries := logs.All()
			if c.warn == nil {
				if !g.On || len(entries) != 0 {
					t.Fatalf("gate %s, logs %v", g, entries)
				}
				return
			}
			if g.On || len(entries) != 1 || entries[0].Level != zapcore.WarnLevel {
				t.Fatalf("gate %s, want off with one warning; logs %v", g, entries)
			}
			line := entries[0].Message
			for k, v := range entries[0].ContextMap() {
				line += " " + k + "=" + v.(string)
			}
			for _, want := range c.warn {
				if !strings.Contains(line, want) {
					t.Errorf("warning %q lacks %q", line, want)
				}
			}
		})
	}
}

// TestLogGoLibraryWritesNote: with the gate on but the lockdown mode unread
// (securityfs not mounted), one info line carries the note.
func TestLogGoLibraryWritesNote(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	in := gateInputs(t, "000001ffffffffff", "", func() error { return nil })
	in.MountsPath = filepath.Join(t.TempDir(), "mounts-without-securityfs")
	g := goLibraryWrites(GoLibraryWritesAuto, in)
	logGoLibraryWrites(zap.New(core), g, true)
	entries := logs.All()
	if !g.On || len(entries) != 1 || entries[0].Level != zapcore.InfoLevel {
		t.Fatalf("gate %s, logs %v", g, entries)
	}
	if note, _ := entries[0].ContextMap()["note"].(string); !strings.Contains(note, "securityfs not mounted") {
		t.Fatalf("note %q", note)
	}
}
