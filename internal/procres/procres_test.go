package procres

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	id1 = "4f797c539e6c745de61a93ca3ff892358ecbcaccd8414d5db545c38428142970"
	id2 = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d"
	uid = "ac04f3f2-1f2c-11e9-b40e-12cd1d9a0a2b"
	// uidU is uid as the systemd cgroup driver writes it.
	uidU = "ac04f3f2_1f2c_11e9_b40e_12cd1d9a0a2b"
)

// Sample /proc/<pid>/cgroup files, in the layouts the runtimes write.
func TestParseCgroup(t *testing.T) {
	tests := []struct {
		name, cgroup   string
		container, pod string
	}{
		{"host v2", "0::/init.scope\n", "", ""},
		{"host hybrid", "12:pids:/\n11:memory:/user.slice\n1:name=systemd:/user.slice/user-0.slice/session-1.scope\n0::/\n", "", ""},
		{"docker v1 cgroupfs", "12:memory:/docker/" + id1 + "\n11:cpu,cpuacct:/docker/" + id1 + "\n1:name=systemd:/docker/" + id1 + "\n", id1, ""},
		{"docker v1 systemd", "10:devices:/system.slice/docker-" + id2 + ".scope\n2:cpuacct,cpu:/system.slice/docker-" + id2 + ".scope\n1:name=systemd:/system.slice/docker-" + id2 + ".scope\n", id2, ""},
		{"docker v2 systemd", "0::/system.slice/docker-" + id2 + ".scope\n", id2, ""},
		{"docker v2 cgroupfs", "0::/docker/" + id1 + "\n", id1, ""},
		{"docker hybrid, v2 line at root", "12:pids:/docker/" + id1 + "\n0::/\n", id1, ""},
		{"containerd k8s v1 cgroupfs", "11:cpuset:/kubepods/besteffort/pod" + uid + "/" + id1 + "\n1:name=systemd:/kubepods/besteffort/pod" + uid + "/" + id1 + "\n", id1, uid},
		{"containerd k8s v2 systemd", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + id2 + ".scope\n", id2, uid},
		{"containerd k8s guaranteed", "0::/kubepods.slice/kubepods-pod" + uidU + ".slice/cri-containerd-" + id2 + ".scope\n", id2, uid},
		{"containerd systemd path as text", "1:name=systemd:/system.slice/containerd.service/kubepods-burstable-pod" + uidU + ".slice:cri-containerd:" + id1 + "\n", id1, uid},
		{"containerd k8s v2 cgroupfs", "0::/kubepods/burstable/pod" + uid + "/" + id1 + "\n", id1, uid},
		{"cri-o v2", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + id1 + ".scope\n", id1, uid},
		{"cri-o v1", "4:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + id1 + ".scope\n1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + id1 + ".scope\n", id1, uid},
		{"cri-o conmon is not the container", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-conmon-" + id1 + ".scope\n", "", uid},
		{"podman v2 rootful", "0::/machine.slice/libpod-" + id2 + ".scope/container\n", id2, ""},
		{"podman v2 rootless", "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + id2 + ".scope\n", id2, ""},
		{"podman v1 cgroupfs", "3:memory:/libpod_parent/libpod-" + id1 + "\n1:name=systemd:/libpod_parent/libpod-" + id1 + "\n", id1, ""},
		{"podman conmon is not the container", "0::/machine.slice/libpod-conmon-" + id2 + ".scope\n", "", ""},
		{"nested: the innermost", "0::/docker/" + id1 + "/docker/" + id2 + "\n", id2, ""},
		{"seen from another cgroup namespace", "0::/../../kubepods-besteffort-pod" + uidU + ".slice/cri-containerd-" + id2 + ".scope\n", id2, uid},
		{"pod uid outside kubepods is not taken", "0::/pod" + uid + "/" + id1 + "\n", id1, ""},
		{"short id", "0::/docker/4f797c539e6c\n", "", ""},
		{"upper-case hex is not an id", "0::/docker/" + strings.ToUpper(id1) + "\n", "", ""},
		{"unknown prefix", "0::/system.slice/foo-" + id1 + ".scope\n", "", ""},
		{"no newline at the end", "0::/system.slice/docker-" + id2 + ".scope", id2, ""},
		{"empty", "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, p := ParseCgroup([]byte(tt.cgroup))
			assert.Equal(t, tt.container, c, "container.id")
			assert.Equal(t, tt.pod, p, "k8s.pod.uid")
		})
	}
}

func TestParseResourceAttributes(t *testing.T) {
	got, err := ParseResourceAttributes(" deployment.environment.name = prod%20eu ,team=pay%2Cments,,a=b%3Dc,plus=a+b,empty=,a=last")
	require.NoError(t, err)
	assert.Equal(t, []Attribute{
		{"deployment.environment.name", "prod eu"},
		{"team", "pay,ments"},
		{"a", "last"},
		{"plus", "a+b"},
		{"empty", ""},
	}, got)

	for _, bad := range []string{"novalue", "=v", "k=%zz", "k=50%"} {
		_, err := ParseResourceAttributes(bad)
		assert.Error(t, err, bad)
	}
}

func TestParseEnviron(t *testing.T) {
	env := func(kv ...string) []byte { return []byte(strings.Join(kv, "\x00") + "\x00") }
	tests := []struct {
		name    string
		environ []byte
		want    Env
	}{
		{"none", env("PATH=/bin"), Env{}},
		{"OTEL_SERVICE_NAME", env("OTEL_SERVICE_NAME=checkout"), Env{ServiceName: "checkout"}},
		{"service.name from attributes", env("OTEL_RESOURCE_ATTRIBUTES=service.name=cart,team=a"),
			Env{ServiceName: "cart", Attributes: []Attribute{{"team", "a"}}}},
		{"OTEL_SERVICE_NAME wins", env("OTEL_RESOURCE_ATTRIBUTES=service.name=cart", "OTEL_SERVICE_NAME=checkout"),
			Env{ServiceName: "checkout"}},
		{"empty OTEL_SERVICE_NAME is unset", env("OTEL_SERVICE_NAME=", "OTEL_RESOURCE_ATTRIBUTES=service.name=cart"),
			Env{ServiceName: "cart"}},
		{"instance id and pid", env("OTEL_RESOURCE_ATTRIBUTES=service.instance.id=i-1,process.pid=1,k=v"),
			Env{InstanceID: "i-1", Attributes: []Attribute{{"k", "v"}}}},
		{"bad attributes are ignored whole", env("OTEL_SERVICE_NAME=checkout", "OTEL_RESOURCE_ATTRIBUTES=k=v,broken"),
			Env{ServiceName: "checkout"}},
		{"a prefix of the name is not the variable", env("XOTEL_SERVICE_NAME=no", "OTEL_SERVICE_NAMES=no"), Env{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, ParseEnviron(tt.environ))
		})
	}
}

