//go:build linux && privileged

package e2e

import (
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Interoperability with the OpenTelemetry SDK: a service instrumented with
// the Go SDK (apps/gosdk, otelhttp) between services we trace ends up in the
// same trace as ours, its spans sent to the same collector through the otlp
// receiver.

const (
	// receiverScope is the instrumentation scope of the receiver's spans.
	receiverScope = "github.com/ebpftracing/ebpftracingreceiver"
	// otelhttpScope is the instrumentation scope of the SDK app's spans.
	otelhttpScope = "go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
)

// fromScope selects spans of the instrumentation scope named scope.
func fromScope(scope string) SpanPred { return func(s Span) bool { return s.Scope == scope } }

// TestSDKInterop sends py-svc /call → gosdk-svc /call → py2-svc /headers with
// ebpf.context_propagation: all. The SDK app continues the traceparent our
// injector wrote into py-svc's request and writes its own into its request
// to py2-svc, which we continue. In "sdk app traced too" the receiver also
// traces the SDK app: the header the app wrote is the only one py2-svc gets,
// and our CLIENT span of the SDK app takes its ids.
func TestSDKInterop(t *testing.T) {
	t.Run("sdk app not traced", func(t *testing.T) { testSDKInterop(t, false) })
	t.Run("sdk app traced too", func(t *testing.T) { testSDKInterop(t, true) })
}

func testSDKInterop(t *testing.T, traceSDK bool) {
	const pySvc, sdkSvc, py2Svc = "py-svc", "gosdk-svc", "py2-svc"
	sink := StartSink(t)
	ports := FreePorts(t, 4)
	otlpPort := ports[3]
	py := StartApp(t, Python, ports[0], pySvc)
	sdk := StartAppEnv(t, GoSDK, ports[1], sdkSvc, fmt.Sprintf("OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:%d", otlpPort))
	py2 := StartApp(t, Python, ports[2], py2Svc)
	traced := []*App{py, py2}
	if traceSDK {
		traced = append(traced, sdk)
	}
	tracedPorts := make([]int, len(traced))
	for i, a := range traced {
		tracedPorts[i] = a.Port
	}
	StartCollector(t, CollectorConfig{
		Instrument:   []Selector{PortsSelector(tracedPorts...)},
		SinkEndpoint: sink.Endpoint(),
		EBPF:         propagationAll,
		OTLPPort:     otlpPort,
	})
	ours, theirs := fromScope(receiverScope), fromScope(otelhttpScope)
	for _, a := range traced {
		// The SDK app's own SERVER spans do not show that we trace it.
		waitTracedBy(t, sink, a, All(ours, ServerOf(a.Service)))
	}

	const tag = "sdk"
	hops := curlChain(t, ChainURL([]*App{py, sdk, py2}, "/headers", "chain", tag), 3)

	// The SDK's SERVER span has url.path but no url.query; the test sends
	// only one /call to the SDK app.
	preds := map[string]SpanPred{
		"py-svc SERVER":        All(ours, ServerOf(pySvc), withTag(tag)),
		"py-svc CLIENT":        All(ours, ClientOf(pySvc), withTag(tag)),
		"gosdk-svc SDK SERVER": All(theirs, ServerOf(sdkSvc), WithPath("/call")),
		"gosdk-svc SDK CLIENT": All(theirs, ClientOf(sdkSvc), withTag(tag)),
		"py2-svc SERVER":       All(ours, ServerOf(py2Svc), withTag(tag)),
	}
	if traceSDK {
		preds["gosdk-svc eBPF SERVER"] = All(ours, ServerOf(sdkSvc), withTag(tag))
		preds["gosdk-svc eBPF CLIENT"] = All(ours, ClientOf(sdkSvc), withTag(tag))
	}
	got := oneSpanEach(t, sink, preds)
	pyServer, pyClient := got["py-svc SERVER"], got["py-svc CLIENT"]
	sdkServer, sdkClient := got["gosdk-svc SDK SERVER"], got["gosdk-svc SDK CLIENT"]
	py2Server := got["py2-svc SERVER"]

	trace := pyServer.TraceID
	require.Len(t, trace, 32, "%s", pyServer)
	for _, name := range sortedKeys(got) {
		assert.Equal(t, trace, got[name].TraceID, "%s joins trace %s: %s", name, trace, got[name])
	}
	assert.Empty(t, pyServer.ParentSpanID, "py-svc SERVER span is a root: %s", pyServer)
	assert.Equal(t, 0, hops[0].TraceparentCount, "py-svc received no traceparent")
	assert.Equal(t, pyServer.SpanID, pyClient.ParentSpanID, "py-svc CLIENT span is a child of its SERVER span: %s", pyClient)

	// Our injected header → the SDK.
	assert.Equal(t, pyClient.SpanID, sdkServer.ParentSpanID, "SDK SERVER span is a child of py-svc's CLIENT span %s: %s", pyClient.SpanID, sdkServer)
	assert.Equal(t, "00-"+trace+"-"+pyClient.SpanID+"-"+rootFlags, hops[1].Traceparent, "gosdk-svc received py-svc CLIENT span's traceparent")
	assert.Equal(t, 1, hops[1].TraceparentCount, "gosdk-svc received exactly one traceparent")
	assert.Equal(t, sdkServer.SpanID, sdkClient.ParentSpanID, "SDK CLIENT span is a child of the SDK SERVER span %s: %s", sdkServer.SpanID, sdkClient)

	// The SDK's header → us.
	assert.Equal(t, sdkClient.SpanID, py2Server.ParentSpanID, "py2-svc SERVER span is a child of the SDK CLIENT span %s: %s", sdkClient.SpanID, py2Server)
	want := "00-" + trace + "-" + sdkClient.SpanID + "-" + rootFlags // the SDK keeps its parent's flags
	assert.Equal(t, want, hops[2].Traceparent, "py2-svc received the SDK CLIENT span's traceparent")
	assert.Equal(t, 1, hops[2].TraceparentCount, "py2-svc received exactly one traceparent: %v", hops[2].Headers)
	assert.Equal(t, want, hops[2].Headers["traceparent"], "the only traceparent field")

	if !traceSDK {
		untraced := sink.Matching(All(ours, func(s Span) bool { return s.Service() == sdkSvc }))
		assert.Empty(t, untraced, "the receiver does not trace gosdk-svc")
		return
	}
	// Our SERVER span of the SDK app continues the injected header like the
	// SDK's. Our CLIENT span takes the ids the SDK wrote; Go writes the
	// request from another goroutine (and thread) than the handler's, so its
	// parent is not asserted.
	ebpfServer, ebpfClient := got["gosdk-svc eBPF SERVER"], got["gosdk-svc eBPF CLIENT"]
	assert.Equal(t, pyClient.SpanID, ebpfServer.ParentSpanID, "our SERVER span of gosdk-svc is a child of py-svc's CLIENT span: %s", ebpfServer)
	tp := hops[2].Traceparent
	wantTrace, wantSpan := traceparentIDs(t, tp)
	assert.Equal(t, wantTrace, ebpfClient.TraceID, "our CLIENT span of gosdk-svc takes the trace id of the header %s: %s", tp, ebpfClient)
	assert.Equal(t, wantSpan, ebpfClient.SpanID, "our CLIENT span of gosdk-svc takes the span id of the header %s: %s", tp, ebpfClient)
}

// oneSpanEach waits for a span matching each of preds, waits settle for
// extra ones, and returns the one span of each name; it fails the test when
// one is missing or comes twice.
func oneSpanEach(t *testing.T, sink *Sink, preds map[string]SpanPred) map[string]Span {
	t.Helper()
	deadline := time.Now().Add(spanTimeout)
	for _, name := range sortedKeys(preds) {
		for len(sink.Matching(preds[name])) == 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	time.Sleep(settle)
	out := map[string]Span{}
	var problems []string
	for _, name := range sortedKeys(preds) {
		got := sink.Matching(preds[name])
		if len(got) != 1 {
			problems = append(problems, fmt.Sprintf("%d spans for %s, want 1", len(got), name))
			continue
		}
		out[name] = got[0]
	}
	require.Empty(t, problems, "spans:\n%s", sink.Dump())
	return out
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
