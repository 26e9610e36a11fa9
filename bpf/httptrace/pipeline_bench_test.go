//go:build linux

package httptrace

import (
	"runtime"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
)

// BenchmarkPipelineFloor measures the user-space work per span that no
// pipeline setting removes: decode, span build (pdata) and the exporter's
// OTLP encoding (the size pass and the marshal otlp_http and otlp_grpc
// run), for batches of 1000 records, with the GC that their allocations
// cause. What the collector spends above this per span is the ring buffer
// read and wakeups, the pipeline's goroutine hand-overs, the HTTP or gRPC
// send and the kernel's share of both.
func BenchmarkPipelineFloor(b *testing.B) {
	const batch = 1000
	records := benchRecords(b, 4096)
	procs := map[uint32]spans.Process{
		1201: {PID: 1201, ServiceName: "checkout", ExeName: "checkoutd"},
		1202: {PID: 1202, ServiceName: "checkout", ExeName: "checkoutd"},
		1300: {PID: 1300, ServiceName: "", ExeName: "python3"},
		4711: {PID: 4711, ServiceName: "payments", ExeName: "java"},
	}
	for _, stage := range []string{"build", "build+marshal"} {
		b.Run(stage, func(b *testing.B) {
			clock := NewClock(2 * time.Hour)
			bld := spans.NewBuilder("node-1", "v0.1.0")
			rec := make([]byte, 0, EventSize+8)
			var req spans.Request
			var dec Decoder
			var m ptrace.ProtoMarshaler
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			n, i, bytes := 0, 0, 0
			b.ReportAllocs()
			for b.Loop() {
				for range batch {
					rec = append(rec[:0], records[i%len(records)]...)
					i++
					if err := dec.Decode(rec, clock, &req); err != nil {
						b.Fatal(err)
					}
					bld.Append(&req, procs[req.PID])
				}
				n += bld.Len()
				td := bld.Flush()
				if stage == "build" {
					continue
				}
				buf, err := m.MarshalTraces(td)
				if err != nil {
					b.Fatal(err)
				}
				bytes += len(buf)
			}
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/span")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(n), "allocs/span")
			b.ReportMetric(float64(after.NumGC-before.NumGC)*1e6/float64(n), "GCs/Mspan")
			if bytes > 0 {
				b.ReportMetric(float64(bytes)/float64(n), "B-encoded/span")
			}
		})
	}
}