func TestCommandArgs(t *testing.T) {
	assert.Equal(t, []string{"python3", "-m", "http.server"}, CommandArgs([]byte("python3\x00-m\x00http.server\x00")))
	assert.Nil(t, CommandArgs(nil))
	many := strings.Repeat("a\x00", 100)
	assert.Len(t, CommandArgs([]byte(many)), MaxCommandArgs)
	long := CommandArgs([]byte("java\x00" + strings.Repeat("x", 5000) + "\x00-jar\x00"))
	require.Len(t, long, 2)
	assert.Len(t, long[1], MaxCommandBytes-len("java"))
}

func TestDetectRuntime(t *testing.T) {
	root := t.TempDir()
	jdk := filepath.Join(root, "usr/lib/jvm/java-17/bin")
	require.NoError(t, os.MkdirAll(jdk, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "usr/lib/jvm/java-17/release"),
		[]byte("IMPLEMENTOR=\"Debian\"\nJAVA_RUNTIME_VERSION=\"17.0.13+11-Debian-2deb12u1\"\nJAVA_VERSION=\"17.0.13\"\n"), 0o644))

	tests := []struct {
		exe  string
		want Runtime
	}{
		{"/usr/bin/python3.11", Runtime{"cpython", "3.11", "python"}},
		{"/usr/local/bin/python3", Runtime{"cpython", "3", "python"}},
		{"/usr/bin/node", Runtime{"nodejs", "", "nodejs"}},
		{"/usr/lib/jvm/java-17/bin/java", Runtime{"java", "17.0.13+11-Debian-2deb12u1", "java"}},
		{"/usr/bin/ruby3.1", Runtime{"ruby", "3.1", "ruby"}},
		{"/usr/sbin/php-fpm8.2", Runtime{"php", "8.2", "php"}},
		{"/usr/share/dotnet/dotnet", Runtime{"dotnet", "", "dotnet"}},
		{"/usr/sbin/nginx", Runtime{}},
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, DetectRuntime("", root, tt.exe), tt.exe)
	}

	// A Go executable: this test binary.
	self, err := os.Executable()
	require.NoError(t, err)
	assert.Equal(t, Runtime{"go", runtime.Version(), "go"}, DetectRuntime(self, "/", "/tmp/anything"))
	// Not Go.
	sh, err := filepath.EvalSymlinks("/bin/sh")
	require.NoError(t, err)
	assert.Equal(t, Runtime{}, DetectRuntime(sh, "/", sh))
}

func TestInstanceID(t *testing.T) {
	a := InstanceID("b1", 42, 1000)
	assert.Regexp(t, `^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, a)
	assert.Equal(t, a, InstanceID("b1", 42, 1000), "stable")
	assert.NotEqual(t, a, InstanceID("b1", 42, 1001), "reused pid")
	assert.NotEqual(t, a, InstanceID("b2", 42, 1000), "after a reboot")
	assert.NotEqual(t, a, InstanceID("b1", 43, 1000))
}

// Read on this test process, through the real /proc.
func TestReadSelf(t *testing.T) {
	pid := os.Getpid()
	boot := BootID("/proc")
	require.NotEmpty(t, boot)
	info := Read("/proc", pid, "", boot)
	exe, err := os.Executable()
	require.NoError(t, err)
	assert.Equal(t, exe, info.ExePath)
	assert.Equal(t, filepath.Base(exe), info.ExeName)
	assert.Equal(t, os.Args[0], info.CommandArgs[0])
	assert.Equal(t, "go", info.Runtime.Language)
	assert.NotEmpty(t, info.ServiceInstanceID)
	assert.Equal(t, info.ServiceInstanceID, Read("/proc", pid, exe, boot).ServiceInstanceID, "stable across reads")
	if v := os.Getenv("OTEL_SERVICE_NAME"); v == "" {
		assert.Equal(t, info.ExeName, info.ServiceName)
	}
}
