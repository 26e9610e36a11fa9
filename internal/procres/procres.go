// Package procres computes the OpenTelemetry resource of a traced process
// from /proc, once, when the process is selected: service.name and the
// other attributes of its OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES,
// service.instance.id, the executable, its arguments, the runtime and SDK
// language, and container.id / k8s.pod.uid from its cgroup. Nothing here
// runs per span.
package procres

import (
	"bytes"
	"crypto/sha1" //nolint:gosec // UUID version 5 is defined on SHA-1
	"debug/buildinfo"
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// Info is the resource of one process.
type Info struct {
	// ServiceName is OTEL_SERVICE_NAME if set and not empty, else
	// service.name from OTEL_RESOURCE_ATTRIBUTES, else ExeName.
	ServiceName string
	// ServiceInstanceID is service.instance.id from OTEL_RESOURCE_ATTRIBUTES,
	// else InstanceID of the process.
	ServiceInstanceID string
	// ExePath is the /proc/<pid>/exe target; ExeName its base name.
	ExePath, ExeName string
	// CommandArgs is the command line, bounded by MaxCommandArgs and
	// MaxCommandBytes.
	CommandArgs []string
	Runtime     Runtime
	// ContainerID and PodUID come from /proc/<pid>/cgroup (ParseCgroup).
	ContainerID, PodUID string
	// Attributes are the other OTEL_RESOURCE_ATTRIBUTES pairs, in order,
	// without service.name, service.instance.id and process.pid.
	Attributes []Attribute
}

// Attribute is one key=value pair of OTEL_RESOURCE_ATTRIBUTES, decoded.
type Attribute struct {
	Key, Value string
}

// Runtime is what is known of the language runtime of an executable.
type Runtime struct {
	// Name is process.runtime.name: go, cpython, nodejs, java, ruby, php,
	// dotnet; empty when unknown.
	Name string
	// Version is process.runtime.version where it is cheap to know: the Go
	// version from the build info, the Python/Ruby/PHP version in the
	// executable's name (python3.11), the JAVA_RUNTIME_VERSION (else
	// JAVA_VERSION) of the JDK's release file.
	Version string
	// Language is telemetry.sdk.language: go, python, nodejs, java, ruby,
	// php, dotnet; empty when unknown.
	Language string
}

// Bounds of Info.CommandArgs: at most MaxCommandArgs arguments and
// MaxCommandBytes bytes in all; the argument that crosses the byte bound
// is cut.
const (
	MaxCommandArgs  = 32
	MaxCommandBytes = 1024
)

// Read bounds.
const (
	maxEnviron = 256 << 10
	maxCmdline = 64 << 10
	maxCgroup  = 16 << 10
)

// Read computes the resource of pid from procRoot (normally /proc); exe is
// its /proc/<pid>/exe target (read again when empty) and bootID the host's
// boot id (BootID). A file that cannot be read leaves its attributes out:
// a process that exits meanwhile gets what was read.
func Read(procRoot string, pid int, exe, bootID string) Info {
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	if exe == "" {
		if l, err := os.Readlink(filepath.Join(dir, "exe")); err == nil {
			exe = strings.TrimSuffix(l, " (deleted)")
		}
	}
	info := Info{ExePath: exe}
	if exe != "" {
		info.ExeName = path.Base(exe)
	}
	if b, err := readBounded(filepath.Join(dir, "cmdline"), maxCmdline); err == nil {
		info.CommandArgs = CommandArgs(b)
	}
	var env Env
	if b, err := readBounded(filepath.Join(dir, "environ"), maxEnviron); err == nil {
		env = ParseEnviron(b)
	}
	if b, err := readBounded(filepath.Join(dir, "cgroup"), maxCgroup); err == nil {
		info.ContainerID, info.PodUID = ParseCgroup(b)
	}
	info.Runtime = DetectRuntime(filepath.Join(dir, "exe"), filepath.Join(dir, "root"), exe)

	info.ServiceName = env.ServiceName
	if info.ServiceName == "" {
		info.ServiceName = info.ExeName
	}
	info.ServiceInstanceID = env.InstanceID
	if info.ServiceInstanceID == "" {
		if b, err := os.ReadFile(filepath.Join(dir, "stat")); err == nil {
			if start, ok := startTime(b); ok {
				info.ServiceInstanceID = InstanceID(bootID, pid, start)
			}
		}
	}
	info.Attributes = env.Attributes
	return info
}

// Env is what a process environment says about its resource.
type Env struct {
	// ServiceName is OTEL_SERVICE_NAME, else service.name of
	// OTEL_RESOURCE_ATTRIBUTES.
	ServiceName string
	// InstanceID is service.instance.id of OTEL_RESOURCE_ATTRIBUTES.
	InstanceID string
	// Attributes are the other pairs of OTEL_RESOURCE_ATTRIBUTES.
	Attributes []Attribute
}

// ParseEnviron reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES from a
// NUL-separated /proc/<pid>/environ block, with the SDK rules: an empty
// variable is unset, OTEL_SERVICE_NAME wins over service.name, and an
// OTEL_RESOURCE_ATTRIBUTES that does not parse is ignored whole.
func ParseEnviron(environ []byte) Env {
	var e Env
	service, _ := envValue(environ, "OTEL_SERVICE_NAME")
	service = strings.TrimSpace(service)
	if v, ok := envValue(environ, "OTEL_RESOURCE_ATTRIBUTES"); ok {
		if attrs, err := ParseResourceAttributes(v); err == nil {
			for _, a := range attrs {
				switch a.Key {
				case "service.name":
					if service == "" {
						service = a.Value
					}
				case "service.instance.id":
					e.InstanceID = a.Value
				case "process.pid":
					// The pid is the receiver's to say.
				default:
					e.Attributes = append(e.Attributes, a)
				}
			}
		}
	}
	e.ServiceName = service
	return e
}

// ParseResourceAttributes parses an OTEL_RESOURCE_ATTRIBUTES value:
// comma-separated key=value pairs, keys and values trimmed, values
// percent-decoded (as W3C Baggage values are; "+" stays "+"). Empty list
// members are skipped; a member without "=", an empty key or a bad
// percent-escape is an error. A key given twice keeps its last value.
func ParseResourceAttributes(s string) ([]Attribute, error) {
	var out []Attribute
	for member := range strings.SplitSeq(s, ",") {
		if strings.TrimSpace(member) == "" {
			continue
		}
		k, v, ok := strings.Cut(member, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: member %q is not key=value", member)
		}
		val, err := url.PathUnescape(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: value of %q: %w", k, err)
		}
		replaced := false
		for i := range out {
			if out[i].Key == k {
				out[i].Value, replaced = val, true
			}
		}
		if !replaced {
			out = append(out, Attribute{Key: k, Value: val})
		}
	}
	return out, nil
}

// CommandArgs splits a NUL-separated /proc/<pid>/cmdline into arguments,
// bounded by MaxCommandArgs and MaxCommandBytes.
func CommandArgs(cmdline []byte) []string {
	cmdline = bytes.TrimRight(cmdline, "\x00")
	if len(cmdline) == 0 {
		return nil
	}
	var out []string
	total := 0
	for arg := range bytes.SplitSeq(cmdline, []byte{0}) {
		if len(out) == MaxCommandArgs || total >= MaxCommandBytes {
			break
		}
		if total+len(arg) > MaxCommandBytes {
			arg = arg[:MaxCommandBytes-total]
		}
		total += len(arg)
		out = append(out, string(arg))
	}
	return out
}

// DetectRuntime finds the runtime of the executable exe (its path as the
// process sees it). exeFile is a path that opens the executable from here
// (/proc/<pid>/exe) and root the process's root (/proc/<pid>/root, for
// files beside the executable in a container). Python, Node.js, Java,
// Ruby, PHP and .NET are known by the executable's name; anything else is
// read for Go build info.
func DetectRuntime(exeFile, root, exe string) Runtime {
	name := path.Base(exe)
	switch {
	case strings.HasPrefix(name, "python"):
		return Runtime{Name: "cpython", Version: versionSuffix(name, "python"), Language: "python"}
	case name == "node" || name == "nodejs":
		return Runtime{Name: "nodejs", Language: "nodejs"}
	case name == "java":
		return Runtime{Name: "java", Version: javaVersion(root, exe), Language: "java"}
	case strings.HasPrefix(name, "ruby"):
		return Runtime{Name: "ruby", Version: versionSuffix(name, "ruby"), Language: "ruby"}
	case strings.HasPrefix(name, "php"):
		// php, php8.2, php-fpm8.2
		return Runtime{Name: "php", Version: versionSuffix(strings.TrimPrefix(name, "php-fpm"), "php"), Language: "php"}
	case name == "dotnet":
		return Runtime{Name: "dotnet", Language: "dotnet"}
	}
	if exeFile == "" {
		return Runtime{}
	}
	if bi, err := buildinfo.ReadFile(exeFile); err == nil {
		return Runtime{Name: "go", Version: bi.GoVersion, Language: "go"}
	}
	return Runtime{}
}

// versionSuffix returns the version in a name such as python3.11 (prefix
// python): "3.11"; "" when the rest is not digits and dots.
func versionSuffix(name, prefix string) string {
	v := strings.TrimPrefix(name, prefix)
	if v == "" || v[0] < '0' || v[0] > '9' {
		return ""
	}
	for i := 0; i < len(v); i++ {
		if (v[i] < '0' || v[i] > '9') && v[i] != '.' {
			return ""
		}
	}
	return v
}

// javaVersion reads JAVA_RUNTIME_VERSION, else JAVA_VERSION, from the
// release file of the JDK or JRE whose bin/java exe is.
func javaVersion(root, exe string) string {
	if root == "" {
		return ""
	}
	b, err := readBounded(filepath.Join(root, path.Dir(path.Dir(exe)), "release"), 16<<10)
	if err != nil {
		return ""
	}
	var version string
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		v = strings.Trim(strings.TrimSpace(v), `"`)
		switch k {
		case "JAVA_RUNTIME_VERSION":
			return v
		case "JAVA_VERSION":
			version = v
		}
	}
	return version
}

