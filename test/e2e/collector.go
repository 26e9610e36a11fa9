//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Selector is one entry of the receiver's discovery.instrument list; empty
// fields are left out of the YAML.
type Selector struct {
	OpenPorts string // "18080,18081" or "18080-18090"
	ExePath   string
	PID       int
}

// PortsSelector selects the processes listening on any of ports.
func PortsSelector(ports ...int) Selector {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(p)
	}
	return Selector{OpenPorts: strings.Join(s, ",")}
}

// CollectorConfig is what the runner writes into the distro's YAML config.
type CollectorConfig struct {
	// Instrument is discovery.instrument.
	Instrument []Selector
	// SinkEndpoint is the otlp_http exporter's endpoint (Sink.Endpoint).
	SinkEndpoint string
	// ExporterName and ExporterYAML, when set, replace the otlp_http
	// exporter to SinkEndpoint: the traces pipeline exports to ExporterName,
	// configured by ExporterYAML (its lines under exporters.<name>, indented
	// by four spaces).
	ExporterName, ExporterYAML string
	// BatchTimeout is ebpf.batch_timeout; "100ms" when empty.
	BatchTimeout string
	// EBPF holds more ebpf.<key>: <value> lines, values written verbatim.
	EBPF map[string]string
	// OTLPPort, when not zero, adds the otlp receiver with OTLP/HTTP on
	// 127.0.0.1:<port> to the traces pipeline, beside ebpf_tracing, for apps
	// that export their own spans (GoSDK).
	OTLPPort int
	// Sampler holds the receiver's sampler.<key>: <value> lines (name, arg),
	// values written verbatim; none when empty.
	Sampler map[string]string
	// Routes holds the receiver's routes.<key>: <value> lines (patterns,
	// unmatched, wildcard_char), values written verbatim; none when empty.
	Routes map[string]string
	// Env holds more "NAME=value" variables for the collector process.
	Env []string
	// MetricsPort, when not zero, serves the collector's own metrics
	// (level detailed) in the Prometheus format on 127.0.0.1:<port>.
	MetricsPort int
	// HealthCheckPort, when not zero, enables the health_check extension on
	// 127.0.0.1:<port>. StartCollector sets it when the distro has the
	// extension.
	HealthCheckPort int
}

// IOHookEnv, when set (e.g. to sys_exit), is written as ebpf.io_hook into
// every collector config that does not set it: make test runs the
// propagation tests again with the sys_exit fallback forced.
const IOHookEnv = "E2E_IO_HOOK"

