//go:build linux && privileged

package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace"
)

// Tests of ebpf.context_propagation: the receiver writes a traceparent header
// into the outgoing HTTP/1.x requests of a traced process that serves a traced
// request. Every outbound /call opens a new connection after the collector
// started, so each one can be injected.

// propagationAll is the ebpf config that turns header propagation on.
var propagationAll = map[string]string{"context_propagation": "all"}

// injects reports whether lang's /call gets its outbound request injected:
// thread-per-request runtimes by thread identity, Go by goroutine tracking
// (the transport's writeLoop goroutine descends from the handler's when the
// connection is new, as every /call's is).
func injects(l Lang) bool { return true }

// chainSpans are the spans of one chain of /call requests through apps:
// Servers[i] is apps[i]'s SERVER span and Clients[i] its CLIENT span (the
// last app calls nobody).
type chainSpans struct {
	Servers, Clients []Span
}

// tagOf is the "chain" query parameter of a span's request: from url.query
// on a SERVER span, from url.full on a CLIENT span. ChainURL puts it on every
// hop, so it names the chain a span belongs to.
func tagOf(s Span) string {
	q := s.Str("url.query")
	if s.Kind == ptrace.SpanKindClient {
		u, err := url.Parse(s.Str("url.full"))
		if err != nil {
			return ""
		}
		q = u.RawQuery
	}
	v, _ := url.ParseQuery(q) // keeps the pairs before a bad one
	return v.Get("chain")
}

// withTag selects the spans of the chain tagged tag.
func withTag(tag string) SpanPred { return func(s Span) bool { return tagOf(s) == tag } }

// waitChains waits for the spans of the chains tagged tags through apps (a
// SERVER span per app, a CLIENT span per app but the last), waits settle for
// extra ones, and returns them by tag. It fails the test when one is missing
// or comes twice.
func waitChains(t *testing.T, sink *Sink, apps []*App, tags ...string) map[string]chainSpans {
	t.Helper()
	index := map[string]int{}
	for i, a := range apps {
		index[a.Service] = i
	}
	wanted := map[string]bool{}
	for _, tag := range tags {
		wanted[tag] = true
	}
	pred := func(s Span) bool {
		_, ok := index[s.Service()]
		return ok && (s.Kind == ptrace.SpanKindServer || s.Kind == ptrace.SpanKindClient) && wanted[tagOf(s)]
	}
	sink.WaitForSpans(t, pred, len(tags)*(2*len(apps)-1), spanTimeout)
	time.Sleep(settle)

	out := map[string]chainSpans{}
	for _, tag := range tags {
		out[tag] = chainSpans{Servers: make([]Span, len(apps)), Clients: make([]Span, len(apps)-1)}
	}
	var problems []string
	for _, s := range sink.Matching(pred) {
		cs, i := out[tagOf(s)], index[s.Service()]
		slot := &cs.Servers[i]
		if s.Kind == ptrace.SpanKindClient {
			if i == len(apps)-1 {
				problems = append(problems, "unexpected CLIENT span: "+s.String())
				continue
			}
			slot = &cs.Clients[i]
		}
		if slot.SpanID != "" || slot.Name != "" {
			problems = append(problems, "second span: "+s.String())
			continue
		}
		*slot = s
	}
	for _, tag := range tags {
		for i, a := range apps {
			if out[tag].Servers[i].Name == "" {
				problems = append(problems, fmt.Sprintf("chain %s: no SERVER span of %s", tag, a.Service))
			}
			if i < len(apps)-1 && out[tag].Clients[i].Name == "" {
				problems = append(problems, fmt.Sprintf("chain %s: no CLIENT span of %s", tag, a.Service))
			}
		}
	}
	require.Empty(t, problems, "spans:\n%s", sink.Dump())
	return out
}

