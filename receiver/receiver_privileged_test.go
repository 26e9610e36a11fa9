//go:build linux && privileged

package ebpfreceiver

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"go.opentelemetry.io/collector/component/componenttest"
	"go.opentelemetry.io/collector/consumer/consumertest"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/receiver/receivertest"

	"github.com/ebpftracing/ebpftracingreceiver/internal/metadata"
)

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startPython(t *testing.T, port int) *exec.Cmd {
	dir := t.TempDir()
	if err := os.WriteFile(dir+"/hello", []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("python3", "-m", "http.server", fmt.Sprint(port), "--bind", "127.0.0.1", "--protocol", "HTTP/1.1")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "OTEL_SERVICE_NAME=py-lifecycle")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
			c.Close()
			return cmd
		}
	}
	t.Fatal("python server did not start")
	return nil
}

// TestLifecycle starts the receiver on a running server, checks a request
// becomes a span, and that Shutdown works twice.
func TestLifecycle(t *testing.T) {
	port := freePort(t)
	py := startPython(t, port)

	cfg := createDefaultConfig()
	cfg.Discovery.Instrument = []Selector{{PID: py.Process.Pid}}
	cfg.EBPF.BatchTimeout = 50 * time.Millisecond
	sink := new(consumertest.TracesSink)
	rcv, err := NewFactory().CreateTraces(context.Background(), receivertest.NewNopSettings(metadata.Type), cfg, sink)
	if err != nil {
		t.Fatal(err)
	}
	if err := rcv.Start(context.Background(), componenttest.NewNopHost()); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/hello", port))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	var span ptrace.Span
	var res ptrace.ResourceSpans
	deadline := time.Now().Add(5 * time.Second)
	for found := false; !found && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, td := range sink.AllTraces() {
			for i := 0; i < td.ResourceSpans().Len(); i++ {
				rs := td.ResourceSpans().At(i)
				ss := rs.ScopeSpans().At(0).Spans()
				for j := 0; j < ss.Len(); j++ {
					span, res, found = ss.At(j), rs, true
				}
			}
		}
	}
	// The default routes (heuristic): /hello has no id segment.
	if span.Name() != "GET /hello" || span.Kind() != ptrace.SpanKindServer {
		t.Fatalf("span %q kind %v", span.Name(), span.Kind())
	}
	if v, _ := span.Attributes().Get("url.path"); v.Str() != "/hello" {
		t.Errorf("url.path %q", v.Str())
	}
	if v, _ := span.Attributes().Get("http.route"); v.Str() != "/hello" {
		t.Errorf("http.route %q", v.Str())
	}
	if v, _ := res.Resource().Attributes().Get("service.name"); v.Str() != "py-lifecycle" {
		t.Errorf("service.name %q", v.Str())
	}
	if v, _ := res.Resource().Attributes().Get("process.pid"); v.Int() != int64(py.Process.Pid) {
		t.Errorf("process.pid %d", v.Int())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rcv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := rcv.Shutdown(ctx); err != nil {
		t.Fatalf("second shutdown: %v", err)
	}
}

func TestShutdownWithoutStart(t *testing.T) {
	cfg := createDefaultConfig()
	cfg.Discovery.Instrument = []Selector{{PID: 1}}
	rcv, err := NewFactory().CreateTraces(context.Background(), receivertest.NewNopSettings(metadata.Type), cfg, new(consumertest.TracesSink))
	if err != nil {
		t.Fatal(err)
	}
	if err := rcv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// loadedPrograms counts the BPF programs of the host named name.
func loadedPrograms(t *testing.T, name string) int {
	t.Helper()
	n := 0
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return n
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		if info, err := p.Info(); err == nil && info.Name == name {
			n++
		}
		p.Close()
	}
}

// TestLifecycleCarrier: with context_propagation tcp the TCP option
// carrier's sockops program is loaded and attached by Start, and gone after
// Shutdown.
func TestLifecycleCarrier(t *testing.T) {
	before := loadedPrograms(t, "tcpopt_sockops")
	cfg := createDefaultConfig()
	cfg.Discovery.Instrument = []Selector{{PID: os.Getpid()}}
	cfg.EBPF.ContextPropagation = PropagationTCP
	rcv, err := NewFactory().CreateTraces(context.Background(), receivertest.NewNopSettings(metadata.Type), cfg, new(consumertest.TracesSink))
	if err != nil {
		t.Fatal(err)
	}
	if err := rcv.Start(context.Background(), componenttest.NewNopHost()); err != nil {
		t.Fatal(err)
	}
	if got := loadedPrograms(t, "tcpopt_sockops"); got != before+1 {
		t.Errorf("tcpopt_sockops programs after Start: %d, want %d", got, before+1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := rcv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	// Program objects are freed once their last reference goes.
	deadline := time.Now().Add(5 * time.Second)
	for loadedPrograms(t, "tcpopt_sockops") != before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if got := loadedPrograms(t, "tcpopt_sockops"); got != before {
		t.Errorf("tcpopt_sockops programs after Shutdown: %d, want %d", got, before)
	}
}
