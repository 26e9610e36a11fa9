//go:build linux && privileged

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

const (
	// spanTimeout is how long a span may take to reach the sink: the
	// receiver batches for 100 ms and exports synchronously.
	spanTimeout = 10 * time.Second
	// settle is how long to keep listening for spans that must not come.
	settle = time.Second
	// warmupPath is the request waitTraced sends; no test asserts on it.
	warmupPath = "/status/200"
)

// fleet is one collector, its sink and the apps it instruments.
type fleet struct {
	sink *Sink
	col  *Collector
	apps map[string]*App // by service name
}

type appSpec struct {
	lang    Lang
	service string
}

// startFleet starts the apps on fresh ports, a sink, and a collector that
// instruments exactly those ports, then waits until every app is traced.
func startFleet(t *testing.T, specs ...appSpec) *fleet {
	t.Helper()
	return startFleetEBPF(t, nil, specs...)
}

// startFleetEBPF is startFleet with more ebpf.<key>: <value> settings
// (CollectorConfig.EBPF).
func startFleetEBPF(t *testing.T, ebpf map[string]string, specs ...appSpec) *fleet {
	t.Helper()
	return startFleetAfter(t, ebpf, nil, specs...)
}

// startFleetAfter is startFleetEBPF running before(apps) once the apps are
// up, before the collector starts (e.g. to open pooled connections).
func startFleetAfter(t *testing.T, ebpf map[string]string, before func(apps map[string]*App), specs ...appSpec) *fleet {
	t.Helper()
	f := &fleet{sink: StartSink(t), apps: map[string]*App{}}
	ports := FreePorts(t, len(specs))
	for i, s := range specs {
		app := StartApp(t, s.lang, ports[i], s.service)
		t.Logf("%s app %s ready in %v (pid %d, port %d)", s.lang, s.service, app.StartUp.Round(time.Millisecond), app.PID, app.Port)
		f.apps[s.service] = app
	}
	if before != nil {
		before(f.apps)
	}
	f.col = StartCollector(t, CollectorConfig{
		Instrument:   []Selector{PortsSelector(ports...)},
		SinkEndpoint: f.sink.Endpoint(),
		EBPF:         ebpf,
	})
	for _, s := range specs {
		waitTraced(t, f.sink, f.apps[s.service])
	}
	return f
}

// langSpecs is one app per language with its default service name.
func langSpecs(langs ...Lang) []appSpec {
	out := make([]appSpec, len(langs))
	for i, l := range langs {
		out[i] = appSpec{l, DefaultService(l)}
	}
	return out
}

// waitTraced sends GET warmupPath to app every 250 ms until a SERVER span of
// its service arrives, so a test does not race the receiver's discovery of
// processes that were running before the collector started.
func waitTraced(t *testing.T, sink *Sink, app *App) {
	t.Helper()
	waitTracedBy(t, sink, app, ServerOf(app.Service))
}

// waitTracedBy is waitTraced waiting for a span matching pred.
func waitTracedBy(t *testing.T, sink *Sink, app *App, pred SpanPred) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(spanTimeout)
	for i := 0; ; i++ {
		resp, err := client.Get(app.URL(fmt.Sprintf("%s?e2e_warmup=%d", warmupPath, i)))
		if err == nil {
			resp.Body.Close()
		}
		if len(sink.Matching(pred)) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s app %s (pid %d, port %d) not traced after %v of requests; received spans:\n%s",
				app.Lang, app.Service, app.PID, app.Port, spanTimeout, sink.Dump())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// assertServerSpan checks the attributes every SERVER span of app carries.