// checkChain asserts that the spans and hops of one chain through apps form
// one trace: apps[0]'s SERVER span continues incoming (the traceparent sent
// to apps[0], "" for none: then it is a root), every CLIENT span is a child
// of its app's SERVER span, every SERVER span but the first a child of the
// upstream CLIENT span, and every app but the first received exactly one
// traceparent, 00-<trace>-<upstream CLIENT span id>-01.
func checkChain(t *testing.T, apps []*App, cs chainSpans, hops []Hop, incoming string) {
	t.Helper()
	require.Len(t, hops, len(apps))
	first := cs.Servers[0]
	trace := first.TraceID
	if incoming != "" {
		wantTrace, wantParent := traceparentIDs(t, incoming)
		assert.Equal(t, wantTrace, trace, "%s SERVER span continues the incoming trace: %s", apps[0].Service, first)
		assert.Equal(t, wantParent, first.ParentSpanID, "%s SERVER span's parent is the incoming one: %s", apps[0].Service, first)
		assert.Equal(t, 1, hops[0].TraceparentCount, "%s received the incoming traceparent", apps[0].Service)
	} else {
		assert.Empty(t, first.ParentSpanID, "%s SERVER span is a root: %s", apps[0].Service, first)
		assert.Equal(t, 0, hops[0].TraceparentCount, "%s received no traceparent", apps[0].Service)
	}
	assert.Equal(t, incoming, hops[0].Traceparent, "%s received the incoming traceparent", apps[0].Service)
	// The flags go on as received; a root's are sampled and random (03).
	flags := rootFlags
	if incoming != "" {
		flags = incoming[len(incoming)-2:]
	}
	for i, a := range apps {
		server := cs.Servers[i]
		assert.Equal(t, trace, server.TraceID, "%s SERVER span joins trace %s: %s", a.Service, trace, server)
		if i == len(apps)-1 {
			break
		}
		client, down := cs.Clients[i], apps[i+1]
		assert.Equal(t, trace, client.TraceID, "%s CLIENT span joins trace %s: %s", a.Service, trace, client)
		assert.Equal(t, server.SpanID, client.ParentSpanID, "%s CLIENT span is a child of its SERVER span %s: %s", a.Service, server.SpanID, client)
		next := cs.Servers[i+1]
		assert.Equal(t, client.SpanID, next.ParentSpanID, "%s SERVER span is a child of %s's CLIENT span %s: %s", down.Service, a.Service, client.SpanID, next)
		want := "00-" + client.TraceID + "-" + client.SpanID + "-" + flags
		assert.Equal(t, want, hops[i+1].Traceparent, "%s received the traceparent of %s's CLIENT span", down.Service, a.Service)
		assert.Equal(t, 1, hops[i+1].TraceparentCount, "%s received exactly one traceparent", down.Service)
	}
}

// rootFlags are the trace flags of a context the receiver starts under the
// default sampler: sampled (01) and, since it makes the trace id at random,
// random (02, W3C Trace Context Level 2).
const rootFlags = "03"

// traceparentIDs splits a version 00 traceparent into trace and parent ids.
func traceparentIDs(t *testing.T, tp string) (trace, parent string) {
	t.Helper()
	f := strings.Split(tp, "-")
	require.Len(t, f, 4, "traceparent %q", tp)
	return f[1], f[2]
}

// randomTraceparent is a sampled traceparent with random ids.
func randomTraceparent() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return "00-" + hex.EncodeToString(b[:16]) + "-" + hex.EncodeToString(b[16:]) + "-01"
}

// curlChain sends GET u with curl (extra args first) and parses the chain of
// n hops it answers, each /call answered 200 with a 200 downstream.
func curlChain(t *testing.T, u string, n int, args ...string) []Hop {
	t.Helper()
	out := Curl(t, append(append([]string{"--fail"}, args...), u)...)
	return parseHops(t, out, n)
}

// parseHops is ParseChain requiring n hops and 200 statuses.
func parseHops(t *testing.T, body string, n int) []Hop {
	t.Helper()
	hops, err := ParseChain(body)
	require.NoError(t, err, "%s", body)
	require.Len(t, hops, n, "%s", body)
	for i, h := range hops[:n-1] {
		require.Equal(t, 200, h.Status, "hop %d: %s", i, body)
	}
	return hops
}

// chainApps picks the fleet's apps by service, in order.
func (f *fleet) chainApps(services ...string) []*App {
	out := make([]*App, len(services))
	for i, s := range services {
		out[i] = f.apps[s]
	}
	return out
}

func TestPropagationChain(t *testing.T) {
	f := startFleetEBPF(t, propagationAll, langSpecs(Python, Node, Java, Go)...)
	apps := f.chainApps(DefaultService(Python), DefaultService(Node), DefaultService(Java), DefaultService(Go))
	hops := curlChain(t, ChainURL(apps, "/headers", "chain", "c"), len(apps))
	cs := waitChains(t, f.sink, apps, "c")["c"]
	checkChain(t, apps, cs, hops, "")
}

