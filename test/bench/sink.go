//go:build linux

package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/collector/pdata/ptrace"
)

// sink accepts OTLP/HTTP trace exports on 127.0.0.1 and counts their spans
// per process (the process.pid resource attribute). While wrk runs it only
// stores the bodies; take decodes them.
//
// Decoding: gunzip, then ptrace.ProtoUnmarshaler (an
// ExportTraceServiceRequest has the wire form of TracesData). ptraceotlp
// would decode the same bytes but needs golang.org/x/net and golang.org/x/text
// in go.mod, which this module does not require.
type sink struct {
	srv    *http.Server
	addr   string
	served chan struct{}

	mu     sync.Mutex
	bodies []body
	errs   int
}

type body struct {
	gzip bool
	data []byte
}

func startSink(port int) (*sink, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return nil, fmt.Errorf("sink listen: %w", err)
	}
	s := &sink{addr: ln.Addr().String(), served: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", s.handle)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.served)
		_ = s.srv.Serve(ln)
	}()
	return s, nil
}

func (s *sink) endpoint() string { return "http://" + s.addr }

func (s *sink) close() {
	_ = s.srv.Close()
	<-s.served
}

func (s *sink) handle(w http.ResponseWriter, r *http.Request) {
	var b body
	switch enc := strings.ToLower(r.Header.Get("Content-Encoding")); enc {
	case "", "identity":
	case "gzip":
		b.gzip = true
	default:
		s.fail(w, http.StatusUnsupportedMediaType, "unsupported Content-Encoding "+enc)
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		s.fail(w, http.StatusUnsupportedMediaType, "want application/x-protobuf, got "+ct)
		return
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		s.fail(w, http.StatusBadRequest, "read body: "+err.Error())
		return
	}
	b.data = data
	s.mu.Lock()
	s.bodies = append(s.bodies, b)
	s.mu.Unlock()
	// An empty ExportTraceServiceResponse: full success.
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.WriteHeader(http.StatusOK)
}

func (s *sink) fail(w http.ResponseWriter, code int, msg string) {
	s.mu.Lock()
	s.errs++
	s.mu.Unlock()
	http.Error(w, msg, code)
}

// sinkTake is what the sink received since the last take.
type sinkTake struct {
	spans int           // all spans
	byPID map[int64]int // spans per process.pid resource attribute (-1: none)
	errs  int           // rejected or undecodable exports
}

// take decodes and forgets the bodies received so far.
func (s *sink) take() sinkTake {
	s.mu.Lock()
	bodies := s.bodies
	s.bodies = nil
	t := sinkTake{byPID: map[int64]int{}, errs: s.errs}
	s.errs = 0
	s.mu.Unlock()
	var u ptrace.ProtoUnmarshaler
	for _, b := range bodies {
		data := b.data
		if b.gzip {
			zr, err := gzip.NewReader(bytes.NewReader(data))
			if err != nil {
				t.errs++
				continue
			}
			data, err = io.ReadAll(zr)
			if err != nil {
				t.errs++
				continue
			}
		}
		td, err := u.UnmarshalTraces(data)
		if err != nil {
			t.errs++
			continue
		}
		for _, rs := range td.ResourceSpans().All() {
			pid := int64(-1)
			if v, ok := rs.Resource().Attributes().Get("process.pid"); ok {
				pid = v.Int()
			}
			n := 0
			for _, ss := range rs.ScopeSpans().All() {
				n += ss.Spans().Len()
			}
			t.byPID[pid] += n
			t.spans += n
		}
	}
	return t
}

// add merges u into t.
func (t *sinkTake) add(u sinkTake) {
	t.spans += u.spans
	t.errs += u.errs
	if t.byPID == nil {
		t.byPID = map[int64]int{}
	}
	for pid, n := range u.byPID {
		t.byPID[pid] += n
	}
}
