package spans

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/ebpftracing/ebpftracingreceiver/internal/procres"
	"github.com/ebpftracing/ebpftracingreceiver/internal/routes"
)

var (
	t0      = time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	traceID = pcommon.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	spanID  = pcommon.SpanID{0xa, 0xb, 0xc, 0xd, 1, 2, 3, 4}
	parent  = pcommon.SpanID{9, 8, 7, 6, 5, 4, 3, 2}
	proc    = Process{PID: 42, ServiceName: "checkout", ExeName: "checkoutd"}
)

// server returns a plain IPv4 server request; tests change what they need.
func server() Request {
	return Request{
		Kind:       KindServer,
		Start:      t0,
		End:        t0.Add(1500 * time.Microsecond),
		PID:        42,
		TID:        43,
		Method:     "GET",
		Path:       "/users/7",
		Status:     200,
		Local:      netip.MustParseAddrPort("10.0.0.1:8080"),
		Peer:       netip.MustParseAddrPort("10.0.0.2:51000"),
		ProtoMinor: 1,
		TraceID:    traceID,
		SpanID:     spanID,
		TraceFlags: 0x01,
	}
}

func client() Request {
	r := server()
	r.Kind = KindClient
	r.Local = netip.MustParseAddrPort("10.0.0.2:51000")
	r.Peer = netip.MustParseAddrPort("10.0.0.1:8080")
	r.ParentSpanID = parent
	return r
}

func with(r Request, f func(*Request)) Request { f(&r); return r }

// merge returns base with over applied; a nil value in over deletes the key.
func merge(base, over map[string]any) map[string]any {
	out := maps.Clone(base)
	for k, v := range over {
		if v == nil {
			delete(out, k)
			continue
		}
		out[k] = v
	}
	return out
}

var (
	serverAttrs = map[string]any{
		"http.request.method":       "GET",
		"url.path":                  "/users/7",
		"url.scheme":                "http",
		"http.response.status_code": int64(200),
		"network.protocol.version":  "1.1",
		"network.peer.address":      "10.0.0.2",
		"network.peer.port":         int64(51000),
		"server.address":            "10.0.0.1",
		"server.port":               int64(8080),
		"client.address":            "10.0.0.2",
	}
	clientAttrs = map[string]any{
		"http.request.method":       "GET",
		"url.path":                  "/users/7",
		"url.scheme":                "http",
		"url.full":                  "http://10.0.0.1:8080/users/7",
		"http.response.status_code": int64(200),
		"network.protocol.version":  "1.1",
		"network.peer.address":      "10.0.0.1",
		"network.peer.port":         int64(8080),
		"server.address":            "10.0.0.1",
		"server.port":               int64(8080),
	}
)