// YAML renders the collector configuration.
func (c CollectorConfig) YAML() string {
	var b strings.Builder
	b.WriteString("receivers:\n  ebpf_tracing:\n    discovery:\n      instrument:\n")
	for _, s := range c.Instrument {
		var fields []string
		if s.OpenPorts != "" {
			fields = append(fields, "open_ports: "+strconv.Quote(s.OpenPorts))
		}
		if s.ExePath != "" {
			fields = append(fields, "exe_path: "+strconv.Quote(s.ExePath))
		}
		if s.PID != 0 {
			fields = append(fields, "pid: "+strconv.Itoa(s.PID))
		}
		for i, f := range fields {
			if i == 0 {
				b.WriteString("        - " + f + "\n")
			} else {
				b.WriteString("          " + f + "\n")
			}
		}
	}
	batch := c.BatchTimeout
	if batch == "" {
		batch = "100ms"
	}
	b.WriteString("    ebpf:\n      batch_timeout: " + batch + "\n")
	ebpf := maps.Clone(c.EBPF)
	if hook := os.Getenv(IOHookEnv); hook != "" && ebpf["io_hook"] == "" {
		if ebpf == nil {
			ebpf = map[string]string{}
		}
		ebpf["io_hook"] = hook
	}
	keys := make([]string, 0, len(ebpf))
	for k := range ebpf {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "      %s: %s\n", k, ebpf[k])
	}
	if len(c.Sampler) > 0 {
		b.WriteString("    sampler:\n")
		for _, k := range slices.Sorted(maps.Keys(c.Sampler)) {
			fmt.Fprintf(&b, "      %s: %s\n", k, c.Sampler[k])
		}
	}
	if len(c.Routes) > 0 {
		b.WriteString("    routes:\n")
		for _, k := range slices.Sorted(maps.Keys(c.Routes)) {
			fmt.Fprintf(&b, "      %s: %s\n", k, c.Routes[k])
		}
	}
	receivers := "ebpf_tracing"
	if c.OTLPPort != 0 {
		fmt.Fprintf(&b, "  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:%d\n", c.OTLPPort)
		receivers += ", otlp"
	}
	// sending_queue off: each batch is exported synchronously, so a span is
	// at the sink ~batch_timeout after the response. retry off: a failed
	// export shows in the collector's log instead of arriving twice.
	exporter := "otlp_http"
	if c.ExporterName != "" {
		exporter = c.ExporterName
		fmt.Fprintf(&b, "exporters:\n  %s:\n%s", exporter, c.ExporterYAML)
	} else {
		fmt.Fprintf(&b, `exporters:
  otlp_http:
    endpoint: %s
    compression: none
    sending_queue:
      enabled: false
    retry_on_failure:
      enabled: false
`, c.SinkEndpoint)
	}
	if c.HealthCheckPort != 0 {
		fmt.Fprintf(&b, "extensions:\n  health_check:\n    endpoint: 127.0.0.1:%d\n", c.HealthCheckPort)
	}
	b.WriteString("service:\n")
	if c.HealthCheckPort != 0 {
		b.WriteString("  extensions: [health_check]\n")
	}
	fmt.Fprintf(&b, `  pipelines:
    traces:
      receivers: [%s]
      exporters: [%s]
  telemetry:
`, receivers, exporter)
	if c.MetricsPort == 0 {
		b.WriteString("    metrics:\n      level: none\n")
	} else {
		fmt.Fprintf(&b, `    metrics:
      level: detailed
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: %d
`, c.MetricsPort)
	}
	return b.String()
}

// DistroPath is <repo root>/_build/otelcol-ebpf, or $E2E_OTELCOL_BIN when
// set (to try another build); it fails the test when the binary is missing.
func DistroPath(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("E2E_OTELCOL_BIN")
	if bin == "" {
		bin = filepath.Join(RepoRoot(t), "_build", "otelcol-ebpf")
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("collector distro %s not found (%v): run `make distro` first", bin, err)
	}
	return bin
}

// distroHas reports whether `bin components` lists a component named name.
func distroHas(t testing.TB, bin, name string) bool {
	t.Helper()
	out, err := exec.Command(bin, "components").Output()
	if err != nil {
		t.Logf("%s components: %v (assuming no %s)", bin, err, name)
		return false
	}
	return bytes.Contains(out, []byte("name: "+name+"\n"))
}

// Collector is a running distro.
type Collector struct {
	ConfigPath string
	Config     string
	PID        int

	t    testing.TB
	cmd  *exec.Cmd
	done chan struct{}
	out  *syncBuffer
}

// Output is what the collector wrote on stdout and stderr so far.
func (c *Collector) Output() string { return c.out.String() }

// StartCollector writes cfg to a temporary file, starts the distro with it,
// and waits until it logs "Everything is ready" (and, when the distro has the
// health_check extension, until that answers 200). The collector is killed
// when the test ends if Stop was not called (SIGTERM, then SIGKILL after
// 15 s); its output is logged if the test failed.
func StartCollector(t testing.TB, cfg CollectorConfig) *Collector {
	t.Helper()
	return StartCollectorBinary(t, DistroPath(t), cfg)
}

// StartCollectorBinary is StartCollector with another collector binary.
func StartCollectorBinary(t testing.TB, bin string, cfg CollectorConfig) *Collector {
	t.Helper()
	if cfg.HealthCheckPort == 0 && distroHas(t, bin, "health_check") {
		cfg.HealthCheckPort = FreePort(t)
	}
	return startCollector(t, bin, cfg.YAML(), cfg.Env, cfg.HealthCheckPort)
}

