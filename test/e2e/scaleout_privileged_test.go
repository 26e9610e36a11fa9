//go:build linux && privileged

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The scale-out topology of deploy/kubernetes (README "Scale-out"): agents
// (one ebpf_tracing collector per node) export through the load_balancing
// exporter, keyed by trace id, to a tier of gateway collectors that sample
// whole traces with tail_sampling. Here the two "nodes" are two collectors
// on this host, each tracing half of a chain's services (by port).

// scaleOutDecisionWait is the gateways' tail_sampling decision_wait: a
// trace's spans must all be at one gateway this long after its first one.
const scaleOutDecisionWait = 2 * time.Second

// gatewayYAML is a gateway collector: OTLP/gRPC in on 127.0.0.1:otlpPort,
// tail_sampling keeping only the traces of at least minSpans spans (so a
// trace split over two gateways is dropped by both), OTLP/HTTP out to sink.
func gatewayYAML(otlpPort, healthPort, minSpans int, sink string) string {
	return fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:%d
processors:
  tail_sampling:
    decision_wait: %s
    num_traces: 10000
    policies:
      - name: whole-chains
        type: span_count
        span_count:
          min_spans: %d
exporters:
  otlp_http:
    endpoint: %s
    compression: none
    sending_queue:
      enabled: false
    retry_on_failure:
      enabled: false
extensions:
  health_check:
    endpoint: 127.0.0.1:%d
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [tail_sampling]
      exporters: [otlp_http]
  telemetry:
    metrics:
      level: none
`, otlpPort, scaleOutDecisionWait, minSpans, sink, healthPort)
}

// loadBalancingYAML is the agents' exporter: load_balancing by trace id over
// the gateways' OTLP/gRPC endpoints (a static list here; the dns resolver on
// the gateways' headless Service in Kubernetes).
func loadBalancingYAML(gatewayPorts ...int) string {
	var hosts []string
	for _, p := range gatewayPorts {
		hosts = append(hosts, fmt.Sprintf("127.0.0.1:%d", p))
	}
	return fmt.Sprintf(`    routing_key: traceID
    protocol:
      otlp:
        tls:
          insecure: true
        timeout: 5s
    resolver:
      static:
        hostnames: [%s]
`, strings.Join(hosts, ", "))
}

// TestScaleOutLoadBalancingToGateways: two agents, each tracing two of a
// four-service chain's services (a and c, b and d: every trace has spans from
// both), export through load_balancing to two gateways. Of 200 chains, every
// trace arrives complete (its 7 spans) on exactly one gateway, and both
// gateways get some; single-span traces are dropped by tail_sampling.
func TestScaleOutLoadBalancingToGateways(t *testing.T) {
	const (
		chains = 200
		// A SERVER span per service, a CLIENT span per service but the last.
		spansPerChain = 2*4 - 1
		workers       = 4
		singles       = 10
	)
	specs := []appSpec{{Python, "so-a"}, {Go, "so-b"}, {Python, "so-c"}, {Go, "so-d"}}
	ports := FreePorts(t, len(specs))
	apps := make([]*App, len(specs))
	for i, s := range specs {
		apps[i] = StartApp(t, s.lang, ports[i], s.service)
	}

	gwPorts := FreePorts(t, 4)
	sinks := []*Sink{StartSink(t), StartSink(t)}
	for i := range sinks {
		StartCollectorYAML(t, gatewayYAML(gwPorts[i], gwPorts[2+i], spansPerChain, sinks[i].Endpoint()), nil, gwPorts[2+i])
	}
	lb := loadBalancingYAML(gwPorts[0], gwPorts[1])
	for _, sel := range [][]int{{ports[0], ports[2]}, {ports[1], ports[3]}} {
		StartCollector(t, CollectorConfig{
			Instrument:   []Selector{PortsSelector(sel...)},
			EBPF:         propagationAll,
			ExporterName: "load_balancing",
			ExporterYAML: lb,
		})
	}

	// Warm-up: chains until one arrives whole, so both agents trace their
	// apps and propagate (a single request's trace would be dropped).
	deadline := time.Now().Add(2 * spanTimeout)
	for i := 0; ; i++ {
		tag := fmt.Sprintf("warm-%d", i)
		_ = curlChainErr(t.Context(), ChainURL(apps, "/headers", "chain", tag))
		time.Sleep(scaleOutDecisionWait + 500*time.Millisecond)
		if len(sinks[0].Matching(withTag(tag)))+len(sinks[1].Matching(withTag(tag))) > 0 {
			break
		}
		require.False(t, time.Now().After(deadline), "no whole warm-up chain at a gateway; gateway sinks:\n%s\n%s", sinks[0].Dump(), sinks[1].Dump())
	}

	tags := make(chan string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	for range workers {
		wg.Go(func() {
			for tag := range tags {
				if err := curlChainErr(t.Context(), ChainURL(apps, "/headers", "chain", tag)); err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("chain %s: %v", tag, err))
					mu.Unlock()
				}
			}
		})
	}
	start := time.Now()
	for i := range chains {
		tags <- fmt.Sprintf("lb-%d", i)
	}
	close(tags)
	wg.Wait()
	t.Logf("%d chains in %v", chains, time.Since(start).Round(time.Millisecond))
	require.Empty(t, failures)
	// Traces of one span each: tail_sampling must drop them all.
	for i := range singles {
		require.Equal(t, 200, curlStatus(t, apps[0].URL(fmt.Sprintf("/hello?chain=single-%d", i))))
	}

	isLB := func(s Span) bool { return strings.HasPrefix(tagOf(s), "lb-") }
	wait := time.Now().Add(spanTimeout + scaleOutDecisionWait)
	for len(sinks[0].Matching(isLB))+len(sinks[1].Matching(isLB)) < chains*spansPerChain && time.Now().Before(wait) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(scaleOutDecisionWait + settle)

	perGateway := [2]int{}
	for i := range chains {
		tag := fmt.Sprintf("lb-%d", i)
		var at [2][]Span
		for g, s := range sinks {
			at[g] = s.Matching(withTag(tag))
		}
		switch {
		case len(at[0]) > 0 && len(at[1]) > 0:
			t.Errorf("chain %s: trace split over both gateways (%d and %d spans)", tag, len(at[0]), len(at[1]))
			continue
		case len(at[0])+len(at[1]) == 0:
			t.Errorf("chain %s: at no gateway", tag)
			continue
		}
		g := 0
		if len(at[1]) > 0 {
			g = 1
		}
		perGateway[g]++
		spans := at[g]
		if !assert.Len(t, spans, spansPerChain, "chain %s at gateway %d", tag, g) {
			continue
		}
		services := map[string]int{}
		for _, s := range spans {
			assert.Equal(t, spans[0].TraceID, s.TraceID, "chain %s: one trace id: %s", tag, s)
			services[s.Service()]++
		}
		assert.Equal(t, map[string]int{"so-a": 2, "so-b": 2, "so-c": 2, "so-d": 1}, services, "chain %s: spans per service", tag)
	}
	t.Logf("traces per gateway: %v", perGateway)
	for g, n := range perGateway {
		assert.GreaterOrEqual(t, n, chains/10, "gateway %d got %d of %d traces: is load_balancing spreading by trace id?", g, n, chains)
	}
	for g, s := range sinks {
		assert.Empty(t, s.Matching(func(s Span) bool { return strings.HasPrefix(tagOf(s), "single-") }),
			"gateway %d kept single-span traces: is tail_sampling in the pipeline?", g)
	}
}

// curlChainErr is curlChain for worker goroutines: it returns an error
// instead of failing the test.
func curlChainErr(ctx context.Context, u string) error {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "/usr/bin/curl", "-sS", "--fail", "--max-time", "30", u)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("curl: %v: %s", err, stderr.String())
	}
	hops, err := ParseChain(stdout.String())
	if err != nil {
		return err
	}
	if len(hops) != 4 {
		return fmt.Errorf("%d hops, want 4: %s", len(hops), stdout.String())
	}
	return nil
}
