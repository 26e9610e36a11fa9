//go:build linux && privileged

package e2e

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Resource attributes per process (issue 17): OTEL_SERVICE_NAME and
// OTEL_RESOURCE_ATTRIBUTES of the process, the runtime, and container.id /
// k8s.pod.uid from its cgroup. The apps are moved into cgroup v2
// directories named as docker and as containerd under Kubernetes name them
// (the receiver reads the names, it does not ask a runtime).

// cgroup2Root returns where the cgroup v2 hierarchy is mounted
// (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
func cgroup2Root(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	require.NoError(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ... mount-point ... - fstype source options
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		if fields := strings.Fields(pre); len(fields) >= 5 {
			return fields[4]
		}
	}
	t.Fatal("no cgroup2 mount in /proc/self/mountinfo")
	return ""
}

// containerCgroup creates root/<rel> (and its parents) in the cgroup
// hierarchy mounted at root (v2, or a v1 one), moves pid into it,
// and, when the test ends (after the apps it started are killed), moves
// what is left back to root and removes the directories it created.
func containerCgroup(t *testing.T, root, rel string, pid int) {
	t.Helper()
	dir := filepath.Join(root, rel)
	var created []string
	for d := dir; d != root; d = filepath.Dir(d) {
		if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
			created = append(created, d)
		}
	}
	require.NoError(t, os.MkdirAll(dir, 0o755))
	t.Cleanup(func() {
		for _, d := range created { // deepest first
			deadline := time.Now().Add(5 * time.Second)
			for {
				if procs, err := os.ReadFile(filepath.Join(d, "cgroup.procs")); err == nil {
					for p := range strings.FieldsSeq(string(procs)) {
						_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(p), 0o644)
					}
				}
				err := os.Remove(d)
				if err == nil || errors.Is(err, os.ErrNotExist) {
					break
				}
				if time.Now().After(deadline) {
					t.Errorf("remove cgroup %s: %v", d, err)
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	})
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644),
		"move pid %d into cgroup %s", pid, dir)
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	require.NoError(t, err)
	require.Contains(t, string(cg), ":/"+rel+"\n")
}

