//go:build linux

package httptrace

import (
	"fmt"
	"unsafe"

	"go.opentelemetry.io/collector/pdata/pcommon"

	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
)

// TraceStateEventSize is the size of a tracestate record: the validated
// W3C tracestate of a span's context, sent just before the span's own
// record (EventSize bytes). The two are told apart by their length.
const TraceStateEventSize = int(unsafe.Sizeof(httptraceTracestateEvent{}))

// traceStatesMax bounds the tracestates waiting for their span's record;
// when full they are dropped (a span record that never came).
const traceStatesMax = 4096

// TraceStates pairs tracestate records with the span records that follow
// them. Not safe for concurrent use: the one ring buffer reader owns it.
type TraceStates struct {
	pending map[pcommon.SpanID]string
}

// NewTraceStates returns an empty TraceStates.
func NewTraceStates() *TraceStates {
	return &TraceStates{pending: map[pcommon.SpanID]string{}}
}

// IsTraceState reports whether raw is a tracestate record.
func IsTraceState(raw []byte) bool { return len(raw) == TraceStateEventSize }

// DecodeTraceState decodes a tracestate record: the span it belongs to and
// the tracestate value.
func DecodeTraceState(raw []byte) (pcommon.SpanID, string, error) {
	if len(raw) != TraceStateEventSize {
		return pcommon.SpanID{}, "", fmt.Errorf("decode tracestate event: record of %d bytes, want %d", len(raw), TraceStateEventSize)
	}
	ev := (*httptraceTracestateEvent)(unsafe.Pointer(&raw[0]))
	n := min(int(ev.Len), len(ev.Data))
	return pcommon.SpanID(ev.SpanId), string(unsafe.Slice((*byte)(unsafe.Pointer(&ev.Data[0])), n)), nil
}

// Add keeps the tracestate of a tracestate record for its span.
func (t *TraceStates) Add(raw []byte) error {
	id, ts, err := DecodeTraceState(raw)
	if err != nil {
		return err
	}
	if len(t.pending) >= traceStatesMax {
		clear(t.pending)
	}
	t.pending[id] = ts
	return nil
}

// Apply sets r.TraceState from the tracestate record of r's span, if one
// came, and forgets it.
func (t *TraceStates) Apply(r *spans.Request) {
	if len(t.pending) == 0 {
		r.TraceState = ""
		return
	}
	ts, ok := t.pending[r.SpanID]
	if ok {
		delete(t.pending, r.SpanID)
	}
	r.TraceState = ts
}
