//go:build linux

package e2e

import (
	"compress/gzip"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

// Span is a flat view of one received span.
type Span struct {
	TraceID       string // hex; "" when all zero
	SpanID        string // hex; "" when all zero
	ParentSpanID  string // hex; "" for a root span
	TraceState    string // the span's W3C tracestate, "" for none
	Flags         uint32 // OTLP span flags: the W3C trace flags in bits 0-7
	Name          string
	Kind          ptrace.SpanKind
	Status        ptrace.StatusCode
	StatusMessage string
	Start, End    time.Time
	Scope         string
	Attributes    map[string]any
	Resource      map[string]any
}

// Service is the span's resource service.name.
func (s Span) Service() string { return str(s.Resource["service.name"]) }

// Str returns the string attribute key, or "" when absent.
func (s Span) Str(key string) string { return str(s.Attributes[key]) }

// Int returns the integer attribute key; ok is false when it is absent or not
// an integer.
func (s Span) Int(key string) (v int64, ok bool) { return toInt(s.Attributes[key]) }

// ResourceInt returns the integer resource attribute key.
func (s Span) ResourceInt(key string) (v int64, ok bool) { return toInt(s.Resource[key]) }

// String is a one-line summary used in failure messages.
func (s Span) String() string {
	keys := make([]string, 0, len(s.Attributes))
	for k := range s.Attributes {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var attrs strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&attrs, " %s=%v", k, s.Attributes[k])
	}
	return fmt.Sprintf("%s %s %q trace=%s span=%s parent=%s status=%s service=%s pid=%v%s",
		s.Kind, s.Status, s.Name, s.TraceID, s.SpanID, s.ParentSpanID, s.Status, s.Service(), s.Resource["process.pid"], attrs.String())
}

func str(v any) string {
	if s, ok := v.(string); ok {
		return s
	}
	return ""
}

func toInt(v any) (int64, bool) {
	switch n := v.(type) {
	case int64:
		return n, true
	case int:
		return int64(n), true
	case float64:
		if n == float64(int64(n)) {
			return int64(n), true
		}
	}
	return 0, false
}

// SpanPred selects spans.
type SpanPred func(Span) bool

// All is the conjunction of preds.
func All(preds ...SpanPred) SpanPred {
	return func(s Span) bool {
		for _, p := range preds {
			if !p(s) {
				return false
			}
		}
		return true
	}
}

// OfKind selects spans of service with kind k.
func OfKind(service string, k ptrace.SpanKind) SpanPred {
	return func(s Span) bool { return s.Kind == k && s.Service() == service }
}

// ServerOf selects SERVER spans of service.
func ServerOf(service string) SpanPred { return OfKind(service, ptrace.SpanKindServer) }

// ClientOf selects CLIENT spans of service.
func ClientOf(service string) SpanPred { return OfKind(service, ptrace.SpanKindClient) }

// WithAttr selects spans whose attribute key equals v (compared as printed).
func WithAttr(key string, v any) SpanPred {
	want := fmt.Sprint(v)
	return func(s Span) bool {
		got, ok := s.Attributes[key]
		return ok && fmt.Sprint(got) == want
	}
}

// WithPath selects spans whose url.path is p.
func WithPath(p string) SpanPred { return WithAttr("url.path", p) }

// Sink is an OTLP/HTTP trace receiver on 127.0.0.1 that keeps every span it
// is sent.
type Sink struct {
	srv  *http.Server
	addr string

	mu       sync.Mutex
	spans    []Span
	requests int
	aborted  int // export requests whose sender closed the connection mid-body
	errs     []string
}

// StartSink starts a sink and stops it when the test ends.
func StartSink(t testing.TB) *Sink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("sink listen: %v", err)
	}
	s := &Sink{addr: ln.Addr().String()}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", s.handleTraces)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = s.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = s.srv.Close()
		<-served
		s.mu.Lock()
		defer s.mu.Unlock()
		if len(s.errs) > 0 {
			t.Errorf("sink rejected %d export requests: %s", len(s.errs), strings.Join(s.errs, "; "))
		}
	})
	return s
}

// Endpoint is the sink's base URL, for an otlp_http exporter's endpoint.
func (s *Sink) Endpoint() string { return "http://" + s.addr }

// Requests is the number of export requests accepted so far.
func (s *Sink) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// Spans returns a copy of every span received so far, in arrival order.
func (s *Sink) Spans() []Span {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Span(nil), s.spans...)
}

// Matching returns the received spans that satisfy pred.
func (s *Sink) Matching(pred SpanPred) []Span {
	var out []Span
	for _, sp := range s.Spans() {
		if pred(sp) {
			out = append(out, sp)
		}
	}
	return out
}