func randomHex(t *testing.T, n int) string {
	t.Helper()
	b := make([]byte, n/2)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

func TestResourceAttributes(t *testing.T) {
	root := cgroup2Root(t)
	slice := "ebpftest-" + randomHex(t, 8) + ".slice"
	dockerID := randomHex(t, 64)
	criID := randomHex(t, 64)
	u := randomHex(t, 32)
	podUID := u[0:8] + "-" + u[8:12] + "-" + u[12:16] + "-" + u[16:20] + "-" + u[20:32]

	sink := StartSink(t)
	ports := FreePorts(t, 4)
	// Python in a docker container: OTEL_SERVICE_NAME wins over the
	// service.name of OTEL_RESOURCE_ATTRIBUTES, whose other pairs are
	// percent-decoded.
	py := StartAppEnv(t, Python, ports[0], "checkout",
		"OTEL_RESOURCE_ATTRIBUTES=service.name=not-this,deployment.environment.name=prod%20eu,team=pay%2Cments")
	containerCgroup(t, root, slice+"/docker-"+dockerID+".scope", py.PID)
	// Go in a Kubernetes pod (containerd, systemd driver): no
	// OTEL_SERVICE_NAME, so service.name and service.instance.id come from
	// OTEL_RESOURCE_ATTRIBUTES.
	goApp := StartAppEnv(t, Go, ports[1], "", "OTEL_SERVICE_NAME=",
		"OTEL_RESOURCE_ATTRIBUTES=service.name=cart,service.instance.id=cart-7")
	goApp.Service = "cart"
	containerCgroup(t, root, slice+"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"+
		strings.ReplaceAll(podUID, "-", "_")+".slice/cri-containerd-"+criID+".scope", goApp.PID)
	// Node in a docker container on cgroup v1 (cgroupfs driver) in the pids
	// hierarchy only; its v2 line stays "0::/".
	v1ID := randomHex(t, 64)
	node := StartApp(t, Node, ports[2], "node-v1")
	containerCgroup(t, "/sys/fs/cgroup/pids", slice+"/docker/"+v1ID, node.PID)
	// Python on the host: no container (this host's own v1 memory cgroup
	// names a 32-hex id, which is not a container's).
	pyHost := StartApp(t, Python, ports[3], "py-host")

	// With header injection: sockops on the cgroup v2 root still sees the
	// connections of processes moved into nested cgroups.
	StartCollector(t, CollectorConfig{
		Instrument:   []Selector{PortsSelector(ports...)},
		SinkEndpoint: sink.Endpoint(),
		EBPF:         map[string]string{"context_propagation": "all"},
	})
	for _, app := range []*App{py, goApp, node, pyHost} {
		waitTraced(t, sink, app)
		require.Equal(t, 200, curlStatus(t, app.URL("/hello")))
	}
	Curl(t, "--fail", py.URL("/call?url="+url.QueryEscape(goApp.URL("/headers"))))
	call := sink.WaitForSpans(t, All(ClientOf(py.Service), func(s Span) bool { return strings.HasSuffix(s.Str("url.full"), "/headers") }), 1, spanTimeout)[0]
	down := sink.WaitForSpans(t, All(ServerOf(goApp.Service), WithPath("/headers")), 1, spanTimeout)[0]
	assert.Equal(t, call.TraceID, down.TraceID, "the call from the docker-style cgroup to the pod-style one is one trace")
	assert.Equal(t, call.SpanID, down.ParentSpanID, "%s", down)
	span := func(app *App) Span {
		return sink.WaitForSpans(t, All(ServerOf(app.Service), WithPath("/hello")), 1, spanTimeout)[0]
	}
	uuid := `^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`

	pyExe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", py.PID))
	require.NoError(t, err)
	s := span(py)
	res := s.Resource
	assert.Equal(t, "checkout", res["service.name"], "%v", res)
	assert.Equal(t, dockerID, res["container.id"], "%v", res)
	assert.NotContains(t, res, "k8s.pod.uid")
	assert.Equal(t, "prod eu", res["deployment.environment.name"])
	assert.Equal(t, "pay,ments", res["team"])
	assert.Equal(t, "cpython", res["process.runtime.name"])
	assert.Equal(t, "python", res["telemetry.sdk.language"])
	assert.Equal(t, pyExe, res["process.executable.path"])
	assert.Equal(t, filepath.Base(pyExe), res["process.executable.name"])
	assert.Contains(t, res["process.command_args"], filepath.Join(RepoRoot(t), "test", "e2e", "apps", "python", "server.py"))
	assert.Regexp(t, uuid, res["service.instance.id"])
	assert.Equal(t, int64(py.PID), res["process.pid"])
	host, _ := os.Hostname()
	assert.Equal(t, host, res["host.name"])

	res = span(goApp).Resource
	assert.Equal(t, "cart", res["service.name"], "%v", res)
	assert.Equal(t, "cart-7", res["service.instance.id"])
	assert.Equal(t, criID, res["container.id"])
	assert.Equal(t, podUID, res["k8s.pod.uid"])
	assert.Equal(t, "go", res["telemetry.sdk.language"])
	assert.Equal(t, "go", res["process.runtime.name"])
	goVersion, err := exec.Command("go", "env", "GOVERSION").Output()
	require.NoError(t, err)
	assert.Equal(t, strings.TrimSpace(string(goVersion)), res["process.runtime.version"])

	res = span(node).Resource
	assert.Equal(t, "node-v1", res["service.name"], "%v", res)
	assert.Equal(t, v1ID, res["container.id"], "%v", res)
	assert.NotContains(t, res, "k8s.pod.uid")
	assert.Equal(t, "nodejs", res["telemetry.sdk.language"])

	res = span(pyHost).Resource
	assert.Equal(t, "py-host", res["service.name"], "%v", res)
	assert.NotContains(t, res, "container.id")
	assert.NotContains(t, res, "k8s.pod.uid")
	assert.Regexp(t, uuid, res["service.instance.id"])
	assert.NotEqual(t, span(py).Resource["service.instance.id"], res["service.instance.id"])
}

// scrapeCounter scrapes the collector's own metrics on port and sums the
// series whose name contains name (a receiver counter).
func scrapeCounter(t *testing.T, port int, name string) int {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	require.NoError(t, err, "scrape collector metrics")
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		i := strings.LastIndexByte(line, ' ')
		if strings.HasPrefix(line, "#") || i < 0 || !strings.Contains(line[:i], name) {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			n += int(v)
		}
	}
	require.NoError(t, sc.Err())
	return n
}

