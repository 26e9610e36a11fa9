//go:build linux && privileged

package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// W3C Trace Context Level 1 and 2, end to end: a request with hand-written
// header lines (sent byte for byte on a raw connection) reaches a service,
// which calls a second service in another language; the product's header
// injection is all that carries the context. Each case names what the
// first service's SERVER span continues and what the second one receives.

const (
	w3cTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	w3cParent = "00f067aa0ba902b7"
)

type w3cCase struct {
	name  string
	lines []string // header lines of the incoming request
	// continued: the SERVER span continues w3cTrace/w3cParent; otherwise
	// the trace restarts (a root with a new trace id).
	continued bool
	// flags the downstream receives in the traceparent.
	flags string
	// tracestate the downstream receives and the spans carry, "" for none.
	tracestate string
	// ownTracestate is the tracestate the first service writes itself.
	ownTracestate string
}

func w3cCases() []w3cCase {
	tp := "00-" + w3cTrace + "-" + w3cParent + "-01"
	// 30 members of 16 characters: 509 characters, under the 512 kept.
	var small []string
	for i := range 30 {
		small = append(small, fmt.Sprintf("k%02d=%012d", i, i))
	}
	big := "big=" + strings.Repeat("x", 150) // over 128: dropped first
	return []w3cCase{
		{name: "valid", lines: []string{"traceparent: " + tp}, continued: true, flags: "01"},
		{name: "name-casing", lines: []string{"TraceParent: " + tp}, continued: true, flags: "01"},
		{name: "name-upper", lines: []string{"TRACEPARENT: " + tp}, continued: true, flags: "01"},
		{name: "no-ows", lines: []string{"traceparent:" + tp}, continued: true, flags: "01"},
		{name: "ows-tabs", lines: []string{"traceparent: \t " + tp + " \t"}, continued: true, flags: "01"},
		{name: "future-version", lines: []string{"traceparent: cc-" + w3cTrace + "-" + w3cParent + "-01-what-the-future-holds"}, continued: true, flags: "01"},
		{name: "future-version-bad-tail", lines: []string{"traceparent: cc-" + w3cTrace + "-" + w3cParent + "-01.x"}},
		{name: "version-ff", lines: []string{"traceparent: ff-" + w3cTrace + "-" + w3cParent + "-01"}},
		{name: "v00-extra-field", lines: []string{"traceparent: " + tp + "-00"}},
		{name: "zero-trace-id", lines: []string{"traceparent: 00-" + strings.Repeat("0", 32) + "-" + w3cParent + "-01"}},
		{name: "zero-parent-id", lines: []string{"traceparent: 00-" + w3cTrace + "-" + strings.Repeat("0", 16) + "-01"}},
		{name: "upper-hex", lines: []string{"traceparent: 00-" + strings.ToUpper(w3cTrace) + "-" + w3cParent + "-01"}},
		{name: "short-flags", lines: []string{"traceparent: 00-" + w3cTrace + "-" + w3cParent + "-1"}},
		{name: "duplicate", lines: []string{"traceparent: " + tp, "traceparent: 00-" + strings.Repeat("1", 32) + "-" + strings.Repeat("2", 16) + "-01"}},
		{name: "duplicate-same", lines: []string{"traceparent: " + tp, "traceparent: " + tp}},

		{name: "tracestate", lines: []string{"traceparent: " + tp, "tracestate: vendor=abc,other@sys=x-y_z"}, continued: true, flags: "01", tracestate: "vendor=abc,other@sys=x-y_z"},
		{name: "tracestate-combined", lines: []string{"traceparent: " + tp, "tracestate: a=1", "Tracestate: b=2 , c=3"}, continued: true, flags: "01", tracestate: "a=1,b=2,c=3"},
		{name: "tracestate-truncated", lines: []string{"traceparent: " + tp, "tracestate: " + big + "," + strings.Join(small, ",")}, continued: true, flags: "01", tracestate: strings.Join(small, ",")},
		{name: "tracestate-bad-key", lines: []string{"traceparent: " + tp, "tracestate: A=1,b=2"}, continued: true, flags: "01"},
		{name: "tracestate-bad-value", lines: []string{"traceparent: " + tp, "tracestate: a=x=y"}, continued: true, flags: "01"},
		{name: "tracestate-dup-key", lines: []string{"traceparent: " + tp, "tracestate: a=1,a=2"}, continued: true, flags: "01"},
		{name: "tracestate-bad-traceparent", lines: []string{"traceparent: ff-" + w3cTrace + "-" + w3cParent + "-01", "tracestate: a=1"}},
		{name: "tracestate-own", lines: []string{"traceparent: " + tp, "tracestate: a=1"}, continued: true, flags: "01", tracestate: "app=1", ownTracestate: "app=1"},
	}
}

