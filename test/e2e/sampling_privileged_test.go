//go:build linux && privileged

package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of the head sampler (receiver config sampler:, OTEL_TRACES_SAMPLER):
// decided in the kernel, an unsampled request exports no span but still
// propagates its context with the sampled flag clear, and the receiver
// counts both kinds (receiver_ebpf_tracing_requests_sampled and _unsampled).

// samplerCounters scrapes the collector's own metrics on port and returns
// the receiver's sampled and unsampled request counts.
func samplerCounters(t *testing.T, port int) (sampled, unsampled int) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	require.NoError(t, err, "scrape collector metrics")
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		name, _, _ := strings.Cut(line[:i], "{")
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		switch {
		case strings.Contains(name, "ebpf_tracing_requests_unsampled"):
			unsampled += int(v)
		case strings.Contains(name, "ebpf_tracing_requests_sampled"):
			sampled += int(v)
		}
	}
	require.NoError(t, sc.Err())
	return sampled, unsampled
}

// waitCounters polls the counters until done accepts them or spanTimeout
// passes, and returns the last values.
func waitCounters(t *testing.T, port int, done func(sampled, unsampled int) bool) (sampled, unsampled int) {
	t.Helper()
	deadline := time.Now().Add(spanTimeout)
	for {
		sampled, unsampled = samplerCounters(t, port)
		if done(sampled, unsampled) || time.Now().After(deadline) {
			return sampled, unsampled
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ratioSampled is the OpenTelemetry traceidratio rule, written here apart
// from the receiver: trace id bytes 8..15 as a big-endian uint64, shifted
// right by one, below ratio * 2^63.
func ratioSampled(traceID string, ratio float64) bool {
	b, err := hex.DecodeString(traceID)
	if err != nil || len(b) != 16 {
		return false
	}
	return binary.BigEndian.Uint64(b[8:])>>1 < uint64(ratio*(1<<63))
}

func randomTraceID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// flagsOf is the flags field of a version 00 traceparent.
func flagsOf(t *testing.T, tp string) string {
	t.Helper()
	f := strings.Split(tp, "-")
	require.Len(t, f, 4, "traceparent %q", tp)
	return f[3]
}

// traceidratio 0.25 over 2000 requests, half of them with a random incoming
// sampled traceparent (which traceidratio, not parent based, decides again
// on its trace id), half roots: a quarter of the SERVER spans are exported,
// each incoming trace id exactly as the spec's rule says, and the counters
// add up to what was sent and what was exported.
func TestSamplingTraceIDRatio(t *testing.T) {
	const (
		ratio    = 0.25
		requests = 2000
		workers  = 16
	)
	sink := StartSink(t)
	port := FreePort(t)
	app := StartApp(t, Go, port, "ratio-svc")
	metrics := FreePort(t)
	StartCollector(t, CollectorConfig{
		Instrument:   []Selector{PortsSelector(port)},
		SinkEndpoint: sink.Endpoint(),
		Sampler:      map[string]string{"name": "traceidratio", "arg": `"0.25"`},
		MetricsPort:  metrics,
	})
	waitTraced(t, sink, app)

	incoming := make([]string, requests) // "" for a root request
	for i := range incoming {
		if i%2 == 0 {
			incoming[i] = randomTraceID()
		}
	}
	client := NewClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, requests)
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				req, err := http.NewRequestWithContext(ctx, http.MethodGet, app.URL(fmt.Sprintf("/hello?ratio=%d", i)), nil)
				if err != nil {
					errs <- err
					continue
				}
				if incoming[i] != "" {
					req.Header.Set("traceparent", "00-"+incoming[i]+"-00f067aa0ba902b7-01")
				}
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("request %d: status %d", i, resp.StatusCode)
				}
			}
		}()
	}
	for i := range requests {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	t.Logf("%d requests in %v", requests, time.Since(start).Round(time.Millisecond))

	isRatio := func(s Span) bool { return strings.HasPrefix(s.Str("url.query"), "ratio=") }
	ours := All(ServerOf(app.Service), isRatio)
	// Every finished request is counted, sampled or not; every sampled one
	// reaches the sink.
	sampled, unsampled := waitCounters(t, metrics, func(s, u int) bool {
		return s+u >= requests && len(sink.Spans()) >= s
	})
	time.Sleep(settle)
	got := sink.Matching(ours)
	all := sink.Spans()
	share := float64(len(got)) / requests
	t.Logf("exported %d of %d SERVER spans (%.1f%%); counters: sampled %d, unsampled %d; sink %d spans in all",
		len(got), requests, 100*share, sampled, unsampled, len(all))
	assert.InDelta(t, ratio, share, 0.03, "share of SERVER spans exported")
	assert.Equal(t, len(all), sampled, "sampled counter = spans exported (%d of them warm-up)", len(all)-len(got))
	assert.GreaterOrEqual(t, sampled+unsampled, requests, "every request counted")
	assert.InDelta(t, (1-ratio)*requests, unsampled, 0.03*requests+20, "unsampled counter (warm-up requests included)")

	// The incoming trace ids: exported exactly when the rule samples them.
	exported := map[string]bool{}
	for _, s := range got {
		assert.False(t, exported[s.TraceID], "trace %s exported twice", s.TraceID)
		exported[s.TraceID] = true
		assert.Equal(t, uint32(0x01), s.Flags&0x01, "an exported span is sampled: %s", s)
	}
	var wrong, withParent int
	for _, tid := range incoming {
		if tid == "" {
			continue
		}
		withParent++
		if exported[tid] != ratioSampled(tid, ratio) {
			wrong++
		}
	}
	assert.Zero(t, wrong, "of %d incoming trace ids, %d not decided by the traceidratio rule", withParent, wrong)
	for _, s := range got {
		assert.True(t, ratioSampled(s.TraceID, ratio), "exported trace %s is not sampled by the rule", s.TraceID)
	}
}