func TestPropagationChainKeepsIncomingTraceparent(t *testing.T) {
	f := startFleetEBPF(t, propagationAll, langSpecs(Python, Node, Java, Go)...)
	apps := f.chainApps(DefaultService(Python), DefaultService(Node), DefaultService(Java), DefaultService(Go))
	hops := curlChain(t, ChainURL(apps, "/headers", "chain", "k"), len(apps), "-H", "traceparent: "+testTraceparent)
	cs := waitChains(t, f.sink, apps, "k")["k"]
	checkChain(t, apps, cs, hops, testTraceparent)
	for _, s := range append(cs.Servers, cs.Clients...) {
		assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", s.TraceID, "%s", s)
	}
	assert.Equal(t, "00f067aa0ba902b7", cs.Servers[0].ParentSpanID, "%s", cs.Servers[0])
}

// TestPropagationAppOwnTraceparent: a service that writes its own traceparent
// gets no second one, and its CLIENT span takes the ids it wrote. Each
// language writes the name differently (Python and Go: "Traceparent", Node
// and Java: "traceparent").
func TestPropagationAppOwnTraceparent(t *testing.T) {
	const down = "down-svc"
	f := startFleetEBPF(t, propagationAll, append(langSpecs(AllLangs()...), appSpec{Go, down})...)
	for i, l := range AllLangs() {
		caller := f.apps[DefaultService(l)]
		t.Run(string(l), func(t *testing.T) {
			trace, span := strings.Repeat("a", 32), strings.Repeat("b", 16)
			if i > 0 {
				trace, span = trace[:31]+fmt.Sprint(i), span[:15]+fmt.Sprint(i)
			}
			own := "00-" + trace + "-" + span + "-01"
			tag := "own-" + string(l)
			apps := []*App{caller, f.apps[down]}
			u := caller.CallURL(f.apps[down].URL("/headers?chain="+tag), "chain", tag, "traceparent", own)
			hops := curlChain(t, u, 2)
			assert.Equal(t, own, hops[1].Traceparent, "%s got the app's own traceparent", down)
			assert.Equal(t, 1, hops[1].TraceparentCount, "%s got no second traceparent: %v", down, hops[1].Headers)
			assert.Equal(t, own, hops[1].Headers["traceparent"], "the only traceparent field")

			cs := waitChains(t, f.sink, apps, tag)[tag]
			client, server := cs.Clients[0], cs.Servers[1]
			assert.Equal(t, trace, client.TraceID, "CLIENT span takes the app's trace id: %s", client)
			assert.Equal(t, span, client.SpanID, "CLIENT span takes the app's parent id as its span id: %s", client)
			assert.Equal(t, trace, server.TraceID, "%s", server)
			assert.Equal(t, span, server.ParentSpanID, "%s", server)
		})
	}
}