func TestAppendSpan(t *testing.T) {
	tests := []struct {
		name       string
		req        Request
		wantName   string
		wantKind   ptrace.SpanKind
		wantStatus ptrace.StatusCode
		wantFlags  uint32
		wantAttrs  map[string]any
	}{
		{
			name:      "server ipv4 no host header",
			req:       server(),
			wantName:  "GET",
			wantKind:  ptrace.SpanKindServer,
			wantFlags: 0x101,
			wantAttrs: serverAttrs,
		},
		{
			name: "server host header with port",
			req: with(server(), func(r *Request) {
				r.Host = "api.example.com:9000"
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{
				"server.address": "api.example.com",
				"server.port":    int64(9000),
			}),
		},
		{
			name: "server host header without port takes local port",
			req: with(server(), func(r *Request) {
				r.Host = "api.example.com"
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{
				"server.address": "api.example.com",
				"server.port":    int64(8080),
			}),
		},
		{
			name: "server ipv6 literal host header",
			req: with(server(), func(r *Request) {
				r.Host = "[::1]:8080"
				r.Local = netip.MustParseAddrPort("[::1]:8080")
				r.Peer = netip.MustParseAddrPort("[::1]:40000")
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{
				"server.address":       "::1",
				"server.port":          int64(8080),
				"client.address":       "::1",
				"network.peer.address": "::1",
				"network.peer.port":    int64(40000),
			}),
		},
		{
			name: "server ipv6 literal host header without port",
			req: with(server(), func(r *Request) {
				r.Host = "[2001:db8::1]"
				r.Local = netip.MustParseAddrPort("[2001:db8::1]:80")
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{
				"server.address": "2001:db8::1",
				"server.port":    int64(80),
			}),
		},
		{
			name: "server ipv6 sockets no host header",
			req: with(server(), func(r *Request) {
				r.Local = netip.MustParseAddrPort("[2001:db8::1]:8443")
				r.Peer = netip.MustParseAddrPort("[2001:db8::2]:50000")
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{
				"server.address":       "2001:db8::1",
				"server.port":          int64(8443),
				"client.address":       "2001:db8::2",
				"network.peer.address": "2001:db8::2",
				"network.peer.port":    int64(50000),
			}),
		},
		{
			name: "server ipv4-mapped sockets are unmapped",
			req: with(server(), func(r *Request) {
				r.Local = netip.MustParseAddrPort("[::ffff:127.0.0.1]:8080")
				r.Peer = netip.MustParseAddrPort("[::ffff:127.0.0.1]:40000")
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{
				"server.address":       "127.0.0.1",
				"client.address":       "127.0.0.1",
				"network.peer.address": "127.0.0.1",
				"network.peer.port":    int64(40000),
			}),
		},
		{
			name: "query is split off without question mark",
			req: with(server(), func(r *Request) {
				r.Path = "/search?q=ebpf&page=2"
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{
				"url.path":  "/search",
				"url.query": "q=ebpf&page=2",
			}),
		},
		{
			name: "empty query is not recorded",
			req: with(server(), func(r *Request) {
				r.Path = "/search?"
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{"url.path": "/search"}),
		},
		{
			name: "sensitive query values are redacted",
			req: with(server(), func(r *Request) {
				r.Path = "/obj?X-Goog-Signature=abc&v=1&sig=zz"
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{
				"url.path":  "/obj",
				"url.query": "X-Goog-Signature=REDACTED&v=1&sig=REDACTED",
			}),
		},
		{
			name: "unknown method",
			req: with(server(), func(r *Request) {
				r.Method = "PROPFIND"
			}),
			wantName: "HTTP", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{
				"http.request.method":          "_OTHER",
				"http.request.method_original": "PROPFIND",
			}),
		},
		{
			name: "method is case sensitive",
			req: with(server(), func(r *Request) {
				r.Method = "get"
			}),
			wantName: "HTTP", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{
				"http.request.method":          "_OTHER",
				"http.request.method_original": "get",
			}),
		},
		{
			name: "every known method names the span",
			req: with(server(), func(r *Request) {
				r.Method = "PATCH"
			}),
			wantName: "PATCH", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{"http.request.method": "PATCH"}),
		},
		{
			name: "http/1.0",
			req: with(server(), func(r *Request) {
				r.ProtoMinor = 0
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{"network.protocol.version": "1.0"}),
		},
		{
			name: "server 404 stays unset",
			req: with(server(), func(r *Request) {
				r.Status = 404
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{"http.response.status_code": int64(404)}),
		},
		{
			name: "server 500 is error",
			req: with(server(), func(r *Request) {
				r.Status = 500
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantStatus: ptrace.StatusCodeError,
			wantAttrs: merge(serverAttrs, map[string]any{
				"http.response.status_code": int64(500),
				"error.type":                "500",
			}),
		},
		{
			name: "server status unknown",
			req: with(server(), func(r *Request) {
				r.Status = 0
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{"http.response.status_code": nil}),
		},
		{
			name: "server child of remote parent, not sampled",
			req: with(server(), func(r *Request) {
				r.ParentSpanID = parent
				r.TraceFlags = 0
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x300,
			wantAttrs: serverAttrs,
		},
		{
			name: "server absolute-form target",
			req: with(server(), func(r *Request) {
				r.Path = "http://user:pw@proxy.example:3128/a?b=c"
			}),
			wantName: "GET", wantKind: ptrace.SpanKindServer, wantFlags: 0x101,
			wantAttrs: merge(serverAttrs, map[string]any{
				"url.path":       "/a",
				"url.query":      "b=c",
				"server.address": "proxy.example",
				"server.port":    int64(3128),
			}),
		},
		{
			name:      "client ipv4 no host header",
			req:       client(),
			wantName:  "GET",
			wantKind:  ptrace.SpanKindClient,
			wantFlags: 0x01,
			wantAttrs: clientAttrs,
		},
		{
			name: "client root span",
			req: with(client(), func(r *Request) {
				r.ParentSpanID = pcommon.SpanID{}
			}),
			wantName: "GET", wantKind: ptrace.SpanKindClient, wantFlags: 0x101,
			wantAttrs: clientAttrs,
		},
		{
			name: "client host header with port and query",
			req: with(client(), func(r *Request) {
				r.Host = "api.example.com:9000"
				r.Path = "/v1/items?limit=5"
			}),
			wantName: "GET", wantKind: ptrace.SpanKindClient, wantFlags: 0x01,
			wantAttrs: merge(clientAttrs, map[string]any{
				"url.path":       "/v1/items",
				"url.query":      "limit=5",
				"url.full":       "http://api.example.com:9000/v1/items?limit=5",
				"server.address": "api.example.com",
				"server.port":    int64(9000),
			}),
		},
		{
			name: "client host header without port uses scheme default",
			req: with(client(), func(r *Request) {
				r.Host = "api.example.com"
			}),
			wantName: "GET", wantKind: ptrace.SpanKindClient, wantFlags: 0x01,
			wantAttrs: merge(clientAttrs, map[string]any{
				"url.full":       "http://api.example.com/users/7",
				"server.address": "api.example.com",
				"server.port":    int64(80),
			}),
		},
		{
			name: "client ipv6 literal host header",
			req: with(client(), func(r *Request) {
				r.Host = "[::1]:8080"
				r.Peer = netip.MustParseAddrPort("[::1]:8080")
			}),
			wantName: "GET", wantKind: ptrace.SpanKindClient, wantFlags: 0x01,
			wantAttrs: merge(clientAttrs, map[string]any{
				"url.full":             "http://[::1]:8080/users/7",
				"server.address":       "::1",
				"network.peer.address": "::1",
			}),
		},
		{
			name: "client ipv6 peer no host header is bracketed",
			req: with(client(), func(r *Request) {
				r.Peer = netip.MustParseAddrPort("[2001:db8::5]:8080")
				r.Path = "/x?y=1&Signature=s3cr3t"
			}),
			wantName: "GET", wantKind: ptrace.SpanKindClient, wantFlags: 0x01,
			wantAttrs: merge(clientAttrs, map[string]any{
				"url.path":             "/x",
				"url.query":            "y=1&Signature=REDACTED",
				"url.full":             "http://[2001:db8::5]:8080/x?y=1&Signature=REDACTED",
				"server.address":       "2001:db8::5",
				"network.peer.address": "2001:db8::5",
			}),
		},
		{
			name: "client ipv4-mapped peer is unmapped",
			req: with(client(), func(r *Request) {
				r.Peer = netip.MustParseAddrPort("[::ffff:127.0.0.1]:9090")
			}),
			wantName: "GET", wantKind: ptrace.SpanKindClient, wantFlags: 0x01,
			wantAttrs: merge(clientAttrs, map[string]any{
				"url.full":             "http://127.0.0.1:9090/users/7",
				"server.address":       "127.0.0.1",
				"server.port":          int64(9090),
				"network.peer.address": "127.0.0.1",
				"network.peer.port":    int64(9090),
			}),
		},
		{
			name: "client 404 is error",
			req: with(client(), func(r *Request) {
				r.Status = 404
			}),
			wantName: "GET", wantKind: ptrace.SpanKindClient, wantFlags: 0x01,
			wantStatus: ptrace.StatusCodeError,
			wantAttrs: merge(clientAttrs, map[string]any{
				"http.response.status_code": int64(404),
				"error.type":                "404",
			}),
		},
		{
			name: "client 399 stays unset",
			req: with(client(), func(r *Request) {
				r.Status = 399
			}),
			wantName: "GET", wantKind: ptrace.SpanKindClient, wantFlags: 0x01,
			wantAttrs: merge(clientAttrs, map[string]any{"http.response.status_code": int64(399)}),
		},
		{
			name: "client status unknown",
			req: with(client(), func(r *Request) {
				r.Status = 0
			}),
			wantName: "GET", wantKind: ptrace.SpanKindClient, wantFlags: 0x01,
			wantAttrs: merge(clientAttrs, map[string]any{"http.response.status_code": nil}),
		},
		{
			name: "client unknown method",
			req: with(client(), func(r *Request) {
				r.Method = "PURGE"
			}),
			wantName: "HTTP", wantKind: ptrace.SpanKindClient, wantFlags: 0x01,
			wantAttrs: merge(clientAttrs, map[string]any{
				"http.request.method":          "_OTHER",
				"http.request.method_original": "PURGE",
			}),
		},
		{
			name: "client absolute-form target through a proxy",
			req: with(client(), func(r *Request) {
				r.Path = "http://user:pw@origin.example/p?q=1"
				r.Host = "origin.example"
			}),
			wantName: "GET", wantKind: ptrace.SpanKindClient, wantFlags: 0x01,
			wantAttrs: merge(clientAttrs, map[string]any{
				"url.path":       "/p",
				"url.query":      "q=1",
				"url.full":       "http://REDACTED:REDACTED@origin.example/p?q=1",
				"server.address": "origin.example",
				"server.port":    int64(80),
			}),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBuilder("node-1", "v0.1.0")
			req := tt.req
			b.Append(&req, proc)
			if b.Len() != 1 {
				t.Fatalf("Len() = %d, want 1", b.Len())
			}
			td := b.Flush()
			if got := td.SpanCount(); got != 1 {
				t.Fatalf("SpanCount() = %d, want 1", got)
			}
			span := td.ResourceSpans().At(0).ScopeSpans().At(0).Spans().At(0)

			if got := span.Name(); got != tt.wantName {
				t.Errorf("Name() = %q, want %q", got, tt.wantName)
			}
			if got := span.Kind(); got != tt.wantKind {
				t.Errorf("Kind() = %v, want %v", got, tt.wantKind)
			}
			if got := span.Status().Code(); got != tt.wantStatus {
				t.Errorf("Status().Code() = %v, want %v", got, tt.wantStatus)
			}
			if got := span.Status().Message(); got != "" {
				t.Errorf("Status().Message() = %q, want empty", got)
			}
			if got := span.Flags(); got != tt.wantFlags {
				t.Errorf("Flags() = %#x, want %#x", got, tt.wantFlags)
			}
			if got := span.TraceID(); got != req.TraceID {
				t.Errorf("TraceID() = %v, want %v", got, req.TraceID)
			}
			if got := span.SpanID(); got != req.SpanID {
				t.Errorf("SpanID() = %v, want %v", got, req.SpanID)
			}
			if got := span.ParentSpanID(); got != req.ParentSpanID {
				t.Errorf("ParentSpanID() = %v, want %v", got, req.ParentSpanID)
			}
			if got := span.TraceState().AsRaw(); got != "" {
				t.Errorf("TraceState() = %q, want empty", got)
			}
			if got, want := span.StartTimestamp().AsTime(), req.Start; !got.Equal(want) {
				t.Errorf("StartTimestamp() = %v, want %v", got, want)
			}
			if got, want := span.EndTimestamp().AsTime(), req.End; !got.Equal(want) {
				t.Errorf("EndTimestamp() = %v, want %v", got, want)
			}
			assertAttrs(t, "span", span.Attributes(), tt.wantAttrs)
		})
	}
}

func assertAttrs(t *testing.T, what string, got pcommon.Map, want map[string]any) {
	t.Helper()
	raw := got.AsRaw()
	if reflect.DeepEqual(raw, want) {
		return
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := raw[k]; !ok {
			t.Errorf("%s attribute %s missing, want %#v", what, k, want[k])
		} else if !reflect.DeepEqual(g, want[k]) {
			t.Errorf("%s attribute %s = %#v, want %#v", what, k, g, want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		if _, ok := want[k]; !ok {
			t.Errorf("%s attribute %s = %#v not expected", what, k, raw[k])
		}
	}
}

func TestSplitHost(t *testing.T) {
	tests := []struct {
		in      string
		host    string
		port    uint16
		hasPort bool
	}{
		{"", "", 0, false},
		{"example.com", "example.com", 0, false},
		{"example.com:8080", "example.com", 8080, true},
		{"example.com:", "example.com", 0, false},
		{"example.com:0", "example.com", 0, false},
		{"example.com:65536", "example.com", 0, false},
		{"example.com:http", "example.com", 0, false},
		{"[::1]:8080", "::1", 8080, true},
		{"[::1]", "::1", 0, false},
		{"[::1", "[::1", 0, false},
		{"::1", "::1", 0, false},
		{"10.1.2.3:443", "10.1.2.3", 443, true},
	}
	for _, tt := range tests {
		host, port, hasPort := splitHost(tt.in)
		if host != tt.host || port != tt.port || hasPort != tt.hasPort {
			t.Errorf("splitHost(%q) = %q, %d, %v; want %q, %d, %v",
				tt.in, host, port, hasPort, tt.host, tt.port, tt.hasPort)
		}
	}
}

func TestResources(t *testing.T) {
	b := NewBuilder("node-1", "v0.1.0")
	a, c := server(), client()
	other := Process{PID: 7, ExeName: "curl"}
	b.Append(&a, proc)
	b.Append(&c, other)
	b.Append(&a, proc)
	if b.Len() != 3 {
		t.Fatalf("Len() = %d, want 3", b.Len())
	}

	td := b.Flush()
	if got := td.ResourceSpans().Len(); got != 2 {
		t.Fatalf("ResourceSpans().Len() = %d, want 2", got)
	}
	want := []struct {
		attrs map[string]any
		spans int
	}{
		{map[string]any{
			"service.name":            "checkout",
			"process.pid":             int64(42),
			"process.executable.name": "checkoutd",
			"host.name":               "node-1",
		}, 2},
		{map[string]any{
			"service.name":            "unknown_service:curl",
			"process.pid":             int64(7),
			"process.executable.name": "curl",
			"host.name":               "node-1",
		}, 1},
	}
	for i, w := range want {
		rs := td.ResourceSpans().At(i)
		assertAttrs(t, "resource", rs.Resource().Attributes(), w.attrs)
		if got := rs.ScopeSpans().Len(); got != 1 {
			t.Fatalf("resource %d: ScopeSpans().Len() = %d, want 1", i, got)
		}
		ss := rs.ScopeSpans().At(0)
		if got := ss.Scope().Name(); got != ScopeName {
			t.Errorf("resource %d: scope name = %q, want %q", i, got, ScopeName)
		}
		if got := ss.Scope().Version(); got != "v0.1.0" {
			t.Errorf("resource %d: scope version = %q, want v0.1.0", i, got)
		}
		if got := ss.Spans().Len(); got != w.spans {
			t.Errorf("resource %d: %d spans, want %d", i, got, w.spans)
		}
	}
}

func TestFlushResets(t *testing.T) {
	b := NewBuilder("node-1", "v0.1.0")
	r := server()
	b.Append(&r, proc)
	first := b.Flush()

	if b.Len() != 0 {
		t.Fatalf("Len() after Flush = %d, want 0", b.Len())
	}
	if got := b.Flush().SpanCount(); got != 0 {
		t.Fatalf("empty Flush has %d spans, want 0", got)
	}

	b.Append(&r, proc)
	second := b.Flush()
	if got := second.ResourceSpans().Len(); got != 1 {
		t.Fatalf("second batch has %d ResourceSpans, want 1", got)
	}
	if got := second.SpanCount(); got != 1 {
		t.Fatalf("second batch has %d spans, want 1", got)
	}
	// The first batch belongs to the caller and must not have changed.
	if got := first.SpanCount(); got != 1 {
		t.Fatalf("first batch has %d spans after reuse, want 1", got)
	}
}

func BenchmarkAppend(b *testing.B) {
	reqs := []Request{
		server(),
		with(server(), func(r *Request) { r.Path = "/search?q=ebpf&page=2"; r.Host = "api.example.com:8080" }),
		client(),
		with(client(), func(r *Request) { r.Status = 503; r.Host = "backend:9000" }),
	}
	procs := []Process{proc, {PID: 7, ServiceName: "curl", ExeName: "curl"}}
	bld := NewBuilder("node-1", "v0.1.0")
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		bld.Append(&reqs[i%len(reqs)], procs[i%len(procs)])
		i++
		if bld.Len() == 512 {
			bld.Flush()
		}
	}
}

func TestTraceState(t *testing.T) {
	b := NewBuilder("host", "v1")
	srv := with(server(), func(r *Request) { r.TraceState = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE" })
	b.Append(&srv, proc)
	plain := server()
	b.Append(&plain, proc)
	ss := b.Flush().ResourceSpans().At(0).ScopeSpans().At(0).Spans()
	if ss.Len() != 2 {
		t.Fatalf("%d spans, want 2", ss.Len())
	}
	if got := ss.At(0).TraceState().AsRaw(); got != srv.TraceState {
		t.Errorf("trace state %q, want %q", got, srv.TraceState)
	}
	if got := ss.At(1).TraceState().AsRaw(); got != "" {
		t.Errorf("span without a tracestate got %q", got)
	}
}

func TestResourceFromProcres(t *testing.T) {
	b := NewBuilder("node-1", "v0.1.0")
	r := server()
	info := procres.Info{
		ServiceName: "checkout", ServiceInstanceID: "5b8c0e0c-1d1a-5f7e-9a55-2a4d0f8f6c11",
		ExePath: "/usr/bin/python3.11", ExeName: "python3.11",
		CommandArgs: []string{"python3", "-m", "http.server"},
		Runtime:     procres.Runtime{Name: "cpython", Version: "3.11", Language: "python"},
		ContainerID: "4f797c539e6c745de61a93ca3ff892358ecbcaccd8414d5db545c38428142970",
		PodUID:      "ac04f3f2-1f2c-11e9-b40e-12cd1d9a0a2b",
		Attributes:  []procres.Attribute{{Key: "deployment.environment.name", Value: "prod"}, {Key: "host.name", Value: "override"}},
	}
	b.Append(&r, ProcessOf(42, &info))
	res := b.Flush().ResourceSpans().At(0).Resource().Attributes()
	assertAttrs(t, "resource", res, map[string]any{
		"service.name":                "checkout",
		"service.instance.id":         info.ServiceInstanceID,
		"process.pid":                 int64(42),
		"process.executable.name":     "python3.11",
		"process.executable.path":     "/usr/bin/python3.11",
		"process.command_args":        []any{"python3", "-m", "http.server"},
		"process.runtime.name":        "cpython",
		"process.runtime.version":     "3.11",
		"telemetry.sdk.language":      "python",
		"host.name":                   "override",
		"container.id":                info.ContainerID,
		"k8s.pod.uid":                 info.PodUID,
		"deployment.environment.name": "prod",
	})
}

func TestIgnoredPatterns(t *testing.T) {
	m, err := routes.New(routes.Options{Ignored: []string{"/health", "/metrics"}})
	if err != nil {
		t.Fatal(err)
	}
	b := NewBuilder("h", "v")
	b.SetRoutes(m)
	reqs := []Request{
		with(server(), func(r *Request) { r.Path = "/health" }),
		with(server(), func(r *Request) { r.Path = "/metrics?x=1" }),
		server(), // /users/7
		with(client(), func(r *Request) { r.Path = "http://db:8080/health" }),
		client(),
	}
	for i := range reqs {
		b.Append(&reqs[i], proc)
	}
	if n := b.TakeIgnored(); n != 3 {
		t.Errorf("ignored = %d, want 3", n)
	}
	if n := b.TakeIgnored(); n != 0 {
		t.Errorf("ignored after take = %d", n)
	}
	if b.Len() != 2 {
		t.Fatalf("Len = %d, want 2", b.Len())
	}
	ss := b.Flush().ResourceSpans().At(0).ScopeSpans().At(0).Spans()
	for i := 0; i < ss.Len(); i++ {
		if p, _ := ss.At(i).Attributes().Get("url.path"); p.Str() == "/health" || p.Str() == "/metrics" {
			t.Errorf("span %d with ignored path %s exported", i, p.Str())
		}
	}
}

func TestRoutes(t *testing.T) {
	m, err := routes.New(routes.Options{Patterns: []string{"/users/{id}"}})
	if err != nil {
		t.Fatal(err)
	}
	b := NewBuilder("h", "v")
	b.SetRoutes(m)
	reqs := []Request{
		server(), // /users/7
		with(server(), func(r *Request) { r.Path = "/orders/123?x=1" }),
		with(server(), func(r *Request) { r.Path = "/users/8"; r.Method = "FOO" }),
		with(server(), func(r *Request) { r.Path = "*"; r.Method = "OPTIONS" }),
		client(), // /users/7
		with(client(), func(r *Request) { r.Path = "/orders/123" }),
		with(client(), func(r *Request) { r.Path = "http://10.0.0.1:8080/users/9?q=1"; r.Method = "DELETE" }),
	}
	for i := range reqs {
		b.Append(&reqs[i], proc)
	}
	if n := b.TakeUnmatched(); n != 1 {
		t.Errorf("unmatched = %d, want 1 (the SERVER span of /orders/123; CLIENT spans are not counted)", n)
	}
	if n := b.TakeUnmatched(); n != 0 {
		t.Errorf("unmatched after take = %d", n)
	}
	ss := b.Flush().ResourceSpans().At(0).ScopeSpans().At(0).Spans()
	want := []struct{ name, route string }{
		{"GET /users/{id}", "/users/{id}"},
		{"GET /orders/*", "/orders/*"},
		{"HTTP /users/{id}", "/users/{id}"},
		{"OPTIONS", ""},
		// CLIENT spans: url.template (not http.route) from a user
		// pattern only, never from the heuristic.
		{"GET /users/{id}", "/users/{id}"},
		{"GET", ""},
		{"DELETE /users/{id}", "/users/{id}"},
	}
	if ss.Len() != len(want) {
		t.Fatalf("%d spans, want %d", ss.Len(), len(want))
	}
	for i, w := range want {
		s := ss.At(i)
		if s.Name() != w.name {
			t.Errorf("span %d name %q, want %q", i, s.Name(), w.name)
		}
		key, other := "http.route", "url.template"
		if s.Kind() == ptrace.SpanKindClient {
			key, other = other, key
		}
		got, ok := s.Attributes().Get(key)
		if (w.route == "") == ok || (ok && got.Str() != w.route) {
			t.Errorf("span %d %s %v %q, want %q", i, key, ok, got.Str(), w.route)
		}
		if _, ok := s.Attributes().Get(other); ok {
			t.Errorf("span %d (%s) has %s", i, s.Kind(), other)
		}
	}
}

func TestMethodIndex(t *testing.T) {
	for i, m := range routes.Methods[:len(routes.Methods)-1] {
		if methodIndex(m) != i {
			t.Errorf("methodIndex(%q) = %d, want %d", m, methodIndex(m), i)
		}
	}
	if methodIndex("get") != len(routes.Methods)-1 || methodIndex("") != len(routes.Methods)-1 {
		t.Error("unknown methods must map to HTTP")
	}
}

func BenchmarkAppendRoutes(b *testing.B) {
	reqs := []Request{
		server(),
		with(server(), func(r *Request) { r.Path = "/search?q=ebpf&page=2"; r.Host = "api.example.com:8080" }),
		client(),
		with(server(), func(r *Request) { r.Path = "/orders/550e8400-e29b-41d4-a716-446655440000" }),
	}
	m, _ := routes.New(routes.Options{Patterns: []string{"/users/{id}"}})
	bld := NewBuilder("node-1", "v0.1.0")
	bld.SetRoutes(m)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		bld.Append(&reqs[i%len(reqs)], proc)
		i++
		if bld.Len() == 512 {
			bld.Flush()
		}
	}
}

// TestAppendHTTP2: a request of the Go HTTP/2 probes (HTTP2 set) has
// network.protocol.version "2" whatever ProtoMinor says, and otherwise the
// HTTP/1 span's attributes.
func TestAppendHTTP2(t *testing.T) {
	b := NewBuilder("host", "v")
	for _, r := range []Request{with(server(), func(r *Request) { r.HTTP2 = true; r.ProtoMinor = 0 }), with(client(), func(r *Request) { r.HTTP2 = true })} {
		b.Append(&r, proc)
	}
	ss := b.Flush().ResourceSpans().At(0).ScopeSpans().At(0).Spans()
	if ss.Len() != 2 {
		t.Fatalf("%d spans", ss.Len())
	}
	for i := range ss.Len() {
		a := ss.At(i).Attributes()
		v, _ := a.Get("network.protocol.version")
		m, _ := a.Get("http.request.method")
		p, _ := a.Get("url.path")
		if v.Str() != "2" || m.Str() != "GET" || p.Str() != "/users/7" {
			t.Errorf("span %d: %v", i, a.AsRaw())
		}
	}
}
