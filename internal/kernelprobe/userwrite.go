//go:build linux

package kernelprobe

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// Default inputs of the user-memory write gate.
const (
	ProcSelfStatus = "/proc/self/status"
	LockdownPath   = "/sys/kernel/security/lockdown"
	ProcMounts     = "/proc/mounts"
)

// UserWriteInputs are what UserWrites decides from. Zero fields take the
// real sources: the defaults above and ProbeWriteUser. Tests inject files
// and a probe result.
type UserWriteInputs struct {
	// StatusPath is a /proc/<pid>/status file: its CapEff line gives the
	// effective capabilities.
	StatusPath string
	// LockdownPath is securityfs's lockdown file ("none [integrity]
	// confidentiality"); a missing file means no lockdown.
	LockdownPath string
	// MountsPath is a /proc/mounts file, read only when the lockdown file
	// is missing, to say whether securityfs is mounted at all.
	MountsPath string
	// Probe loads a program calling bpf_probe_write_user and closes it
	// again; nil is ProbeWriteUser.
	Probe func() error
}

// UserWriteGate is the decision whether BPF programs may write user memory
// (bpf_probe_write_user): what library-level header writes need.
type UserWriteGate struct {
	// On is true when every condition holds.
	On bool
	// Reasons says, when off, each condition that failed, in order:
	// capability, lockdown, verifier.
	Reasons []string
	// Lockdown is the lockdown mode read ("none" when there is no file).
	Lockdown string
	// Note is set when the lockdown mode could not be read because
	// securityfs is not mounted (the load probe still decides).
	Note string
}

// Reason joins Reasons: "" when the gate is on.
func (g UserWriteGate) Reason() string { return strings.Join(g.Reasons, "; ") }

// String is the gate's value for the start log: "on" or "off: <reason>".
func (g UserWriteGate) String() string {
	if g.On {
		return "on"
	}
	return "off: " + g.Reason()
}

// UserWrites decides whether library-level writes can work: CAP_SYS_ADMIN
// in the effective set (the kernel requires it to load a program using
// bpf_probe_write_user), no kernel lockdown (integrity and confidentiality
// both remove the helper), and a test load of a program calling the helper
// that the verifier accepts. The probe runs only with CAP_SYS_ADMIN; it
// runs under lockdown too, so the log shows the verifier's own words. It
// never fails: a condition that cannot be checked counts as not met.
func UserWrites(in UserWriteInputs) UserWriteGate {
	if in.StatusPath == "" {
		in.StatusPath = ProcSelfStatus
	}
	if in.LockdownPath == "" {
		in.LockdownPath = LockdownPath
	}
	if in.MountsPath == "" {
		in.MountsPath = ProcMounts
	}
	if in.Probe == nil {
		in.Probe = ProbeWriteUser
	}
	var g UserWriteGate
	capOK := false
	switch eff, err := statusCapEff(in.StatusPath); {
	case err != nil:
		g.Reasons = append(g.Reasons, fmt.Sprintf("capabilities unknown: %v", err))
	case !has(eff, capSysAdmin):
		g.Reasons = append(g.Reasons, "CAP_SYS_ADMIN missing")
	default:
		capOK = true
	}
	mode, present := ReadLockdown(in.LockdownPath)
	g.Lockdown = mode
	if !present && !mounted(in.MountsPath, "securityfs") {
		g.Note = fmt.Sprintf("securityfs not mounted: lockdown mode unknown (mount -t securityfs securityfs %s to read it)", dirOf(in.LockdownPath))
	}
	if mode != "none" {
		g.Reasons = append(g.Reasons, "kernel lockdown "+mode)
	}
	if capOK {
		if err := in.Probe(); err != nil {
			g.Reasons = append(g.Reasons, fmt.Sprintf("bpf_probe_write_user refused: %v", err))
		}
	}
	g.On = len(g.Reasons) == 0
	return g
}

// ProbeWriteUser loads, as a kprobe-type program (the type of uprobes), a
// program that calls bpf_probe_write_user, and closes it at once. It never
// attaches anything, and the helper never runs. The error carries the
// verifier's reason.
func ProbeWriteUser() error {
	spec := &ebpf.ProgramSpec{
		Name: "probe_write_usr",
		Type: ebpf.Kprobe,
		Instructions: asm.Instructions{
			// An initialised 8-byte stack slot as the source.
			asm.Mov.Imm(asm.R1, 0),
			asm.StoreMem(asm.RFP, -8, asm.R1, asm.DWord),
			// dst: NULL (the program never runs)
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -8),
			asm.Mov.Imm(asm.R3, 8),
			asm.FnProbeWriteUser.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
		License: "GPL",
	}
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("verifier: %s", lastLine(ve.Log))
		}
		return fmt.Errorf("load: %w", err)
	}
	return prog.Close()
}

// lastLine is the last non-empty line of a verifier log.
func lastLine(log []string) string {
	for i := len(log) - 1; i >= 0; i-- {
		if s := strings.TrimSpace(log[i]); s != "" && !strings.HasPrefix(s, "processed ") {
			return s
		}
	}
	return "no verifier log"
}

// statusCapEff reads the effective capability set from a status file.
func statusCapEff(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return 0, fmt.Errorf("%s: CapEff %q: %w", path, strings.TrimSpace(v), err)
			}
			return n, nil
		}
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s: no CapEff line", path)
}

// ReadLockdown reads the active lockdown mode, the one in brackets in
// "none [integrity] confidentiality", and whether the file exists: a
// missing file reads as "none"; one that cannot be read or shows no mode in
// brackets as "unknown".
func ReadLockdown(path string) (string, bool) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return "none", false
	}
	if err != nil {
		return "unknown", true
	}
	s := string(b)
	i := strings.IndexByte(s, '[')
	j := strings.IndexByte(s, ']')
	if i < 0 || j < i || strings.TrimSpace(s[i+1:j]) == "" {
		return "unknown", true
	}
	return strings.TrimSpace(s[i+1 : j]), true
}

// mounted reports whether a filesystem of type fstype is in a mounts file.
func mounted(path, fstype string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[2] == fstype {
			return true
		}
	}
	return false
}

func dirOf(path string) string {
	if i := strings.LastIndexByte(path, '/'); i > 0 {
		return path[:i]
	}
	return path
}
