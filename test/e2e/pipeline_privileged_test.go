//go:build linux && privileged

package e2e

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestPropagationPipelined sends two /call requests pipelined in one write on
// one connection, each with its own incoming traceparent, to a gateway that
// serves them one after the other and calls a backend for each. Every
// downstream call must carry the context of the request it serves: the
// second request's call is made after the first response, from the bytes
// the gateway read together with the first request.
func TestPropagationPipelined(t *testing.T) {
	const backend = "pipe-backend"
	// Java's second call may carry no context (see below), never a wrong
	// one. Node is left out: its one event-loop thread runs both handlers before
	// the first response, and overlapping requests on a loop can take each
	// other's context (README, Limitations).
	gateways := []appSpec{{Python, "py-pipe-gw"}, {Go, "go-pipe-gw"}, {Java, "java-pipe-gw"}}
	f := startFleetEBPF(t, propagationAll, append(gateways, appSpec{Go, backend})...)
	down := f.apps[backend]
	for _, g := range gateways {
		gw := f.apps[g.service]
		t.Run(string(g.lang), func(t *testing.T) {
			const n = 2
			paths := make([]string, n)
			headers := make([][]string, n)
			incoming := make([]string, n)
			tags := make([]string, n)
			for i := range n {
				tags[i] = fmt.Sprintf("pipe-%s-%d", g.lang, i)
				incoming[i] = randomTraceparent()
				u := gw.CallURL(down.URL("/headers?chain="+tags[i]), "chain", tags[i])
				paths[i] = strings.TrimPrefix(u, "http://"+gw.Addr())
				headers[i] = []string{"traceparent: " + incoming[i]}
			}
			resps := PipelineWithHeaders(t, gw.Addr(), paths, headers)
			require.Len(t, resps, n)
			chains := waitChains(t, f.sink, []*App{gw, down}, tags...)
			for i := range n {
				require.Equal(t, 200, resps[i].Status, "request %d: %s", i, resps[i].Body)
				hops := parseHops(t, string(resps[i].Body), 2)
				wantTrace, _ := traceparentIDs(t, incoming[i])
				assert.Equal(t, incoming[i], hops[0].Traceparent, "request %d reached the gateway with its traceparent", i)
				if g.lang == Java && i > 0 && hops[1].Traceparent == "" {
					// com.sun.net.httpserver can run the next buffered
					// request on another pool thread than the one that
					// read it: that call gets no context, never a wrong one.
					t.Logf("request %d: no traceparent downstream (another pool thread)", i)
					continue
				}
				require.NotEmpty(t, hops[1].Traceparent, "request %d: the downstream call carries a traceparent", i)
				gotTrace, _ := traceparentIDs(t, hops[1].Traceparent)
				assert.Equal(t, wantTrace, gotTrace, "request %d: the downstream call carries its own request's trace", i)
				assert.Equal(t, 1, hops[1].TraceparentCount, "request %d: exactly one traceparent downstream", i)
				cs := chains[tags[i]]
				checkChain(t, []*App{gw, down}, cs, hops, incoming[i])
			}
		})
	}
}