// Under the default sampler (parentbased_always_on) a request whose incoming
// traceparent is not sampled exports nothing, in this process or the next,
// yet the next one receives the context with that trace id and flags 00; a
// sampled request after it is exported whole. The counters count both.
func TestSamplingUnsampledParentPropagates(t *testing.T) {
	sink := StartSink(t)
	ports := FreePorts(t, 2)
	front := StartApp(t, Go, ports[0], "front-svc")
	back := StartApp(t, Go, ports[1], "back-svc")
	metrics := FreePort(t)
	col := StartCollector(t, CollectorConfig{
		Instrument:   []Selector{PortsSelector(ports...)},
		SinkEndpoint: sink.Endpoint(),
		EBPF:         propagationAll,
		MetricsPort:  metrics,
	})
	waitTraced(t, sink, front)
	waitTraced(t, sink, back)
	assert.Contains(t, col.Output(), `"sampler": "parentbased_always_on"`, "the start log names the sampler")
	time.Sleep(settle) // the warm-up requests' spans and counts are all in
	sampled0, unsampled0 := samplerCounters(t, metrics)
	require.Equal(t, len(sink.Spans()), sampled0, "warm-up: every sampled request exported")

	apps := []*App{front, back}
	trace := randomTraceID()
	incoming := "00-" + trace + "-00f067aa0ba902b7-00"
	hops := curlChain(t, ChainURL(apps, "/headers", "chain", "unsampled"), 2, "-H", "traceparent: "+incoming)
	assert.Equal(t, incoming, hops[0].Traceparent, "front-svc received the incoming traceparent")
	require.Equal(t, 1, hops[1].TraceparentCount, "back-svc received one traceparent: %v", hops[1].Headers)
	tid, parent := traceparentIDs(t, hops[1].Traceparent)
	assert.Equal(t, trace, tid, "back-svc received the unsampled trace: %s", hops[1].Traceparent)
	assert.NotEqual(t, "00f067aa0ba902b7", parent, "back-svc's parent is front-svc's CLIENT span, not the incoming parent")
	assert.Equal(t, "00", flagsOf(t, hops[1].Traceparent), "the flags are propagated as received: not sampled")

	// A sampled chain after it: once its spans are in, the unsampled
	// chain's would be too.
	sampledHops := curlChain(t, ChainURL(apps, "/headers", "chain", "sampled"), 2)
	sampledChain := waitChains(t, sink, apps, "sampled")["sampled"]
	checkChain(t, apps, sampledChain, sampledHops, "")
	for _, s := range sink.Spans() {
		assert.NotEqual(t, trace, s.TraceID, "a span of the unsampled trace was exported: %s", s)
		assert.NotEqual(t, "unsampled", tagOf(s), "a span of the unsampled chain was exported: %s", s)
	}

	// 3 unsampled (front SERVER and CLIENT, back SERVER), 3 sampled.
	sampled, unsampled := waitCounters(t, metrics, func(s, u int) bool { return u-unsampled0 >= 3 && s-sampled0 >= 3 })
	assert.Equal(t, 3, unsampled-unsampled0, "unsampled requests counted")
	assert.Equal(t, 3, sampled-sampled0, "sampled requests counted")
	assert.Equal(t, len(sink.Spans()), sampled, "every sampled request exported, nothing else")
}

