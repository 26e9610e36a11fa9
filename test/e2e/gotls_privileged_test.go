//go:build linux && privileged

package e2e

import (
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

// TestHTTPSGo: HTTPS spans of Go services on crypto/tls (no OpenSSL: uprobes
// on crypto/tls.(*Conn).Write and Read, entry and RET sites), through the
// built collector. curl with a traceparent calls a Go HTTPS server that calls
// a Go HTTPS downstream: SERVER span child of curl's span, CLIENT span child
// of the SERVER span, url.scheme https everywhere. A stripped build is
// traced too (offsets from the table), so is a Go HTTPS server started after
// the collector (discovery attaches it), and an HTTP/2 (ALPN h2) request gives
// no span while HTTP/1.1 on the same server does.
func TestHTTPSGo(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	tlsEnv := []string{"TLS_CERT=" + cert, "TLS_KEY=" + key}
	ports := FreePorts(t, 5)
	a := StartAppEnv(t, Go, ports[0], "gotls-a", tlsEnv...)
	b := StartAppEnv(t, Go, ports[1], "gotls-b", tlsEnv...)
	s := StartAppEnv(t, GoStripped, ports[2], "gotls-stripped", tlsEnv...)
	h2 := StartAppEnv(t, Go, ports[3], "gotls-h2", append(tlsEnv, "TLS_H2=1")...)
	sink := StartSink(t)
	StartCollector(t, CollectorConfig{
		Instrument:   []Selector{PortsSelector(ports...)},
		SinkEndpoint: sink.Endpoint(),
		EBPF:         map[string]string{"context_propagation": "all"},
	})
	waitHTTPS(t, sink, a)
	https := WithAttr("url.scheme", "https")

	t.Run("chain", func(t *testing.T) {
		tp := "00-" + w3cTrace + "-" + w3cParent + "-01"
		target := httpsURL(b, "/hello?y=2")
		start := time.Now()
		assert.Equal(t, 200, curlStatus(t, httpsURL(a, "/call?url="+url.QueryEscape(target)), "-k", "-H", "traceparent: "+tp))
		inTrace := func(s Span) bool { return s.TraceID == w3cTrace }
		srv := onlySpans(t, sink, All(ServerOf("gotls-a"), WithPath("/call"), inTrace), 1)[0]
		cli := onlySpans(t, sink, All(ClientOf("gotls-a"), inTrace), 1)[0]
		leaf := onlySpans(t, sink, All(ServerOf("gotls-b"), WithPath("/hello"), WithAttr("url.query", "y=2")), 1)[0]
		t.Logf("spans within %v", time.Since(start))
		assertServerSpan(t, a, srv, "GET", "/call", 200)
		assert.Equal(t, "https", srv.Str("url.scheme"), "%s", srv)
		assert.Equal(t, w3cParent, srv.ParentSpanID, "incoming traceparent honoured; %s", srv)
		assert.Equal(t, ptrace.SpanKindClient, cli.Kind)
		assert.Equal(t, srv.SpanID, cli.ParentSpanID, "CLIENT span child of the SERVER span; %s", cli)
		assert.Equal(t, "https", cli.Str("url.scheme"), "%s", cli)
		assert.Equal(t, "https://"+b.Addr()+"/hello?y=2", cli.Str("url.full"), "%s", cli)
		code, ok := cli.Int("http.response.status_code")
		assert.True(t, ok && code == 200, "%s", cli)
		assertServerSpan(t, b, leaf, "GET", "/hello", 200)
		assert.Equal(t, "https", leaf.Str("url.scheme"), "%s", leaf)
		// The TLS write's context went in the packets (context_propagation
		// all: the TCP option carrier, over loopback): the downstream's
		// SERVER span is the child of the CLIENT span.
		assert.Equal(t, w3cTrace, leaf.TraceID, "%s", leaf)
		assert.Equal(t, cli.SpanID, leaf.ParentSpanID, "%s", leaf)
	})

	t.Run("started-after-collector", func(t *testing.T) {
		late := StartAppEnv(t, Go, ports[4], "gotls-late", tlsEnv...)
		waitHTTPS(t, sink, late)
		assert.Equal(t, 200, curlStatus(t, httpsURL(late, "/hello?late=1"), "-k"))
		sp := onlySpans(t, sink, All(ServerOf("gotls-late"), WithPath("/hello"), https), 1)[0]
		assertServerSpan(t, late, sp, "GET", "/hello", 200)
	})

	t.Run("stripped", func(t *testing.T) {
		assert.Equal(t, 404, curlStatus(t, httpsURL(s, "/status/404"), "-k"))
		sp := onlySpans(t, sink, All(ServerOf("gotls-stripped"), WithPath("/status/404"), https), 1)[0]
		assertServerSpan(t, s, sp, "GET", "/status/404", 404)
	})

	t.Run("h2", func(t *testing.T) {
		// HTTP/2 first, then HTTP/1.1 on the same server: only the latter
		// is a span (HTTP/2 frames are counted and left alone).
		for i := 0; i < 3; i++ {
			assert.Equal(t, 200, curlStatus(t, httpsURL(h2, fmt.Sprintf("/hello?h2=%d", i)), "-k", "--http2"))
		}
		assert.Equal(t, 200, curlStatus(t, httpsURL(h2, "/hello?h1=1"), "-k", "--http1.1"))
		sp := onlySpans(t, sink, All(ServerOf("gotls-h2"), https), 1)[0]
		assert.Equal(t, "h1=1", sp.Str("url.query"), "%s", sp)
	})
}