func assertServerSpan(t *testing.T, app *App, s Span, method, path string, status int) {
	t.Helper()
	assert.Equal(t, ptrace.SpanKindServer, s.Kind, "%s", s)
	assert.Equal(t, app.Service, s.Service(), "%s", s)
	pid, ok := s.ResourceInt("process.pid")
	assert.True(t, ok && pid == int64(app.PID), "process.pid: want %d; %s", app.PID, s)
	assert.Equal(t, method, s.Str("http.request.method"), "%s", s)
	assert.Equal(t, path, s.Str("url.path"), "%s", s)
	code, ok := s.Int("http.response.status_code")
	assert.True(t, ok && code == int64(status), "http.response.status_code: want %d; %s", status, s)
	port, ok := s.Int("server.port")
	assert.True(t, ok && port == int64(app.Port), "server.port: want %d; %s", app.Port, s)
	assert.Equal(t, "127.0.0.1", s.Str("network.peer.address"), "%s", s)
	assert.Len(t, s.TraceID, 32, "trace id; %s", s)
	assert.Len(t, s.SpanID, 16, "span id; %s", s)
	if status >= 500 {
		assert.Equal(t, ptrace.StatusCodeError, s.Status, "status of a %d; %s", status, s)
	} else {
		assert.Equal(t, ptrace.StatusCodeUnset, s.Status, "status of a %d; %s", status, s)
	}
}

// onlySpans waits for n spans matching pred, waits settle longer, and fails
// if more than n arrived.
func onlySpans(t *testing.T, sink *Sink, pred SpanPred, n int) []Span {
	t.Helper()
	sink.WaitForSpans(t, pred, n, spanTimeout)
	time.Sleep(settle)
	got := sink.Matching(pred)
	require.Len(t, got, n, "spans:\n%s", sink.Dump())
	return got
}

// curlStatus runs curl on url (extra args first) and returns the HTTP status.
func curlStatus(t *testing.T, url string, args ...string) int {
	t.Helper()
	out := Curl(t, append(append([]string{"-o", "/dev/null", "-w", "%{http_code}"}, args...), url)...)
	code, err := strconv.Atoi(strings.TrimSpace(out))
	require.NoError(t, err, "curl -w output %q", out)
	return code
}

// bpfObjects is the set of BPF object ids of one kind ("prog", "map",
// "link") that bpftool lists, with their names.
func bpfObjects(t *testing.T, kind string) map[int]string {
	t.Helper()
	bpftool, err := exec.LookPath("bpftool")
	if err != nil {
		bpftool = "/usr/sbin/bpftool"
		if _, err := os.Stat(bpftool); err != nil {
			t.Fatalf("bpftool not found: apt-get install -y bpftool (make test does)")
		}
	}
	out, err := exec.Command(bpftool, kind, "show", "--json").Output()
	require.NoError(t, err, "bpftool %s show", kind)
	var objs []struct {
		ID   int    `json:"id"`
		Name string `json:"name"`
		// A name, or a number for link types bpftool does not know
		// (uprobe_multi is 12 in Debian 12's bpftool).
		Type json.RawMessage `json:"type"`
	}
	require.NoError(t, json.Unmarshal(out, &objs), "bpftool %s show: %s", kind, out)
	ids := map[int]string{}
	for _, o := range objs {
		ids[o.ID] = o.Name
		if o.Name == "" {
			ids[o.ID] = strings.Trim(string(o.Type), `"`)
		}
	}
	return ids
}

// heldBPFObjects reads /proc/<pid>/fdinfo and returns the ids of the BPF
// programs, maps and links that pid holds, by kind.
func heldBPFObjects(t *testing.T, pid int) map[string][]int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	held := map[string][]int{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		for _, line := range strings.Split(string(b), "\n") {
			key, val, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			kind, isID := strings.CutSuffix(strings.TrimSpace(key), "_id")
			if !isID || (kind != "prog" && kind != "map" && kind != "link") {
				continue
			}
			if id, err := strconv.Atoi(strings.TrimSpace(val)); err == nil && id > 0 {
				held[kind] = append(held[kind], id)
			}
		}
	}
	return held
}

// getConcurrently sends GET to every url at once, each on its own connection
// if need be, and returns the failures (errors and non-200 statuses).
func getConcurrently(t *testing.T, urls []string) []error {
	t.Helper()
	client := NewClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, len(urls))
	start := make(chan struct{})
	for _, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			if err != nil {
				errs <- err
				return
			}
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("GET %s: status %d", u, resp.StatusCode)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	var out []error
	for err := range errs {
		out = append(out, err)
	}
	return out
}
