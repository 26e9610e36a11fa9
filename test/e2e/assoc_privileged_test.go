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
)

// TestEventLoopNoGuessedParent: Node serves every request on one thread.
// When it reads a request while still serving another, the thread cannot
// tell which of them a later outgoing request belongs to, so no parent is
// guessed: the outgoing request starts its own trace (and sends that
// downstream) instead of taking whatever request the thread read last.
// Requests served one at a time keep full propagation, before and after.
func TestEventLoopNoGuessedParent(t *testing.T) {
	f := startFleetEBPF(t, propagationAll, appSpec{Node, "node-loop"}, appSpec{Go, "go-down"})
	apps := f.chainApps("node-loop", "go-down")
	client := NewClient(t)

	// run sends each tag's chain with its own incoming traceparent, all at
	// once, and returns what the downstream received per tag.
	run := func(tags []string, incoming map[string]string, delay string) map[string]string {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		var (
			wg    sync.WaitGroup
			mu    sync.Mutex
			got   = map[string]string{}
			errs  []string
			start = make(chan struct{})
		)
		for _, tag := range tags {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, ChainURL(apps, "/headers", "chain", tag, "delay", delay), nil)
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
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				hops, err := ParseChain(string(body))
				mu.Lock()
				defer mu.Unlock()
				if err != nil || len(hops) != 2 || hops[0].Status != http.StatusOK {
					errs = append(errs, fmt.Sprintf("chain %s: status %d: %s", tag, resp.StatusCode, body))
					return
				}
				got[tag] = hops[1].Traceparent
			}()
		}
		close(start)
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("requests failed: %s", strings.Join(errs, "; "))
		}
		return got
	}
	traceOf := func(tp string) string {
		if p := strings.Split(tp, "-"); len(p) == 4 {
			return p[1]
		}
		return ""
	}
	newTags := func(prefix string, n int) ([]string, map[string]string) {
		tags := make([]string, n)
		incoming := map[string]string{}
		for i := range tags {
			tags[i] = fmt.Sprintf("%s%02d", prefix, i)
			incoming[tags[i]] = randomTraceparent()
		}
		return tags, incoming
	}
	// sequential: one chain at a time, each must carry its own trace id
	// downstream, and the Node CLIENT span must be the child of its SERVER
	// span.
	sequential := func(prefix string) {
		tags, incoming := newTags(prefix, 5)
		for _, tag := range tags {
			got := run([]string{tag}, incoming, "20")
			if traceOf(got[tag]) != traceOf(incoming[tag]) {
				t.Errorf("chain %s alone: downstream got %q, want trace %s", tag, got[tag], traceOf(incoming[tag]))
			}
		}
		chains := waitChains(t, f.sink, apps, tags...)
		for _, tag := range tags {
			cs := chains[tag]
			if cs.Clients[0].ParentSpanID != cs.Servers[0].SpanID || cs.Servers[1].ParentSpanID != cs.Clients[0].SpanID {
				t.Errorf("chain %s alone: node SERVER %s, CLIENT %s, go SERVER %s", tag, cs.Servers[0], cs.Clients[0], cs.Servers[1])
			}
		}
	}

	sequential("a")

	// 50 at once: every request is read before the first timer fires.
	const n = 50
	tags, incoming := newTags("c", n)
	owner := map[string]string{}
	for tag, tp := range incoming {
		owner[traceOf(tp)] = tag
	}
	got := run(tags, incoming, "300")
	own, other := 0, 0
	for _, tag := range tags {
		switch o, ok := owner[traceOf(got[tag])]; {
		case !ok:
			other++ // a trace of its own
		case o == tag:
			own++
		default:
			t.Errorf("chain %s: downstream got chain %s's trace id (%s)", tag, o, got[tag])
		}
	}
	// The spans say the same: no CLIENT span is the child of another
	// chain's SERVER span.
	chains := waitChains(t, f.sink, apps, tags...)
	serverOf := map[string]string{}
	for tag, cs := range chains {
		serverOf[cs.Servers[0].SpanID] = tag
	}
	for _, tag := range tags {
		c := chains[tag].Clients[0]
		if o, ok := serverOf[c.ParentSpanID]; ok && o != tag {
			t.Errorf("chain %s: node CLIENT span parented into chain %s: %s", tag, o, c)
		}
		if c.ParentSpanID == "" && chains[tag].Servers[1].ParentSpanID != c.SpanID {
			t.Errorf("chain %s: the go SERVER span is not the child of the root CLIENT span: %s", tag, chains[tag].Servers[1])
		}
	}
	t.Logf("%d concurrent chains through one event loop: %d carried their own trace, %d started a trace of their own, none another's", n, own, other)

	// The thread's count of requests in flight is back to none: requests
	// served one at a time propagate again.
	sequential("b")
}