func TestW3CTraceContext(t *testing.T) {
	pairs := [][2]appSpec{
		{{Python, "w3c-py"}, {Node, "w3c-node"}},
		{{Node, "w3c-node"}, {Python, "w3c-py"}},
	}
	f := startFleetEBPF(t, propagationAll, pairs[0][0], pairs[0][1])
	for _, pair := range pairs {
		up, down := f.apps[pair[0].service], f.apps[pair[1].service]
		t.Run(string(pair[0].lang)+"-to-"+string(pair[1].lang), func(t *testing.T) {
			for _, c := range w3cCases() {
				t.Run(c.name, func(t *testing.T) {
					tag := fmt.Sprintf("w3c-%s-%s", pair[0].lang, c.name)
					params := []string{"chain", tag}
					if c.ownTracestate != "" {
						params = append(params, "tracestate", c.ownTracestate)
					}
					u := up.CallURL(down.URL("/headers?chain="+tag), params...)
					path := strings.TrimPrefix(u, "http://"+up.Addr())
					resp := PipelineWithHeaders(t, up.Addr(), []string{path}, [][]string{c.lines})[0]
					require.Equal(t, 200, resp.Status, "%s", resp.Body)
					hops := parseHops(t, string(resp.Body), 2)
					cs := waitChains(t, f.sink, []*App{up, down}, tag)[tag]
					checkW3C(t, c, cs, hops[1])
				})
			}
		})
	}
}

// checkW3C asserts one case: the SERVER span of the first service, its
// CLIENT span, what the downstream received and its SERVER span.
func checkW3C(t *testing.T, c w3cCase, cs chainSpans, got Hop) {
	t.Helper()
	server, client, next := cs.Servers[0], cs.Clients[0], cs.Servers[1]
	if c.continued {
		assert.Equal(t, w3cTrace, server.TraceID, "SERVER span continues the incoming trace: %s", server)
		assert.Equal(t, w3cParent, server.ParentSpanID, "SERVER span's parent is the incoming one: %s", server)
	} else {
		assert.NotEqual(t, w3cTrace, server.TraceID, "an invalid traceparent restarts the trace: %s", server)
		assert.NotEqual(t, strings.Repeat("1", 32), server.TraceID, "an invalid traceparent restarts the trace: %s", server)
		assert.Empty(t, server.ParentSpanID, "the restarted SERVER span is a root: %s", server)
	}
	assert.Equal(t, server.TraceID, client.TraceID, "%s", client)
	assert.Equal(t, server.SpanID, client.ParentSpanID, "CLIENT span is a child of the SERVER span: %s", client)
	assert.Equal(t, client.SpanID, next.ParentSpanID, "downstream SERVER span is a child of the CLIENT span: %s", next)

	assert.Equal(t, 1, got.TraceparentCount, "the downstream received exactly one traceparent: %v", got.Headers)
	f := strings.Split(got.Traceparent, "-")
	require.Len(t, f, 4, "downstream traceparent %q", got.Traceparent)
	assert.Equal(t, "00", f[0], "sent on as version 00: %q", got.Traceparent)
	assert.Equal(t, client.TraceID, f[1], "%q", got.Traceparent)
	assert.Equal(t, client.SpanID, f[2], "%q", got.Traceparent)
	if c.continued {
		assert.Equal(t, c.flags, f[3], "the parent's flags are kept: %q", got.Traceparent)
	} else {
		assert.Equal(t, "03", f[3], "a generated trace is sampled and has the random flag: %q", got.Traceparent)
	}

	assert.Equal(t, c.tracestate, got.Headers["tracestate"], "the downstream's tracestate (one field): %v", got.Headers)
	want := c.tracestate
	if c.ownTracestate != "" {
		want = "a=1" // the SERVER span keeps the incoming tracestate
	}
	assert.Equal(t, want, server.TraceState, "SERVER span TraceState: %s", server)
	assert.Equal(t, c.tracestate, next.TraceState, "downstream SERVER span TraceState: %s", next)
}
