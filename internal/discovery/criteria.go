//go:build linux

package discovery

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// PortRange is an inclusive range of TCP ports. A single port has Lo == Hi.
type PortRange struct{ Lo, Hi uint16 }

// Contains reports whether p is within the range.
func (r PortRange) Contains(p uint16) bool { return r.Lo <= p && p <= r.Hi }

// Criteria selects processes. A process matching any Criteria is selected.
// Within one Criteria all set fields must match (AND), as in Beyla. A
// Criteria with no field set matches nothing.
type Criteria struct {
	// Ports matches a process that has a listening TCP socket (IPv4 or IPv6)
	// on one of these ports.
	Ports []PortRange
	// ExeGlob is a glob matched against the full executable path (the
	// /proc/<pid>/exe target, as seen in the process's mount namespace):
	// path.Match syntax, except that '*' and '?' also match '/'. A pattern
	// without '/' is also matched against the base name, so "*python3*" or
	// "java" work.
	ExeGlob string
	// PID matches one process id.
	PID int
}

// Validate reports a criteria that can never match or is malformed.
func (c Criteria) Validate() error {
	var errs []error
	if c.empty() {
		errs = append(errs, errors.New("no field set: set ports, exe glob or pid"))
	}
	for _, r := range c.Ports {
		if r.Lo > r.Hi {
			errs = append(errs, fmt.Errorf("port range %d-%d: low end above high end", r.Lo, r.Hi))
		}
	}
	if c.ExeGlob != "" {
		if _, err := path.Match(c.ExeGlob, ""); err != nil {
			errs = append(errs, fmt.Errorf("exe glob %q: %w", c.ExeGlob, err))
		}
	}
	if c.PID < 0 {
		errs = append(errs, fmt.Errorf("pid %d: must be positive", c.PID))
	}
	return errors.Join(errs...)
}

func (c Criteria) empty() bool {
	return len(c.Ports) == 0 && c.ExeGlob == "" && c.PID == 0
}

// matchesStatic reports whether the fields other than Ports match.
func (c Criteria) matchesStatic(pid int, exe string) bool {
	if c.empty() {
		return false
	}
	if c.PID != 0 && c.PID != pid {
		return false
	}
	return c.ExeGlob == "" || matchExe(c.ExeGlob, exe)
}

func (c Criteria) matchesPort(port uint16) bool {
	for _, r := range c.Ports {
		if r.Contains(port) {
			return true
		}
	}
	return false
}

// matchExe matches glob against the full path and, when the glob has no '/',
// against the base name too. The syntax is path.Match's, except that '*' and
// '?' also match '/': "*/java" matches "/usr/lib/jvm/bin/java". A malformed
// glob matches nothing.
func matchExe(glob, exe string) bool {
	// path.Match treats only '/' as special: map it to a byte that cannot
	// appear in a path so that wildcards cross directories.
	const sep = "\x00"
	if ok, _ := path.Match(strings.ReplaceAll(glob, "/", sep), strings.ReplaceAll(exe, "/", sep)); ok {
		return true
	}
	if strings.Contains(glob, "/") {
		return false
	}
	ok, _ := path.Match(glob, path.Base(exe))
	return ok
}