// TestPropagationParallelChains sends 50 chains at once through
// thread-per-request servers, each with its own incoming traceparent, and
// checks that no context leaks from one to another.
func TestPropagationParallelChains(t *testing.T) {
	const n = 50
	specs := []appSpec{{Python, "py-svc"}, {Java, "java-svc"}, {Python, "py2-svc"}, {Go, "go-svc"}}
	f := startFleetEBPF(t, propagationAll, specs...)
	apps := f.chainApps("py-svc", "java-svc", "py2-svc", "go-svc")

	tags := make([]string, n)
	incoming := map[string]string{}
	for i := range tags {
		tags[i] = fmt.Sprintf("p%02d", i)
		incoming[tags[i]] = randomTraceparent()
	}
	client := NewClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		bodies = map[string]string{}
		errs   []string
		start  = make(chan struct{})
	)
	for _, tag := range tags {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, ChainURL(apps, "/headers", "chain", tag), nil)
			var resp *http.Response
			if err == nil {
				req.Header.Set("traceparent", incoming[tag])
				resp, err = client.Do(req)
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("chain %s: %v", tag, err))
				mu.Unlock()
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			if err != nil || resp.StatusCode != http.StatusOK {
				errs = append(errs, fmt.Sprintf("chain %s: status %d, %v: %s", tag, resp.StatusCode, err, body))
				return
			}
			bodies[tag] = string(body)
		}()
	}
	close(start)
	wg.Wait()
	require.Empty(t, errs)

	chains := waitChains(t, f.sink, apps, tags...)
	// No span is parented into another chain's trace.
	owner := map[string]string{}
	for tag, cs := range chains {
		for _, s := range append(cs.Servers, cs.Clients...) {
			owner[s.SpanID] = tag
		}
	}
	traces := map[string]bool{}
	for _, tag := range tags {
		for _, s := range append(chains[tag].Servers, chains[tag].Clients...) {
			traces[s.TraceID] = true
			if o, ok := owner[s.ParentSpanID]; ok && o != tag {
				t.Errorf("chain %s: span parented into chain %s: %s", tag, o, s)
			}
		}
	}
	assert.Len(t, traces, n, "distinct trace ids among all spans")
	failed := 0
	for i, tag := range tags {
		ok := t.Run(tag, func(t *testing.T) {
			checkChain(t, apps, chains[tag], parseHops(t, bodies[tag], len(apps)), incoming[tag])
		})
		if !ok {
			failed++
		}
		if failed == 3 {
			t.Fatalf("3 chains failed; the other %d are not checked", n-i-1)
		}
	}
}

func TestPropagationDisabled(t *testing.T) {
	const down = "down-svc"
	f := startFleetEBPF(t, map[string]string{"context_propagation": "disabled"}, append(langSpecs(AllLangs()...), appSpec{Go, down})...)
	for _, l := range AllLangs() {
		caller := f.apps[DefaultService(l)]
		t.Run(string(l), func(t *testing.T) {
			tag := "off-" + string(l)
			apps := []*App{caller, f.apps[down]}
			// An incoming traceparent gives the receiver a context it could
			// propagate; it must not.
			hops := curlChain(t, ChainURL(apps, "/headers", "chain", tag), 2, "-H", "traceparent: "+testTraceparent)
			assert.Equal(t, testTraceparent, hops[0].Traceparent)
			assert.Empty(t, hops[1].Traceparent, "%s received no traceparent", down)
			assert.Equal(t, 0, hops[1].TraceparentCount, "%s received no traceparent: %v", down, hops[1].Headers)
			assert.NotContains(t, hops[1].Headers, "traceparent")

			cs := waitChains(t, f.sink, apps, tag)[tag]
			assert.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", cs.Servers[0].TraceID, "%s", cs.Servers[0])
			assert.Empty(t, cs.Servers[1].ParentSpanID, "%s SERVER span is a root: %s", down, cs.Servers[1])
			assert.NotEqual(t, cs.Servers[0].TraceID, cs.Servers[1].TraceID, "%s", cs.Servers[1])
		})
	}
}

