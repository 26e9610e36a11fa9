package goexe

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// LoadBias is how far a position-independent executable was loaded from
// its link addresses in process pid: the start of its first mapping (file
// offset 0) in /proc/<pid>/maps, as its first PT_LOAD segment is linked at
// 0. exe is the process's /proc/<pid>/exe.
func LoadBias(pid int, exe string) (uint64, error) {
	target, err := os.Readlink(exe)
	if err != nil {
		return 0, fmt.Errorf("load bias: %w", err)
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, fmt.Errorf("load bias: %w", err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || f[2] != "00000000" || strings.Join(f[5:], " ") != target {
			continue
		}
		start, _, _ := strings.Cut(f[0], "-")
		v, err := strconv.ParseUint(start, 16, 64)
		if err != nil {
			return 0, fmt.Errorf("load bias: %q: %w", line, err)
		}
		return v, nil
	}
	return 0, fmt.Errorf("load bias: %s not mapped in pid %d", target, pid)
}