// WaitForSpans waits until at least n received spans satisfy pred and
// returns all of those; after timeout it fails the test, listing what was
// received.
func (s *Sink) WaitForSpans(t testing.TB, pred SpanPred, n int, timeout time.Duration) []Span {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := s.Matching(pred)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d matching spans after %v, want %d; all %d received spans:\n%s",
				len(got), timeout, n, len(s.Spans()), s.Dump())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Dump lists every received span, one per line (the first 300).
func (s *Sink) Dump() string {
	var b strings.Builder
	for i, sp := range s.Spans() {
		if i == 300 {
			b.WriteString("  ...\n")
			break
		}
		b.WriteString("  " + sp.String() + "\n")
	}
	return b.String()
}

func (s *Sink) handleTraces(w http.ResponseWriter, r *http.Request) {
	fail := func(code int, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		s.mu.Lock()
		s.errs = append(s.errs, msg)
		s.mu.Unlock()
		http.Error(w, msg, code)
	}
	var body io.Reader = r.Body
	switch enc := strings.ToLower(r.Header.Get("Content-Encoding")); enc {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			fail(http.StatusBadRequest, "gzip: %v", err)
			return
		}
		defer zr.Close()
		body = zr
	default:
		fail(http.StatusUnsupportedMediaType, "unsupported Content-Encoding %q", enc)
		return
	}
	raw, err := io.ReadAll(body)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		// The sender went away mid-body: a collector shutting down cancels
		// its in-flight export. Nothing was delivered; not a bad request.
		s.mu.Lock()
		s.aborted++
		s.mu.Unlock()
		return
	}
	if err != nil {
		fail(http.StatusBadRequest, "read body: %v", err)
		return
	}
	// An OTLP ExportTraceServiceRequest has the wire form of TracesData
	// (field 1: repeated ResourceSpans), so ptrace's unmarshalers read it.
	// ptraceotlp would say so more directly, but it pulls in gRPC and
	// golang.org/x/net, which this module does not require.
	mediaType, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	isJSON := mediaType == "application/json"
	var td ptrace.Traces
	if isJSON {
		td, err = (&ptrace.JSONUnmarshaler{}).UnmarshalTraces(raw)
	} else {
		td, err = (&ptrace.ProtoUnmarshaler{}).UnmarshalTraces(raw)
	}
	if err != nil {
		fail(http.StatusBadRequest, "unmarshal export request: %v", err)
		return
	}
	spans := flatten(td)
	s.mu.Lock()
	s.spans = append(s.spans, spans...)
	s.requests++
	s.mu.Unlock()

	// An empty ExportTraceServiceResponse: full success.
	var out []byte
	if isJSON {
		w.Header().Set("Content-Type", "application/json")
		out = []byte("{}")
	} else {
		w.Header().Set("Content-Type", "application/x-protobuf")
	}
	_, _ = w.Write(out)
}

// flatten turns pdata traces into Span views.
func flatten(td ptrace.Traces) []Span {
	var out []Span
	for i := 0; i < td.ResourceSpans().Len(); i++ {
		rs := td.ResourceSpans().At(i)
		res := rs.Resource().Attributes().AsRaw()
		for j := 0; j < rs.ScopeSpans().Len(); j++ {
			ss := rs.ScopeSpans().At(j)
			for k := 0; k < ss.Spans().Len(); k++ {
				sp := ss.Spans().At(k)
				out = append(out, Span{
					TraceID:       idHex(sp.TraceID()),
					SpanID:        idHex(sp.SpanID()),
					ParentSpanID:  idHex(sp.ParentSpanID()),
					TraceState:    sp.TraceState().AsRaw(),
					Flags:         sp.Flags(),
					Name:          sp.Name(),
					Kind:          sp.Kind(),
					Status:        sp.Status().Code(),
					StatusMessage: sp.Status().Message(),
					Start:         sp.StartTimestamp().AsTime(),
					End:           sp.EndTimestamp().AsTime(),
					Scope:         ss.Scope().Name(),
					Attributes:    sp.Attributes().AsRaw(),
					Resource:      res,
				})
			}
		}
	}
	return out
}

// idHex is the hex form of a trace or span id, "" when it is empty.
func idHex[T pcommon.TraceID | pcommon.SpanID](id T) string {
	var zero T
	if id == zero {
		return ""
	}
	switch v := any(id).(type) {
	case pcommon.TraceID:
		return hex.EncodeToString(v[:])
	case pcommon.SpanID:
		return hex.EncodeToString(v[:])
	}
	return ""
}
