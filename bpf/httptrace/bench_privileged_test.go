//go:build linux && privileged

package httptrace

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
)

// BenchmarkTracedRequest reports the kernel time the tracer spends per
// request to a traced Go server (bpf_prog run time, all processes).
func BenchmarkTracedRequest(b *testing.B) {
	for _, v := range []string{VariantSocket, VariantTPBTF} {
		for _, floor := range []bool{false, true} {
			name := v
			if floor {
				name += "/return-at-once"
			}
			b.Run(name, func(b *testing.B) { benchTracedRequest(b, v, floor) })
		}
	}
}

func benchTracedRequest(b *testing.B, variant string, floor bool) {
	if err := rlimit.RemoveMemlock(); err != nil {
		b.Fatal(err)
	}
	bin := filepath.Join(b.TempDir(), "srv")
	if out, err := exec.Command("go", "build", "-o", bin, "../../test/bench/server").CombinedOutput(); err != nil {
		b.Fatalf("%v: %s", err, out)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	srv := exec.Command(bin, fmt.Sprint(port))
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	url := fmt.Sprintf("http://127.0.0.1:%d/hello", port)
	for i := 0; i < 100; i++ {
		if _, err := http.Get(url); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	tr, err := Load(Options{RingBufferSize: 1 << 24, WakeupRecords: 64, TrackRequestHeaders: true, Variant: variant, ReturnAtOnce: floor})
	if err != nil {
		b.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Attach(); err != nil {
		b.Fatal(err)
	}
	rd, err := ringbuf.NewReader(tr.Events())
	if err != nil {
		b.Fatal(err)
	}
	defer rd.Close()
	go func() {
		// Drain like the receiver: poll, woken only past the watermark.
		var rec ringbuf.Record
		for {
			rd.SetDeadline(time.Now().Add(200 * time.Millisecond))
			if err := rd.ReadInto(&rec); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
		}
	}()
	if err := tr.Trace(uint32(srv.Process.Pid)); err != nil {
		b.Fatal(err)
	}
	stats, err := ebpf.EnableStats(0) // BPF_STATS_RUN_TIME
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	runs0, time0, _ := tr.IOStats()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	b.StopTimer()
	runs1, time1, _ := tr.IOStats()
	b.ReportMetric(float64(time1-time0)/float64(b.N), "bpf-ns/req")
	b.ReportMetric(float64(runs1-runs0)/float64(b.N), "runs/req")
}
