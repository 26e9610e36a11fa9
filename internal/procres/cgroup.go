package procres

import (
	"bytes"
	"strings"
)

// ParseCgroup reads a /proc/<pid>/cgroup file and returns the container id
// (64 lower-case hex) and the Kubernetes pod uid (36-character UUID with
// dashes) found in its paths; either is empty when none is found.
//
// Lines are "hierarchy-id:controllers:path": cgroup v1 has one per
// hierarchy, v2 the single line "0::path" (hybrid hosts have both). The v2
// line is looked at first, then the v1 lines in order; the first line that
// names a container gives the result. Within a path, the segment nearest
// the end that names a container wins (the innermost, for nested
// containers).
//
// Container segments recognised:
//
//	<64 hex>                          docker (cgroupfs: /docker/<id>), containerd and cri-o
//	                                  under /kubepods/<qos>/pod<uid>/<id>, ECS, nested
//	docker-<id>.scope                 docker, systemd driver
//	cri-containerd-<id>.scope         containerd (Kubernetes), systemd driver
//	crio-<id>.scope                   cri-o, systemd driver
//	libpod-<id>.scope, libpod-<id>    podman (systemd and cgroupfs); a trailing
//	                                  /container segment (podman's init) is skipped
//	<slice>:cri-containerd:<id>       containerd's systemd cgroups path as text
//
// crio-conmon-<id> and libpod-conmon-<id> are the monitors of a container,
// not the container: a process there gets no container id.
//
// The pod uid comes from kubepods-<qos>-pod<uid>.slice or kubepods-pod<uid>.slice
// (systemd driver, the uid's dashes written as underscores) or pod<uid>
// (cgroupfs driver), in a path that has a kubepods segment.
func ParseCgroup(b []byte) (containerID, podUID string) {
	var v1 [][]byte
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if bytes.HasPrefix(line, []byte("0::")) {
			if c, p, ok := parseCgroupPath(string(line[3:])); ok {
				return c, p
			}
			continue
		}
		v1 = append(v1, line)
	}
	for _, line := range v1 {
		// hierarchy:controllers:path; the path may itself hold colons.
		i := bytes.IndexByte(line, ':')
		if i < 0 {
			continue
		}
		j := bytes.IndexByte(line[i+1:], ':')
		if j < 0 {
			continue
		}
		if c, p, ok := parseCgroupPath(string(line[i+1+j+1:])); ok {
			return c, p
		}
	}
	return "", ""
}

// parseCgroupPath returns the container id and pod uid of one cgroup path;
// ok reports that a container id, or a conmon scope, was found.
func parseCgroupPath(p string) (containerID, podUID string, ok bool) {
	segs := strings.Split(p, "/")
	kube := false
	for _, s := range segs {
		if strings.HasPrefix(s, "kubepods") {
			kube = true
			break
		}
	}
	if kube {
		for _, s := range segs {
			if uid := podUIDOf(s); uid != "" {
				podUID = uid
				break
			}
		}
	}
	for i := len(segs) - 1; i >= 0; i-- {
		id, conmon := containerOf(segs[i])
		if conmon {
			return "", podUID, true
		}
		if id != "" {
			return id, podUID, true
		}
	}
	return "", "", false
}

// containerOf returns the container id one cgroup path segment names, or
// conmon true for a container monitor's scope.
func containerOf(seg string) (id string, conmon bool) {
	if isHex64(seg) {
		return seg, false
	}
	// containerd's "slice:prefix:id" form.
	if i := strings.LastIndexByte(seg, ':'); i >= 0 {
		if isHex64(seg[i+1:]) {
			return seg[i+1:], false
		}
		return "", false
	}
	s := strings.TrimSuffix(seg, ".scope")
	i := strings.LastIndexByte(s, '-')
	if i < 0 || !isHex64(s[i+1:]) {
		return "", false
	}
	switch prefix := s[:i]; prefix {
	case "docker", "cri-containerd", "crio", "libpod", "containerd":
		return s[i+1:], false
	case "crio-conmon", "libpod-conmon":
		return "", true
	}
	return "", false
}

// podUIDOf returns the pod uid, with dashes, that one segment names.
func podUIDOf(seg string) string {
	const uidLen = 36
	// containerd's "slice:prefix:id" form.
	seg, _, _ = strings.Cut(seg, ":")
	var s string
	switch {
	case strings.HasPrefix(seg, "kubepods") && strings.HasSuffix(seg, ".slice"):
		// kubepods-pod<uid>.slice, kubepods-burstable-pod<uid>.slice
		s = strings.TrimSuffix(seg, ".slice")
		i := strings.LastIndex(s, "-pod")
		if i < 0 {
			return ""
		}
		s = s[i+len("-pod"):]
	case strings.HasPrefix(seg, "pod"):
		s = seg[len("pod"):]
	default:
		return ""
	}
	if len(s) != uidLen {
		return ""
	}
	var out [uidLen]byte
	for i := 0; i < uidLen; i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' && c != '_' {
				return ""
			}
			c = '-'
		default:
			if !isHexDigit(c) {
				return ""
			}
		}
		out[i] = c
	}
	return string(out[:])
}

func isHex64(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHexDigit(s[i]) || (s[i] >= 'A' && s[i] <= 'F') {
			return false
		}
	}
	return true
}

func isHexDigit(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}
