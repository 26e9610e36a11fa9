//go:build linux

package main

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// floorEnv makes every BPF program of the collector return at once (the
// loaders read it), so a floor run measures what attaching costs before any
// program does work: the hooks' own overhead. A collector that does not know
// it runs normally, which the report detects from the spans it still sends.
const floorEnv = "EBPFTRACING_BENCH_FLOOR=1"

// collectorConfig is the collector's YAML for one run: the receiver
// selecting ports with ebpf.context_propagation mode and the extra ebpf
// settings, batch → otlp_http to the sink (the variant's processor and
// exporter settings added, or no batch processor), internal metrics (at
// level) on a Prometheus pull reader on 127.0.0.1:metricsPort, and the
// pprof extension on 127.0.0.1:pprofPort unless it is 0.
func collectorConfig(ports []int, mode string, ebpf []string, v variant, sinkEndpoint string, metricsPort int, compression, level string, pprofPort int) string {
	var b strings.Builder
	ps := make([]string, len(ports))
	for i, p := range ports {
		ps[i] = strconv.Itoa(p)
	}
	fmt.Fprintf(&b, `receivers:
  ebpf_tracing:
    discovery:
      instrument:
        - open_ports: "%s"
    ebpf:
      context_propagation: %s
`, strings.Join(ps, ","), mode)
	writeKVs(&b, "      ", ebpf)
	processors := "[batch]"
	if v.noBatch {
		processors = "[]"
	} else {
		b.WriteString("processors:\n  batch:\n")
		writeKVs(&b, "    ", v.processor)
	}
	fmt.Fprintf(&b, `exporters:
  otlp_http:
    endpoint: %s
    compression: %s
`, sinkEndpoint, compression)
	writeKVs(&b, "    ", v.exporter)
	extensions := "[]"
	if pprofPort != 0 {
		extensions = "[pprof]"
		fmt.Fprintf(&b, `extensions:
  pprof:
    endpoint: 127.0.0.1:%d
`, pprofPort)
	}
	fmt.Fprintf(&b, `service:
  extensions: %s
  telemetry:
    logs:
      level: info
    metrics:
      level: %s
      readers:
        - pull:
            exporter:
              prometheus:
                host: 127.0.0.1
                port: %d
  pipelines:
    traces:
      receivers: [ebpf_tracing]
      processors: %s
      exporters: [otlp_http]
`, extensions, level, metricsPort, processors)
	return b.String()
}

// writeKVs writes k=v settings as YAML lines under indent; the collector
// nests a key holding "::" (a::b: v is a: {b: v}).
func writeKVs(b *strings.Builder, indent string, kvs []string) {
	for _, kv := range kvs {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(b, "%s%s: %s\n", indent, k, v)
	}
}

var processesRE = regexp.MustCompile(`ebpf_tracing started.*"processes": ?(\d+)`)

// startedProcesses reads the process count of the receiver's start log line.
func startedProcesses(log []byte) (int, error) {
	m := processesRE.FindSubmatch(log)
	if m == nil {
		return 0, errors.New(`the collector is ready but logged no "ebpf_tracing started ... processes: N" line`)
	}
	return strconv.Atoi(string(m[1]))
}

func ebpfDesc(kv []string) string {
	if len(kv) == 0 {
		return "receiver defaults"
	}
	return strings.Join(kv, ", ")
}

// collectorCounters are the collector's cumulative counters in one scrape
// of its internal metrics.
type collectorCounters struct {
	read     float64 // receiver_ebpf_tracing_events_read: ring-buffer records
	lost     float64 // receiver_ebpf_tracing_events_lost: ring buffer full
	dropped  float64 // receiver_ebpf_tracing_requests_dropped: kernel maps full
	emitted  float64 // receiver_ebpf_tracing_spans_emitted
	injected float64 // receiver_ebpf_tracing_headers_injected
	sent     float64 // otelcol_exporter_sent_spans
	failed   float64 // otelcol_exporter_send_failed_spans + enqueue_failed_spans
	// Reader wakeups, from a receiver metric whose name holds "wakeup";
	// hasWakeups is false when the collector exports none.
	wakeups    float64
	hasWakeups bool
	// Go heap bytes allocated, cumulative
	// (otelcol_process_runtime_total_alloc_bytes, runtime.MemStats.TotalAlloc).
	alloc    float64
	hasAlloc bool
}

func countersFrom(m promSamples) collectorCounters {
	return collectorCounters{
		read:       m.sum("ebpf_tracing_events_read"),
		lost:       m.sum("ebpf_tracing_events_lost"),
		dropped:    m.sum("ebpf_tracing_requests_dropped"),
		emitted:    m.sum("ebpf_tracing_spans_emitted"),
		injected:   m.sum("ebpf_tracing_headers_injected"),
		sent:       m.sum("otelcol_exporter_sent_spans"),
		failed:     m.sum("otelcol_exporter_send_failed_spans") + m.sum("otelcol_exporter_enqueue_failed_spans"),
		wakeups:    m.sum("ebpf_tracing", "wakeup"),
		hasWakeups: m.has("ebpf_tracing", "wakeup"),
		alloc:      m.sum("otelcol_process_runtime_total_alloc_bytes"),
		hasAlloc:   m.has("otelcol_process_runtime_total_alloc_bytes"),
	}
}

// minus is the increase from b to c. A counter first exported after b
// (its first add) counts from 0.
func (c collectorCounters) minus(b collectorCounters) collectorCounters {
	d := c
	d.read -= b.read
	d.lost -= b.lost
	d.dropped -= b.dropped
	d.emitted -= b.emitted
	d.injected -= b.injected
	d.sent -= b.sent
	d.failed -= b.failed
	d.wakeups -= b.wakeups
	d.alloc -= b.alloc
	d.hasAlloc = c.hasAlloc && b.hasAlloc
	return d
}