// OTEL_TRACES_SAMPLER=always_off (the config sets no sampler) exports
// nothing; contexts are still made and propagated, with flags 02 (random
// trace id, not sampled), and every request is counted as unsampled.
func TestSamplingAlwaysOffFromEnv(t *testing.T) {
	sink := StartSink(t)
	ports := FreePorts(t, 2)
	front := StartApp(t, Go, ports[0], "front-svc")
	back := StartApp(t, Go, ports[1], "back-svc")
	metrics := FreePort(t)
	col := StartCollector(t, CollectorConfig{
		Instrument:   []Selector{PortsSelector(ports...)},
		SinkEndpoint: sink.Endpoint(),
		EBPF:         propagationAll,
		MetricsPort:  metrics,
		Env:          []string{"OTEL_TRACES_SAMPLER=always_off", "OTEL_TRACES_SAMPLER_ARG=0.5"},
	})
	// No span can show that the apps are traced: the start log's process
	// count does (they ran before the collector started).
	require.Contains(t, col.Output(), `"processes": 2`, "both apps traced from the start")
	assert.Contains(t, col.Output(), `"sampler": "always_off"`, "the start log names the sampler")
	assert.Contains(t, col.Output(), `"variable": "OTEL_TRACES_SAMPLER"`, "the variable used is logged")

	apps := []*App{front, back}
	const n = 20
	for i := range n {
		u := ChainURL(apps, "/headers", "chain", fmt.Sprintf("off-%d", i))
		var hops []Hop
		if i%2 == 0 {
			hops = curlChain(t, u, 2)
		} else {
			// A sampled parent is not followed either.
			hops = curlChain(t, u, 2, "-H", "traceparent: "+randomTraceparent())
		}
		require.Equal(t, 1, hops[1].TraceparentCount, "back-svc received a traceparent: %v", hops[1].Headers)
		want := "02"
		if i%2 == 1 {
			want = "00"
		}
		assert.Equal(t, want, flagsOf(t, hops[1].Traceparent), "request %d: flags propagated not sampled: %s", i, hops[1].Traceparent)
	}
	// 3 spans per chain, all counted unsampled.
	sampled, unsampled := waitCounters(t, metrics, func(s, u int) bool { return u >= 3*n })
	assert.Equal(t, 3*n, unsampled, "unsampled requests counted")
	assert.Zero(t, sampled, "sampled requests counted")
	time.Sleep(settle)
	assert.Empty(t, sink.Spans(), "always_off exports nothing")
	assert.Zero(t, sink.Requests(), "nothing was sent to the sink")
}

// An unknown sampler, or a ratio out of range, stops the collector at once
// with a message naming the setting or the variable.
func TestSamplingBadSamplerFailsClearly(t *testing.T) {
	bin := DistroPath(t)
	cfg := CollectorConfig{
		Instrument:   []Selector{PortsSelector(FreePort(t))},
		SinkEndpoint: "http://127.0.0.1:1",
		Sampler:      map[string]string{"name": "jaeger_remote"},
	}
	res := RunDistro(t, bin, t.TempDir(), cfg.YAML(), nil, 30*time.Second)
	assert.NotEqual(t, 0, res.ExitCode)
	assert.Contains(t, res.Stderr, `sampler: unknown sampler "jaeger_remote"; want always_on, always_off, traceidratio`)

	cfg.Sampler = map[string]string{"name": "parentbased_traceidratio", "arg": `"1.5"`}
	res = RunDistro(t, bin, t.TempDir(), cfg.YAML(), nil, 30*time.Second)
	assert.NotEqual(t, 0, res.ExitCode)
	assert.Contains(t, res.Stderr, `sampler: arg "1.5": parentbased_traceidratio wants a ratio from 0 to 1`)

	// From the environment, when the configuration sets no sampler.
	cfg.Sampler = nil
	t.Setenv("OTEL_TRACES_SAMPLER", "traceidratio")
	t.Setenv("OTEL_TRACES_SAMPLER_ARG", "2")
	res = RunDistro(t, bin, t.TempDir(), cfg.YAML(), nil, 30*time.Second)
	assert.NotEqual(t, 0, res.ExitCode)
	assert.Contains(t, res.Stderr, `OTEL_TRACES_SAMPLER_ARG: arg "2": traceidratio wants a ratio from 0 to 1`)
}