// instanceNamespace is the UUID namespace the service semantic conventions
// give for version 5 service.instance.id values.
var instanceNamespace = [16]byte{0x4d, 0x63, 0x00, 0x9a, 0x8d, 0x0f, 0x11, 0xee, 0xaa, 0xd7, 0x4c, 0x79, 0x6e, 0xd8, 0xe3, 0x20}

// InstanceID is the service.instance.id of a process without one of its
// own: the version 5 UUID, in the namespace of the service conventions, of
// "<boot id>/<pid>/<start time in clock ticks since boot>". It is the same
// for the life of the process, also across collector restarts, and differs
// for a reused pid and after a reboot.
func InstanceID(bootID string, pid int, startTicks uint64) string {
	h := sha1.New() //nolint:gosec // UUID version 5
	h.Write(instanceNamespace[:])
	fmt.Fprintf(h, "%s/%d/%d", bootID, pid, startTicks)
	var u [16]byte
	copy(u[:], h.Sum(nil))
	u[6] = u[6]&0x0f | 0x50
	u[8] = u[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// BootID reads the host's boot id from procRoot/sys/kernel/random/boot_id;
// empty when it cannot.
func BootID(procRoot string) string {
	b, err := os.ReadFile(filepath.Join(procRoot, "sys", "kernel", "random", "boot_id"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// startTime parses field 22 (starttime) of /proc/<pid>/stat.
func startTime(b []byte) (uint64, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state): starttime is f[19].
	if len(f) < 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(f[19], 10, 64)
	return n, err == nil
}

// envValue returns the value of key in a NUL-separated environ block.
func envValue(environ []byte, key string) (string, bool) {
	for len(environ) > 0 {
		entry := environ
		if i := bytes.IndexByte(environ, 0); i >= 0 {
			entry, environ = environ[:i], environ[i+1:]
		} else {
			environ = nil
		}
		if len(entry) > len(key) && entry[len(key)] == '=' && string(entry[:len(key)]) == key {
			return string(entry[len(key)+1:]), true
		}
	}
	return "", false
}

func readBounded(name string, limit int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}