// StartCollectorYAML starts the distro with config as it is (a gateway, a
// metrics pipeline: what CollectorConfig does not render), env added to the
// test's environment, and waits as StartCollector does; healthCheckPort, when
// not zero, is the health_check endpoint port config enables.
func StartCollectorYAML(t testing.TB, config string, env []string, healthCheckPort int) *Collector {
	t.Helper()
	return startCollector(t, DistroPath(t), config, env, healthCheckPort)
}

func startCollector(t testing.TB, bin, config string, env []string, healthCheckPort int) *Collector {
	t.Helper()
	c := &Collector{Config: config, t: t, done: make(chan struct{}), out: &syncBuffer{}}
	c.ConfigPath = filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(c.ConfigPath, []byte(c.Config), 0o644); err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, "--config", c.ConfigPath)
	if len(env) > 0 {
		c.cmd.Env = append(os.Environ(), env...)
	}
	c.cmd.Stdout = c.out
	c.cmd.Stderr = c.out
	startProcessGroup(t, c.cmd, nil, c.done, func() string { return "collector\nconfig:\n" + c.Config }, c.out)
	c.PID = c.cmd.Process.Pid
	// Runs before startProcessGroup's SIGKILL of the group: a collector the
	// test did not stop gets a graceful shutdown first.
	t.Cleanup(func() {
		if c.Exited() {
			return
		}
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(15 * time.Second):
			t.Errorf("collector did not exit within 15s of SIGTERM at cleanup")
		}
	})

	const readyTimeout = 60 * time.Second
	deadline := time.Now().Add(readyTimeout)
	for !c.out.Contains("Everything is ready") {
		select {
		case <-c.done:
			t.Fatalf("collector exited before it was ready (%v)", c.cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("collector not ready after %v", readyTimeout)
		}
	}
	if healthCheckPort != 0 {
		url := fmt.Sprintf("http://127.0.0.1:%d/", healthCheckPort)
		client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		for {
			resp, err := client.Get(url)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("health_check %s not OK after %v (last: %v)", url, readyTimeout, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// Stop sends SIGTERM, waits up to 15 s for the collector to exit, and returns
// its exit code (-1 if it had to be killed, failing the test).
func (c *Collector) Stop() int {
	c.t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
		c.t.Errorf("collector did not exit within 15s of SIGTERM")
		return -1
	}
	return exitCode(c.cmd)
}

// Exited reports whether the collector process has ended.
func (c *Collector) Exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// RunResult is the outcome of a distro run that was expected to end.
type RunResult struct {
	ExitCode int
	Stdout   string
	Stderr   string
	Elapsed  time.Duration
}

// RunDistro writes config to dir/config.yaml, runs bin --config <it> in dir
// and waits for it to exit, failing the test if it still runs after timeout.
// With cred set it runs as that user and group, so dir and bin must be
// readable (and bin executable) by them; nil runs as the test's user.
func RunDistro(t testing.TB, bin, dir, config string, cred *syscall.Credential, timeout time.Duration) RunResult {
	t.Helper()
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr, all syncBuffer
	cmd := exec.Command(bin, "--config", path)
	cmd.Dir = dir
	cmd.Stdout = io.MultiWriter(&stdout, &all)
	cmd.Stderr = io.MultiWriter(&stderr, &all)
	done := make(chan struct{})
	start := time.Now()
	startProcessGroup(t, cmd, cred, done, func() string { return bin + "\nconfig:\n" + config }, &all)
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("%s still running after %v", bin, timeout)
	}
	return RunResult{ExitCode: exitCode(cmd), Stdout: stdout.String(), Stderr: stderr.String(), Elapsed: time.Since(start)}
}

// exitCode is the exit code of a finished command, or 128+signal when a
// signal ended it.
func exitCode(cmd *exec.Cmd) int {
	st := cmd.ProcessState
	if st == nil {
		return -1
	}
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}
