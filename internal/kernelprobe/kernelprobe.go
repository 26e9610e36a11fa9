//go:build linux

// Package kernelprobe finds what the running kernel and the process's
// privileges allow, by asking the kernel (capabilities, BTF, test loads of
// program and map types and helpers), never by parsing the kernel version.
package kernelprobe

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Linux capability numbers (linux/capability.h).
const (
	capSysAdmin = 21
	capPerfmon  = 38
	capBPF      = 39
)

// VmlinuxBTF is where the kernel exposes its BTF.
const VmlinuxBTF = "/sys/kernel/btf/vmlinux"

// Report is what the kernel offers to this process.
type Report struct {
	// BPFLoop is true when the bpf_loop helper is available (kernel 5.17).
	BPFLoop bool
	// CgroupV2 is the mount point of the cgroup v2 hierarchy: /sys/fs/cgroup
	// on unified hosts, /sys/fs/cgroup/unified on hybrid ones; empty if none.
	CgroupV2 string
	// Lockdown is the active kernel lockdown mode: none, integrity or
	// confidentiality ("none" when securityfs shows no lockdown file).
	Lockdown string
}

// CheckPrivileges returns an error naming the missing capability unless the
// process may load and attach tracing programs: CAP_BPF and CAP_PERFMON, or
// CAP_SYS_ADMIN.
func CheckPrivileges() error {
	eff, err := effectiveCaps()
	if err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	if has(eff, capSysAdmin) {
		return nil
	}
	var missing []string
	if !has(eff, capBPF) {
		missing = append(missing, "CAP_BPF")
	}
	if !has(eff, capPerfmon) {
		missing = append(missing, "CAP_PERFMON")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s missing: run privileged (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN)", strings.Join(missing, " and "))
	}
	return nil
}

// HasSysAdmin reports whether the process has CAP_SYS_ADMIN.
func HasSysAdmin() bool {
	eff, err := effectiveCaps()
	return err == nil && has(eff, capSysAdmin)
}

func effectiveCaps() (uint64, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, err
	}
	return uint64(data[0].Effective) | uint64(data[1].Effective)<<32, nil
}

func has(caps uint64, c uint) bool { return caps&(1<<c) != 0 }

// Probe checks the kernel features the tracer needs and reports the optional
// ones. Call it after CheckPrivileges and after removing the memlock limit.
func Probe() (Report, error) {
	var r Report
	if _, err := os.Stat(VmlinuxBTF); err != nil {
		return r, fmt.Errorf("kernel BTF not found at %s: a kernel built with CONFIG_DEBUG_INFO_BTF=y is needed: %w", VmlinuxBTF, ebpf.ErrNotSupported)
	}
	if err := features.HaveMapType(ebpf.RingBuf); err != nil {
		return r, fmt.Errorf("BPF ring buffer (kernel 5.8) unavailable: %w", err)
	}
	if err := features.HaveProgramType(ebpf.RawTracepoint); err != nil {
		return r, fmt.Errorf("raw tracepoint programs unavailable: %w", err)
	}
	switch err := features.HaveProgramHelper(ebpf.RawTracepoint, asm.FnLoop); {
	case err == nil:
		r.BPFLoop = true
	case errors.Is(err, ebpf.ErrNotSupported):
	default:
		return r, fmt.Errorf("probe bpf_loop helper: %w", err)
	}
	r.CgroupV2 = cgroupV2Mount("/proc/self/mountinfo")
	r.Lockdown = lockdown("/sys/kernel/security/lockdown")
	return r, nil
}

// cgroupV2Mount finds the cgroup2 mount in a mountinfo file.
func cgroupV2Mount(mountinfo string) string {
	f, err := os.Open(mountinfo)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 0, 4096), 1<<20)
	best := ""
	for s.Scan() {
		// id parent major:minor root mountpoint options... - fstype source superopts
		line := s.Text()
		sep := strings.Index(line, " - ")
		if sep < 0 {
			continue
		}
		post := strings.Fields(line[sep+3:])
		pre := strings.Fields(line[:sep])
		if len(post) < 1 || post[0] != "cgroup2" || len(pre) < 5 {
			continue
		}
		mp := pre[4]
		// Prefer the conventional locations if several are mounted.
		if best == "" || mp == "/sys/fs/cgroup" || (mp == "/sys/fs/cgroup/unified" && best != "/sys/fs/cgroup") {
			best = mp
		}
	}
	return best
}

// lockdown reads the active mode, shown in brackets: "none [integrity] confidentiality".
func lockdown(path string) string {
	mode, _ := ReadLockdown(path)
	return mode
}