// waitCounter scrapes the collector's counter name until it reaches want or
// spanTimeout passes, and returns the last value.
func waitCounter(t *testing.T, port int, name string, want int) int {
	t.Helper()
	deadline := time.Now().Add(spanTimeout)
	got := scrapeCounter(t, port, name)
	for got != want && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		got = scrapeCounter(t, port, name)
	}
	return got
}

// Route patterns and the heuristic give http.route and the span name of
// SERVER spans; paths no pattern matches are counted; paths matching an
// ignored pattern give no span, counted too.
func TestRoutesAndSpanNames(t *testing.T) {
	sink := StartSink(t)
	port := FreePort(t)
	app := StartApp(t, Go, port, "routes-svc")
	metrics := FreePort(t)
	StartCollector(t, CollectorConfig{
		Instrument:   []Selector{PortsSelector(port)},
		SinkEndpoint: sink.Endpoint(),
		Routes: map[string]string{
			"patterns":         `["/users/{id}", "/users/{id}/orders/:order", "/users/me"]`,
			"ignored_patterns": `["/health", "/debug/**"]`,
		},
		MetricsPort: metrics,
	})
	waitTraced(t, sink, app)

	const uuid = "550e8400-e29b-41d4-a716-446655440000"
	want := []struct {
		path, route string
		matched     bool
	}{
		{"/users/42", "/users/{id}", true},
		{"/users/me", "/users/me", true},
		{"/users/42/orders/7", "/users/{id}/orders/:order", true},
		{"/hello?x=1", "/hello", false},
		{"/status/503", "/status/*", false},
		{"/items/" + uuid + "/blob/9f86d081884c7d65", "/items/*/blob/*", false},
	}
	ignored := []string{"/health", "/debug/pprof/heap", "/debug"}
	for _, p := range ignored {
		curlStatus(t, app.URL(p))
	}
	for _, w := range want {
		curlStatus(t, app.URL(w.path))
	}
	for _, w := range want {
		path, _, _ := strings.Cut(w.path, "?")
		s := sink.WaitForSpans(t, All(ServerOf(app.Service), WithPath(path)), 1, spanTimeout)[0]
		assert.Equal(t, w.route, s.Str("http.route"), "%s", s)
		assert.Equal(t, "GET "+w.route, s.Name, "%s", s)
	}
	// CLIENT spans take url.template and their name from a user pattern
	// only: a target no pattern matches keeps the bare method, with no
	// heuristic template.
	clientWant := []struct{ path, template string }{
		{"/users/42/orders/9", "/users/{id}/orders/:order"},
		{"/status/204", ""},
	}
	for _, w := range clientWant {
		curlStatus(t, app.URL("/call?url="+url.QueryEscape(app.URL(w.path))))
	}
	for _, w := range clientWant {
		c := sink.WaitForSpans(t, All(ClientOf(app.Service), func(s Span) bool {
			return strings.HasSuffix(s.Str("url.full"), w.path)
		}), 1, spanTimeout)[0]
		assert.Equal(t, w.template, c.Str("url.template"), "%s", c)
		assert.Empty(t, c.Str("http.route"), "CLIENT span with http.route: %s", c)
		name := "GET"
		if w.template != "" {
			name += " " + w.template
		}
		assert.Equal(t, name, c.Name, "%s", c)
	}
	// The SERVER spans of /call end after their CLIENT spans.
	sink.WaitForSpans(t, All(ServerOf(app.Service), WithPath("/call")), len(clientWant), spanTimeout)
	// Every SERVER span whose path no pattern matched is counted: the
	// warm-up requests too.
	unmatched := len(sink.Matching(All(ServerOf(app.Service), func(s Span) bool {
		return !strings.HasPrefix(s.Str("http.route"), "/users/")
	})))
	require.GreaterOrEqual(t, unmatched, 3)
	assert.Equal(t, unmatched, waitCounter(t, metrics, "ebpf_tracing_routes_unmatched", unmatched), "receiver_ebpf_tracing_routes_unmatched")
	// The ignored requests were sent before the ones waited for above, so
	// their spans would have come by now.
	assert.Equal(t, len(ignored), waitCounter(t, metrics, "ebpf_tracing_spans_ignored", len(ignored)), "receiver_ebpf_tracing_spans_ignored")
	for _, p := range ignored {
		assert.Empty(t, sink.Matching(All(ServerOf(app.Service), WithPath(p))), "span of ignored path %s exported", p)
	}
}
