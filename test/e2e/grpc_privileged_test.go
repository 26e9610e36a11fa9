//go:build linux && privileged

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

// TestGRPCGo: a Go gRPC client calling a Go gRPC server (the module
// proxy's google.golang.org/grpc, apps/gogrpc), both selected, through the
// built distro. The client is an HTTP front: each GET /call makes one unary
// Health/Check from the handler's goroutine; "missing" gives NOT_FOUND.
// Each call gives a CLIENT span (child of the front's HTTP SERVER span) and
// a SERVER span whose parent is that CLIENT span (joined by connection and
// stream id, no header written), in one trace, with the RPC attributes and
// codes; NOT_FOUND is an error on the CLIENT span only. Stopping the
// collector removes its gRPC uprobe_multi links.
func TestGRPCGo(t *testing.T) {
	before := map[string]map[int]string{"prog": bpfObjects(t, "prog"), "link": bpfObjects(t, "link")}
	sink := StartSink(t)
	ports := FreePorts(t, 2)
	server := StartAppEnv(t, GoGRPC, ports[0], "grpc-server", "GOGRPC_MODE=server")
	client := StartAppEnv(t, GoGRPC, ports[1], "grpc-client", "GOGRPC_MODE=client",
		fmt.Sprintf("GOGRPC_TARGET=127.0.0.1:%d", ports[0]))
	col := StartCollector(t, CollectorConfig{Instrument: []Selector{PortsSelector(ports...)}, SinkEndpoint: sink.Endpoint()})

	hc := &http.Client{Timeout: 10 * time.Second}
	call := func(query string) string {
		resp, err := hc.Get(client.URL("/call?" + query))
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b))
	}
	grpcOf := func(svc string, k ptrace.SpanKind) SpanPred {
		return All(OfKind(svc, k), WithAttr("rpc.system.name", "grpc"))
	}
	// Until both processes are traced (discovery), on the connection the
	// client opened before the collector started.
	for deadline := time.Now().Add(spanTimeout); len(sink.Matching(grpcOf(server.Service, ptrace.SpanKindServer))) == 0 ||
		len(sink.Matching(grpcOf(client.Service, ptrace.SpanKindClient))) == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("no gRPC spans from both processes after %v:\n%s", spanTimeout, sink.Dump())
		}
		call("service=ok.Service&e2e=warmup")
		time.Sleep(250 * time.Millisecond)
	}

	calls := []struct {
		service, answer, code string
		num                   int64
	}{
		{"ok.Service", "OK", "OK", 0},
		{"missing", "NotFound", "NOT_FOUND", 5},
		{"ok.Service", "OK", "OK", 0},
		{"missing", "NotFound", "NOT_FOUND", 5},
	}
	for i, c := range calls {
		require.Equal(t, c.answer, call(fmt.Sprintf("service=%s&e2e=%d", c.service, i)))
	}
	for i, c := range calls {
		fronts := sink.WaitForSpans(t, All(ServerOf(client.Service), WithAttr("url.query", fmt.Sprintf("service=%s&e2e=%d", c.service, i))), 1, spanTimeout)
		front := fronts[0]
		cs := sink.WaitForSpans(t, func(s Span) bool {
			return grpcOf(client.Service, ptrace.SpanKindClient)(s) && s.ParentSpanID == front.SpanID
		}, 1, spanTimeout)
		require.Len(t, cs, 1, "CLIENT spans of call %d:\n%s", i, sink.Dump())
		cl := cs[0]
		ss := sink.WaitForSpans(t, func(s Span) bool {
			return grpcOf(server.Service, ptrace.SpanKindServer)(s) && s.ParentSpanID == cl.SpanID
		}, 1, spanTimeout)
		require.Len(t, ss, 1, "SERVER spans of call %d:\n%s", i, sink.Dump())
		sv := ss[0]
		assert.Equal(t, front.TraceID, cl.TraceID, "one trace: %s / %s", front, cl)
		assert.Equal(t, cl.TraceID, sv.TraceID, "one trace: %s / %s", cl, sv)
		for _, s := range []Span{cl, sv} {
			assert.Equal(t, "grpc.health.v1.Health/Check", s.Name, "%s", s)
			assert.Equal(t, "grpc.health.v1.Health/Check", s.Str("rpc.method"), "%s", s)
			assert.Equal(t, "grpc.health.v1.Health", s.Str("rpc.service"), "%s", s)
			assert.Equal(t, "grpc", s.Str("rpc.system"), "%s", s)
			assert.Equal(t, c.code, s.Str("rpc.response.status_code"), "%s", s)
			n, ok := s.Int("rpc.grpc.status_code")
			assert.True(t, ok && n == c.num, "rpc.grpc.status_code want %d: %s", c.num, s)
			assert.Equal(t, "127.0.0.1", s.Str("server.address"), "%s", s)
			port, ok := s.Int("server.port")
			assert.True(t, ok && port == int64(server.Port), "server.port want %d: %s", server.Port, s)
			assert.False(t, s.Start.After(s.End), "%s", s)
		}
		// Client span encloses the server span.
		assert.False(t, sv.Start.Before(cl.Start) || sv.End.After(cl.End), "server %v-%v outside client %v-%v", sv.Start, sv.End, cl.Start, cl.End)
		if c.num == 0 {
			assert.Equal(t, ptrace.StatusCodeUnset, cl.Status, "%s", cl)
			assert.Equal(t, ptrace.StatusCodeUnset, sv.Status, "%s", sv)
		} else {
			// NOT_FOUND: an error for the client, not for the server.
			assert.Equal(t, ptrace.StatusCodeError, cl.Status, "%s", cl)
			assert.Equal(t, "NOT_FOUND", cl.Str("error.type"), "%s", cl)
			assert.Equal(t, ptrace.StatusCodeUnset, sv.Status, "%s", sv)
		}
	}

	ours := collectorObjects(t, col.PID, before)
	grpcProgs, h2Progs := 0, 0
	for _, name := range ours["prog"] {
		if strings.HasPrefix(name, "gogrpc_") {
			grpcProgs++
		}
		if strings.HasPrefix(name, "goh2_") {
			h2Progs++
		}
	}
	assert.Equal(t, 4, grpcProgs, "gogrpc programs held by the collector: %v", ours["prog"])
	assert.Equal(t, 5, h2Progs, "Go HTTP/2 programs held by the collector: %v", ours["prog"])
	// Both processes run the same binary, with grpc's client and server:
	// 4 uprobe_multi links each for gRPC, 2 for the HTTP/2 server of
	// net/http it links (h2c SERVER spans; no HTTP/2 client of net/http)
	// and 3 for its crypto/tls (Go TLS spans, bpf/httptrace) (bpftool
	// names the type 12 or uprobe_multi); the other links are tracepoints.
	multi := 0
	for _, name := range ours["link"] {
		if name == "12" || name == "uprobe_multi" {
			multi++
		}
	}
	assert.Equal(t, 2*(4+2+3), multi, "uprobe_multi links: %v", ours["link"])
	assert.Equal(t, 0, col.Stop(), "exit code after SIGTERM")
	waitObjectsGone(t, ours)
}
