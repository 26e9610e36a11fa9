//go:build linux && privileged

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of Go goroutine tracking: a Go service's outgoing requests get the
// context of the request they serve whichever goroutine makes them, with no
// uprobe on the server's path, also when the binary is stripped.

// uprobeRuns sums the run counts of the loaded goruntime programs (the only
// uprobes): with kernel.bpf_stats_enabled on, one run per uprobe hit.
func uprobeRuns(t *testing.T) uint64 {
	t.Helper()
	var total uint64
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := p.Info()
		if err != nil || !strings.HasPrefix(info.Name, "goruntime_") {
			p.Close()
			continue
		}
		if st, err := p.Stats(); err == nil {
			total += st.RunCount
		}
		p.Close()
	}
	return total
}

// enableStats turns kernel.bpf_stats_enabled on for the test.
func enableStats(t *testing.T) {
	t.Helper()
	st, err := ebpf.EnableStats(0) // BPF_STATS_RUN_TIME
	require.NoError(t, err)
	t.Cleanup(func() { st.Close() })
}

// TestGoServerPaysNoUprobe: a Go server traced with header propagation on
// serves keep-alive requests without a single uprobe hit; its pooled client
// requests cost at most one hit each (plus one per new connection).
func TestGoServerPaysNoUprobe(t *testing.T) {
	f := startFleetEBPF(t, propagationAll, appSpec{Go, "go-svc"}, appSpec{Python, "py-svc"})
	goApp, py := f.apps["go-svc"], f.apps["py-svc"]
	enableStats(t)
	client := NewClient(t)
	get := func(u string) {
		resp, err := client.Get(u)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, u)
	}
	before := uprobeRuns(t)
	const n = 200
	for i := 0; i < n; i++ {
		get(goApp.URL(fmt.Sprintf("/hello?i=%d", i)))
	}
	f.sink.WaitForSpans(t, func(s Span) bool {
		return s.Service() == "go-svc" && s.Str("url.path") == "/hello"
	}, n, spanTimeout)
	served := uprobeRuns(t) - before
	assert.Zero(t, served, "uprobe hits while the Go server served %d requests", n)

	const calls = 50
	before = uprobeRuns(t)
	for i := 0; i < calls; i++ {
		get(goApp.CallURL(py.URL(fmt.Sprintf("/headers?chain=pool%d", i)), "chain", fmt.Sprintf("pool%d", i), "pooled", "1"))
	}
	hits := uprobeRuns(t) - before
	// One roundTrip hit per request, one writeLoop hit per new connection
	// (sequential calls: one connection, a second if the first was closed).
	assert.LessOrEqual(t, hits, uint64(calls+2), "uprobe hits for %d pooled client requests", calls)
	assert.GreaterOrEqual(t, hits, uint64(calls), "the hand-over probe runs once per pooled request")
	t.Logf("%d uprobe hits serving %d requests; %d for %d pooled client requests", served, n, hits, calls)
}

// TestGoNestedGoroutines: the outgoing request is made by the 6th goroutine
// of a chain started by the handler; the goroutines in between do no I/O and
// the caller's parent has exited. Built with and without symbols, on a new
// connection and on pooled ones.
func TestGoNestedGoroutines(t *testing.T) {
	for _, lang := range []Lang{Go, GoStripped} {
		t.Run(string(lang), func(t *testing.T) {
			f := startFleetEBPF(t, propagationAll, appSpec{lang, "gw-svc"}, appSpec{Python, "py-svc"})
			apps := f.chainApps("gw-svc", "py-svc")
			for _, pooled := range []string{"0", "1"} {
				for _, incoming := range []string{"", randomTraceparent()} {
					tag := fmt.Sprintf("nest-%s-p%s-i%d", lang, pooled, len(incoming))
					u := apps[0].CallURL(apps[1].URL("/headers?chain="+tag), "chain", tag, "nest", "6", "pooled", pooled)
					var args []string
					if incoming != "" {
						args = []string{"-H", "traceparent: " + incoming}
					}
					hops := curlChain(t, u, 2, args...)
					cs := waitChains(t, f.sink, apps, tag)[tag]
					t.Run(tag, func(t *testing.T) { checkChain(t, apps, cs, hops, incoming) })
				}
			}
		})
	}
}

// TestGoStrippedGatewayConcurrent: a stripped Go gateway takes 200 requests,
// 50 at a time, each with its own incoming traceparent, and calls a backend
// for each (pooled connections, from the handler and from 3 and 6 levels of
// nested goroutines). Every call carries its own request's trace id, never
// another's. With held chains every call carries one; where the caller's
// parent has exited, the runtime can give its g to a new goroutine before
// the call is seen, and the ancestry is lost: such a call carries no
// traceparent (counted, never a wrong one).
func TestGoStrippedGatewayConcurrent(t *testing.T) {
	f := startFleetEBPF(t, propagationAll, appSpec{GoStripped, "gw-svc"}, appSpec{Python, "py-svc"})
	gw, py := f.apps["gw-svc"], f.apps["py-svc"]
	for _, held := range []string{"1", "0"} {
		t.Run("held="+held, func(t *testing.T) {
			wrong, missing, n := concurrentGateway(t, gw, py, held, true, 200, 50)
			assert.Zero(t, wrong, "calls that carried another request's trace id")
			if held == "1" {
				assert.Zero(t, missing, "calls that carried no traceparent")
			}
			t.Logf("%d requests: %d wrong trace ids, %d without traceparent", n, wrong, missing)
		})
	}
}

