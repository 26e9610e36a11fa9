//go:build linux

package e2e

import (
	"bytes"
	"compress/gzip"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

func handMadeTraces() ptrace.Traces {
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", "py-svc")
	rs.Resource().Attributes().PutInt("process.pid", 4242)
	ss := rs.ScopeSpans().AppendEmpty()
	ss.Scope().SetName("ebpf_tracing")

	server := ss.Spans().AppendEmpty()
	server.SetName("GET /call")
	server.SetKind(ptrace.SpanKindServer)
	server.SetTraceID(pcommon.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36})
	server.SetSpanID(pcommon.SpanID{1, 2, 3, 4, 5, 6, 7, 8})
	server.SetParentSpanID(pcommon.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7})
	server.Status().SetCode(ptrace.StatusCodeError)
	server.Attributes().PutStr("http.request.method", "GET")
	server.Attributes().PutStr("url.path", "/call")
	server.Attributes().PutInt("http.response.status_code", 503)

	client := ss.Spans().AppendEmpty()
	client.SetName("GET")
	client.SetKind(ptrace.SpanKindClient)
	client.SetTraceID(server.TraceID())
	client.SetSpanID(pcommon.SpanID{9, 9, 9, 9, 9, 9, 9, 9})
	client.SetParentSpanID(server.SpanID())
	client.Attributes().PutStr("url.full", "http://127.0.0.1:1/hello")
	return td
}

func post(t *testing.T, url, contentType, encoding string, body []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", contentType)
	if encoding != "" {
		req.Header.Set("Content-Encoding", encoding)
	}
	client := NewClient(t)
	resp, err := client.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, contentType, resp.Header.Get("Content-Type"))
}

func TestSinkDecodesExports(t *testing.T) {
	sink := StartSink(t)
	td := handMadeTraces()

	proto, err := (&ptrace.ProtoMarshaler{}).MarshalTraces(td)
	require.NoError(t, err)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, err = zw.Write(proto)
	require.NoError(t, err)
	require.NoError(t, zw.Close())
	js, err := (&ptrace.JSONMarshaler{}).MarshalTraces(td)
	require.NoError(t, err)

	post(t, sink.Endpoint()+"/v1/traces", "application/x-protobuf", "", proto)
	post(t, sink.Endpoint()+"/v1/traces", "application/x-protobuf", "gzip", gz.Bytes())
	post(t, sink.Endpoint()+"/v1/traces", "application/json", "", js)

	spans := sink.WaitForSpans(t, ServerOf("py-svc"), 3, 5*time.Second)
	assert.Equal(t, 3, sink.Requests())
	assert.Len(t, sink.Spans(), 6)
	for _, s := range spans {
		assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", s.TraceID)
		assert.Equal(t, "0102030405060708", s.SpanID)
		assert.Equal(t, "00f067aa0ba902b7", s.ParentSpanID)
		assert.Equal(t, "GET /call", s.Name)
		assert.Equal(t, ptrace.StatusCodeError, s.Status)
		assert.Equal(t, "GET", s.Str("http.request.method"))
		code, ok := s.Int("http.response.status_code")
		assert.True(t, ok)
		assert.EqualValues(t, 503, code)
		pid, ok := s.ResourceInt("process.pid")
		assert.True(t, ok)
		assert.EqualValues(t, 4242, pid)
		assert.Equal(t, "ebpf_tracing", s.Scope)
	}
	clients := sink.Matching(All(ClientOf("py-svc"), WithAttr("url.full", "http://127.0.0.1:1/hello")))
	require.Len(t, clients, 3)
	assert.Equal(t, "0102030405060708", clients[0].ParentSpanID)
	assert.Empty(t, sink.Matching(ServerOf("node-svc")))
}

func TestSinkRejectsGarbage(t *testing.T) {
	sink := StartSink(t)
	client := NewClient(t)
	resp, err := client.Post(sink.Endpoint()+"/v1/traces", "application/x-protobuf", bytes.NewReader([]byte{0xff, 0xff, 0xff}))
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
	assert.Equal(t, 0, sink.Requests())
	// The sink reports rejected exports at cleanup; this test meant to send
	// one, so clear it.
	sink.mu.Lock()
	sink.errs = nil
	sink.mu.Unlock()
}
