//go:build linux

package httptrace

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"

	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
)

func encodeTraceState(tb testing.TB, span [8]byte, ts string, length int) []byte {
	ev := httptraceTracestateEvent{SpanId: span, Len: uint16(length)}
	for i := 0; i < len(ts) && i < len(ev.Data); i++ {
		ev.Data[i] = int8(ts[i])
	}
	var buf bytes.Buffer
	require.NoError(tb, binary.Write(&buf, binary.LittleEndian, &ev))
	return buf.Bytes()
}

func TestTraceStateRecordSize(t *testing.T) {
	assert.Equal(t, 528, TraceStateEventSize)
	assert.NotEqual(t, EventSize, TraceStateEventSize, "records are told apart by length")
}

func TestDecodeTraceState(t *testing.T) {
	span := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	long := string(bytes.Repeat([]byte("k=v,"), 127)) + "z=abc" // 513 bytes: cut to 512
	for _, tc := range []struct {
		name, ts string
		length   int
		want     string
	}{
		{"one member", "congo=t61rcWkgMzE", 17, "congo=t61rcWkgMzE"},
		{"two members", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", 39, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"},
		{"length bounds the value", "a=1,b=2", 3, "a=1"},
		{"length past the data is clamped", long, 600, long[:512]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := encodeTraceState(t, span, tc.ts, tc.length)
			require.True(t, IsTraceState(raw))
			id, ts, err := DecodeTraceState(raw)
			require.NoError(t, err)
			assert.Equal(t, pcommon.SpanID(span), id)
			assert.Equal(t, tc.want, ts)
		})
	}
	_, _, err := DecodeTraceState(make([]byte, EventSize))
	assert.Error(t, err, "a span record is not a tracestate record")
	assert.False(t, IsTraceState(make([]byte, EventSize)))
}

func TestTraceStatesApply(t *testing.T) {
	ts := NewTraceStates()
	a, b := [8]byte{0xa}, [8]byte{0xb}
	require.NoError(t, ts.Add(encodeTraceState(t, a, "x=1", 3)))
	require.NoError(t, ts.Add(encodeTraceState(t, b, "y=2", 3)))
	assert.Error(t, ts.Add(make([]byte, 10)))

	r := spans.Request{SpanID: pcommon.SpanID(b), TraceState: "stale"}
	ts.Apply(&r)
	assert.Equal(t, "y=2", r.TraceState)
	ts.Apply(&r)
	assert.Equal(t, "", r.TraceState, "used once")

	r = spans.Request{SpanID: pcommon.SpanID{0xc}, TraceState: "stale"}
	ts.Apply(&r)
	assert.Equal(t, "", r.TraceState, "a span without a tracestate record gets none")

	r.SpanID = pcommon.SpanID(a)
	ts.Apply(&r)
	assert.Equal(t, "x=1", r.TraceState)
}

func TestTraceStatesBounded(t *testing.T) {
	ts := NewTraceStates()
	for i := range traceStatesMax + 10 {
		var id [8]byte
		binary.LittleEndian.PutUint64(id[:], uint64(i)+1)
		require.NoError(t, ts.Add(encodeTraceState(t, id, "a=b", 3)))
	}
	assert.LessOrEqual(t, len(ts.pending), traceStatesMax)
}