// TestGoGatewayNewConnections: a Go gateway opens a new backend connection
// per call (DisableKeepAlives) for 1500 requests, 32 at a time, so the GC
// frees persistConns and new ones reuse their addresses: every call still
// carries its own request's trace id.
func TestGoGatewayNewConnections(t *testing.T) {
	f := startFleetEBPF(t, propagationAll, appSpec{Go, "gw-new-svc"}, appSpec{Go, "be-new-svc"})
	wrong, missing, n := concurrentGateway(t, f.apps["gw-new-svc"], f.apps["be-new-svc"], "1", false, 1500, 32)
	assert.Zero(t, wrong, "calls that carried another request's trace id")
	assert.Zero(t, missing, "calls that carried no traceparent")
	t.Logf("%d requests: %d wrong trace ids, %d without traceparent", n, wrong, missing)
}

// TestGoGatewayPoolBeforeCollector: the gateway's pooled backend
// connections were opened before the collector started, so their writeLoop
// goroutines were never seen starting: the hand-over finds each one parked
// on its connection's request channel. Built with and without symbols.
func TestGoGatewayPoolBeforeCollector(t *testing.T) {
	for _, lang := range []Lang{Go, GoStripped} {
		t.Run(string(lang), func(t *testing.T) {
			warm := func(apps map[string]*App) {
				// Opens up to 32 pooled connections, no collector yet: the
				// backend sees no traceparent.
				concurrentGateway(t, apps["gw-svc"], apps["py-svc"], "1", true, 64, 32)
			}
			f := startFleetAfter(t, propagationAll, warm, appSpec{lang, "gw-svc"}, appSpec{Python, "py-svc"})
			wrong, missing, n := concurrentGateway(t, f.apps["gw-svc"], f.apps["py-svc"], "1", true, 200, 32)
			assert.Zero(t, wrong, "calls that carried another request's trace id")
			assert.Zero(t, missing, "calls that carried no traceparent")
			t.Logf("%d requests on connections pooled before the collector: %d wrong trace ids, %d without traceparent", n, wrong, missing)
		})
	}
}

// concurrentGateway sends total requests, parallel at a time, through gw to
// py (on pooled backend connections or a new one per call) and counts the
// backend calls that carried another request's trace id and those that
// carried none.
func concurrentGateway(t *testing.T, gw, py *App, held string, pooled bool, total, parallel int) (wrong, missing, n int) {
	client := NewClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	type result struct{ incoming, received string }
	var (
		mu      sync.Mutex
		results = map[string]result{}
		errs    []string
		sem     = make(chan struct{}, parallel)
		wg      sync.WaitGroup
	)
	for i := 0; i < total; i++ {
		tag := fmt.Sprintf("gw%s-%03d", held, i)
		nest := fmt.Sprint(i % 3 * 3) // 0 (the handler), 3 and 6 levels
		if !pooled {
			nest = "0"
		}
		in := randomTraceparent()
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			params := []string{"chain", tag, "nest", nest, "held", held}
			if pooled {
				params = append(params, "pooled", "1")
			}
			u := gw.CallURL(py.URL("/headers?chain="+tag), params...)
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			if err == nil {
				req.Header.Set("traceparent", in)
			}
			var body []byte
			if err == nil {
				var resp *http.Response
				if resp, err = client.Do(req); err == nil {
					body, _ = io.ReadAll(resp.Body)
					resp.Body.Close()
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", tag, err))
				return
			}
			hops, err := ParseChain(string(body))
			if err != nil || len(hops) != 2 {
				errs = append(errs, fmt.Sprintf("%s: %v: %s", tag, err, body))
				return
			}
			results[tag] = result{incoming: in, received: hops[1].Traceparent}
		}()
	}
	wg.Wait()
	require.Empty(t, errs)
	for tag, r := range results {
		inTrace, _ := traceparentIDs(t, r.incoming)
		if r.received == "" {
			missing++
			continue
		}
		gotTrace, _ := traceparentIDs(t, r.received)
		if gotTrace != inTrace {
			wrong++
			t.Errorf("%s: backend received trace %s, the request came with %s", tag, gotTrace, inTrace)
		}
	}
	return wrong, missing, len(results)
}

// TestUnselectedProcessUntraced: a process the discovery does not select
// produces nothing, while a selected one beside it is traced.
func TestUnselectedProcessUntraced(t *testing.T) {
	f := startFleet(t, appSpec{Python, "py-svc"})
	other := StartApp(t, Python, FreePort(t), "other-svc")
	client := NewClient(t)
	for i := 0; i < 20; i++ {
		for _, a := range []*App{other, f.apps["py-svc"]} {
			resp, err := client.Get(a.URL(fmt.Sprintf("/hello?u=%d", i)))
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	f.sink.WaitForSpans(t, func(s Span) bool {
		return s.Service() == "py-svc" && s.Str("url.query") != "" && strings.HasPrefix(s.Str("url.query"), "u=")
	}, 20, spanTimeout)
	time.Sleep(settle)
	for _, s := range f.sink.Spans() {
		if s.Service() == "other-svc" {
			t.Errorf("span of the unselected process: %s", s)
		}
		if p, ok := s.Int("server.port"); ok && int(p) == other.Port {
			t.Errorf("span of the unselected process's port: %s", s)
		}
	}
}