// TestPropagationIntegrity checks that injection leaves what the app sends
// intact: a 1 MiB POST body, large headers, and pipelined requests to a
// traced server (that also calls out).
func TestPropagationIntegrity(t *testing.T) {
	const down = "down-svc"
	f := startFleetEBPF(t, propagationAll, append(langSpecs(AllLangs()...), appSpec{Go, down})...)
	downstream := f.apps[down]

	// injected checks a traceparent the downstream received from caller:
	// exactly one when must and the language's thread identity links the
	// call, at most one otherwise, and when there is one it names caller's
	// CLIENT span of the chain tag.
	injected := func(t *testing.T, caller *App, tag string, h Hop, must bool) {
		t.Helper()
		if must && injects(caller.Lang) {
			assert.Equal(t, 1, h.TraceparentCount, "%s received one traceparent (%s)", down, tag)
		} else {
			assert.LessOrEqual(t, h.TraceparentCount, 1, "%s received at most one traceparent (%s)", down, tag)
			t.Logf("%s: %s received %d traceparent(s)", tag, down, h.TraceparentCount)
		}
		if h.TraceparentCount == 0 {
			return
		}
		client := f.sink.WaitForSpans(t, All(ClientOf(caller.Service), withTag(tag)), 1, spanTimeout)[0]
		assert.Equal(t, "00-"+client.TraceID+"-"+client.SpanID+"-"+rootFlags, h.Traceparent, "the header names the CLIENT span: %s", client)
	}

	for _, l := range AllLangs() {
		caller := f.apps[DefaultService(l)]
		t.Run(string(l), func(t *testing.T) {
			t.Run("post body", func(t *testing.T) {
				const size = 1 << 20
				sum := sha256.Sum256(Pattern(size))
				tag := "post-" + string(l)
				u := caller.CallURL(downstream.URL("/echo?chain="+tag), "chain", tag, "method", "POST", "body", fmt.Sprint(size))
				hops := curlChain(t, u, 2)
				assert.Equal(t, size, hops[1].Len, "body length")
				assert.Equal(t, hex.EncodeToString(sum[:]), hops[1].SHA256, "the body arrived intact")
				injected(t, caller, tag, hops[1], true)
			})

			t.Run("large headers", func(t *testing.T) {
				// 2000: over 1 KiB; 6144: a 6 KiB cookie-sized header, over
				// a page; 16000: a block just under the 16 KiB scanned, which
				// Go's 4 KiB write buffer sends in several writes. Each is
				// injected exactly once (the reference call has the app's
				// own traceparent after X-Pad, except in Go).
				for _, pad := range []int{2000, 6144, 16000} {
					// The same call with the app's own traceparent (nothing
					// injected) is the reference for every other header.
					refTag, tag := fmt.Sprintf("pad%d-ref-%s", pad, l), fmt.Sprintf("pad%d-%s", pad, l)
					ref := curlChain(t, caller.CallURL(downstream.URL("/headers?chain="+refTag), "chain", refTag, "pad", fmt.Sprint(pad), "traceparent", testTraceparent), 2)[1]
					got := curlChain(t, caller.CallURL(downstream.URL("/headers?chain="+tag), "chain", tag, "pad", fmt.Sprint(pad)), 2)[1]
					assert.Equal(t, string(Pattern(pad)), got.Headers["x-pad"], "X-Pad of %d bytes arrived intact", pad)
					assert.Equal(t, testTraceparent, ref.Headers["traceparent"])
					assert.Equal(t, 1, ref.TraceparentCount, "the app's own traceparent only")
					withoutTP := func(h map[string]string) map[string]string {
						h = maps.Clone(h)
						delete(h, "traceparent")
						return h
					}
					assert.Equal(t, withoutTP(ref.Headers), withoutTP(got.Headers), "headers other than traceparent, pad %d", pad)
					injected(t, caller, tag, got, true)
				}
			})

			t.Run("pipelining", func(t *testing.T) {
				tag := "pipe-" + string(l)
				call := strings.TrimPrefix(caller.CallURL(downstream.URL("/headers?chain="+tag), "chain", tag), "http://"+caller.Addr())
				resps := Pipeline(t, caller.Addr(), []string{"/hello", "/status/201", call, "/status/202"})
				require.Len(t, resps, 4)
				assert.Equal(t, []int{200, 201, 200, 202}, []int{resps[0].Status, resps[1].Status, resps[2].Status, resps[3].Status})
				assert.Equal(t, "hello", string(resps[0].Body))
				hops := parseHops(t, string(resps[2].Body), 2)
				// Which request's context a pipelined call carries is not
				// asserted; only that the header, if any, is well formed
				// and names the CLIENT span.
				assert.LessOrEqual(t, hops[1].TraceparentCount, 1)
				if hops[1].TraceparentCount == 1 {
					client := f.sink.WaitForSpans(t, All(ClientOf(caller.Service), withTag(tag)), 1, spanTimeout)[0]
					assert.Equal(t, "00-"+client.TraceID+"-"+client.SpanID+"-"+rootFlags, hops[1].Traceparent, "%s", client)
				}
			})
		})
	}

	t.Run("pipelining to a server", func(t *testing.T) {
		for _, l := range AllLangs() {
			app := f.apps[DefaultService(l)]
			resps := Pipeline(t, app.Addr(), []string{"/hello", "/status/201", "/status/202", "/hello?x=1"})
			require.Len(t, resps, 4)
			assert.Equal(t, []int{200, 201, 202, 200}, []int{resps[0].Status, resps[1].Status, resps[2].Status, resps[3].Status}, "%s", l)
			assert.Equal(t, "hello", string(resps[0].Body), "%s", l)
			assert.Equal(t, "hello", string(resps[3].Body), "%s", l)
		}
	})
}
