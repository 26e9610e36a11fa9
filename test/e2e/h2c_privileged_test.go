//go:build linux && privileged

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

// TestH2CGo: HTTP/2 over cleartext (h2c, prior knowledge) between Go
// programs, through the built distro, with each copy of Go's HTTP/2 (the
// standard library's bundled one and the module proxy's
// golang.org/x/net/http2; apps/goh2c). The test's own h2c client calls
// server A (GET /call), whose handler calls server B over h2c (/leaf: 200,
// /missing: 404). Each request gives A's SERVER span, A's CLIENT span (its
// child, from the handler's goroutine ancestry) and B's SERVER span (the
// CLIENT span's child, joined by connection and stream id, no header
// written), in one trace, with the HTTP attributes and
// network.protocol.version "2"; an incoming traceparent is A's SERVER
// span's parent (not sampled: no span at all); and nothing else: the network-level HTTP/1 parser adds
// no span for the same requests.
func TestH2CGo(t *testing.T) {
	for _, copyName := range []string{"std", "xnet"} {
		t.Run(copyName, func(t *testing.T) { testH2C(t, copyName) })
	}
}

func testH2C(t *testing.T, copyName string) {
	sink := StartSink(t)
	ports := FreePorts(t, 2)
	b := StartAppEnv(t, GoH2C, ports[1], "h2c-b-"+copyName, "GOH2C_COPY="+copyName)
	a := StartAppEnv(t, GoH2C, ports[0], "h2c-a-"+copyName, "GOH2C_COPY="+copyName,
		fmt.Sprintf("GOH2C_TARGET=127.0.0.1:%d", ports[1]))
	StartCollector(t, CollectorConfig{Instrument: []Selector{PortsSelector(ports...)}, SinkEndpoint: sink.Endpoint()})

	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	t.Cleanup(tr.CloseIdleConnections)
	hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	call := func(q url.Values, hdr ...string) string {
		req, err := http.NewRequest(http.MethodGet, a.URL("/call?"+q.Encode()), nil)
		require.NoError(t, err)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := hc.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, 2, resp.ProtoMajor, "the test's client speaks h2c")
		body, _ := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(body))
	}
	h2 := func(p SpanPred) SpanPred { return All(p, WithAttr("network.protocol.version", "2")) }
	for deadline := time.Now().Add(spanTimeout); len(sink.Matching(h2(ServerOf(b.Service)))) == 0 ||
		len(sink.Matching(h2(ClientOf(a.Service)))) == 0 || len(sink.Matching(h2(ServerOf(a.Service)))) == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("no h2c spans from both processes after %v:\n%s", spanTimeout, sink.Dump())
		}
		call(url.Values{"path": {"/leaf"}, "e2e": {"warmup"}})
		time.Sleep(250 * time.Millisecond)
	}

	reqs := []struct {
		path   string
		status int64
	}{{"/leaf", 200}, {"/missing", 404}, {"/leaf", 200}, {"/missing", 404}}
	for i, r := range reqs {
		require.Equal(t, fmt.Sprintf("%d HTTP/2.0", r.status), call(url.Values{"path": {r.path}, "e2e": {fmt.Sprint(i)}}))
	}
	for i, r := range reqs {
		id := fmt.Sprint(i)
		front := url.Values{"path": {r.path}, "e2e": {id}}.Encode()
		fs := sink.WaitForSpans(t, All(ServerOf(a.Service), WithAttr("url.query", front)), 1, spanTimeout)
		require.Len(t, fs, 1, "A's SERVER spans of request %d:\n%s", i, sink.Dump())
		fr := fs[0]
		cs := sink.WaitForSpans(t, func(s Span) bool { return ClientOf(a.Service)(s) && s.ParentSpanID == fr.SpanID }, 1, spanTimeout)
		require.Len(t, cs, 1, "A's CLIENT spans of request %d:\n%s", i, sink.Dump())
		cl := cs[0]
		ss := sink.WaitForSpans(t, func(s Span) bool { return ServerOf(b.Service)(s) && s.ParentSpanID == cl.SpanID }, 1, spanTimeout)
		require.Len(t, ss, 1, "B's SERVER spans of request %d:\n%s", i, sink.Dump())
		sv := ss[0]
		assert.Empty(t, fr.ParentSpanID, "A's SERVER span is a root: %s", fr)
		assert.Equal(t, fr.TraceID, cl.TraceID, "one trace: %s / %s", fr, cl)
		assert.Equal(t, cl.TraceID, sv.TraceID, "one trace: %s / %s", cl, sv)
		for _, s := range []Span{fr, cl, sv} {
			assert.Equal(t, "GET", s.Str("http.request.method"), "%s", s)
			assert.Equal(t, "2", s.Str("network.protocol.version"), "%s", s)
			assert.Equal(t, "http", s.Str("url.scheme"), "%s", s)
			assert.False(t, s.Start.After(s.End), "%s", s)
		}
		n, _ := fr.Int("http.response.status_code")
		assert.Equal(t, int64(200), n, "A answers 200 with B's status in its body: %s", fr)
		assert.Equal(t, "/call", fr.Str("url.path"), "%s", fr)
		for _, s := range []Span{cl, sv} {
			n, _ := s.Int("http.response.status_code")
			assert.Equal(t, r.status, n, "%s", s)
			assert.Equal(t, r.path, s.Str("url.path"), "%s", s)
			assert.Equal(t, "e2e="+id, s.Str("url.query"), "%s", s)
			assert.Equal(t, "127.0.0.1", s.Str("server.address"), "%s", s)
			port, _ := s.Int("server.port")
			assert.Equal(t, int64(b.Port), port, "%s", s)
		}
		assert.Equal(t, "GET", cl.Name, "%s", cl)
		assert.Equal(t, fmt.Sprintf("http://127.0.0.1:%d%s?e2e=%s", b.Port, r.path, id), cl.Str("url.full"), "%s", cl)
		// The client span encloses B's server span.
		assert.False(t, sv.Start.Before(cl.Start) || sv.End.After(cl.End), "server %v-%v outside client %v-%v", sv.Start, sv.End, cl.Start, cl.End)
		if r.status == 404 {
			assert.Equal(t, ptrace.StatusCodeError, cl.Status, "404 is a CLIENT error: %s", cl)
			assert.Equal(t, ptrace.StatusCodeUnset, sv.Status, "404 is no SERVER error: %s", sv)
		} else {
			assert.Equal(t, ptrace.StatusCodeUnset, cl.Status, "%s", cl)
			assert.Equal(t, ptrace.StatusCodeUnset, sv.Status, "%s", sv)
		}
	}
	// An incoming traceparent: A's SERVER span continues that trace, and
	// the CLIENT and B's SERVER spans follow.
	const tpTrace, tpSpan = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	require.Equal(t, "200 HTTP/2.0", call(url.Values{"path": {"/leaf"}, "e2e": {"tp"}}, "traceparent", "00-"+tpTrace+"-"+tpSpan+"-01"))
	tfs := sink.WaitForSpans(t, All(ServerOf(a.Service), WithAttr("url.query", url.Values{"path": {"/leaf"}, "e2e": {"tp"}}.Encode())), 1, spanTimeout)
	assert.Equal(t, tpTrace, tfs[0].TraceID, "traceparent's trace: %s", tfs[0])
	assert.Equal(t, tpSpan, tfs[0].ParentSpanID, "traceparent's span as parent: %s", tfs[0])
	tcs := sink.WaitForSpans(t, func(s Span) bool { return ClientOf(a.Service)(s) && s.ParentSpanID == tfs[0].SpanID }, 1, spanTimeout)
	tss := sink.WaitForSpans(t, func(s Span) bool { return ServerOf(b.Service)(s) && s.ParentSpanID == tcs[0].SpanID }, 1, spanTimeout)
	assert.Equal(t, tpTrace, tcs[0].TraceID, "%s", tcs[0])
	assert.Equal(t, tpTrace, tss[0].TraceID, "%s", tss[0])

	// Not sampled (flags 00): none of the three spans is exported (checked
	// after the last request below).
	require.Equal(t, "200 HTTP/2.0", call(url.Values{"path": {"/leaf"}, "e2e": {"unsampled"}}, "traceparent", "00-"+tpTrace+"-"+tpSpan+"-00"))

	// One more request flushes what the collector may still hold; then
	// every span of either process is an HTTP/2 span of a request sent
	// (no network-level duplicate, no "PRI" preface parsed as a request).
	call(url.Values{"path": {"/leaf"}, "e2e": {"last"}})
	sink.WaitForSpans(t, All(ServerOf(b.Service), WithAttr("url.query", "e2e=last")), 1, spanTimeout)
	for _, s := range sink.Spans() {
		if s.Service() != a.Service && s.Service() != b.Service {
			continue
		}
		assert.Equal(t, "2", s.Str("network.protocol.version"), "a span not from the HTTP/2 probes: %s", s)
	}
	assert.Empty(t, sink.Matching(func(s Span) bool { return strings.Contains(s.Str("url.query"), "e2e=unsampled") }),
		"spans of the unsampled request:\n%s", sink.Dump())
	for i := range reqs {
		id := fmt.Sprint(i)
		n := len(sink.Matching(func(s Span) bool {
			q := s.Str("url.query")
			return q == "e2e="+id || strings.Contains(q, "e2e="+id+"&")
		}))
		assert.Equal(t, 3, n, "spans of request %d (A SERVER, A CLIENT, B SERVER):\n%s", i, sink.Dump())
	}
}
