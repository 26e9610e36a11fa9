//go:build linux && privileged

package httptrace

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
)

// samplerReq is one request sent to the traced server: with a traceparent
// of trace id trace and flags flags, or none when trace is "".
type samplerReq struct {
	trace string
	flags byte
}

func randomTrace(t *testing.T) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// sendSampled sends reqs one connection each to the python server on port,
// waits until the kernel counted every finished SERVER span (sampled or
// not), and returns the records emitted and the counters' increments.
func sendSampled(t *testing.T, tr *Tracer, rd *ringbuf.Reader, port int, reqs []samplerReq) (map[string]spans.Request, []spans.Request, Counters) {
	t.Helper()
	before, err := tr.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	const parent = "00f067aa0ba902b7"
	for _, r := range reqs {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		hdr := ""
		if r.trace != "" {
			hdr = fmt.Sprintf("traceparent: 00-%s-%s-%02x\r\n", r.trace, parent, r.flags)
		}
		fmt.Fprintf(c, "HEAD /hello HTTP/1.1\r\nHost: x\r\n%s\r\n", hdr)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 512)); err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	var now Counters
	deadline := time.Now().Add(5 * time.Second)
	for {
		if now, err = tr.ReadCounters(); err != nil {
			t.Fatal(err)
		}
		if now.Sampled+now.Unsampled-before.Sampled-before.Unsampled >= uint64(len(reqs)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	delta := Counters{Sampled: now.Sampled - before.Sampled, Unsampled: now.Unsampled - before.Unsampled}
	if delta.Sampled+delta.Unsampled != uint64(len(reqs)) {
		t.Fatalf("kernel counted %d sampled + %d unsampled spans, want %d in all", delta.Sampled, delta.Unsampled, len(reqs))
	}
	// Everything counted as sampled is in the ring buffer by now.
	clock := NewClock(monoNow(t))
	byTrace := map[string]spans.Request{}
	var roots []spans.Request
	for {
		rd.SetDeadline(time.Now().Add(200 * time.Millisecond))
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var r spans.Request
		if err := Decode(rec.RawSample, clock, &r); err != nil {
			t.Fatal(err)
		}
		if r.ParentSpanID.IsEmpty() {
			roots = append(roots, r)
		} else {
			byTrace[r.TraceID.String()] = r
		}
	}
	if got := uint64(len(byTrace) + len(roots)); got != delta.Sampled {
		t.Errorf("%d records emitted, the kernel counted %d sampled", got, delta.Sampled)
	}
	return byTrace, roots, delta
}

// The head sampler decides in the kernel: the flags of each context, and
// whether its span reaches user space, for every sampler kind. traceidratio
// is held to the Go reference of the spec rule (RatioSampled), id by id.
func TestTracerSampler(t *testing.T) {
	port := freePort(t)
	py := startPython(t, port)
	load := func(t *testing.T, s Sampler) (*Tracer, *ringbuf.Reader) {
		tr, rd := attached(t, Options{RingBufferSize: 1 << 20, TrackRequestHeaders: true, Sampler: s})
		if err := tr.Trace(uint32(py.Process.Pid)); err != nil {
			t.Fatal(err)
		}
		return tr, rd
	}

	t.Run("parentbased_always_on (default)", func(t *testing.T) {
		tr, rd := load(t, Sampler{})
		kept, unsampledTrace, random := randomTrace(t), randomTrace(t), randomTrace(t)
		byTrace, roots, n := sendSampled(t, tr, rd, port, []samplerReq{
			{}, {}, {kept, 0x01}, {unsampledTrace, 0x00}, {random, 0x03},
		})
		if n.Sampled != 4 || n.Unsampled != 1 {
			t.Errorf("sampled %d unsampled %d, want 4 and 1", n.Sampled, n.Unsampled)
		}
		if len(roots) != 2 {
			t.Fatalf("%d root spans, want 2", len(roots))
		}
		for _, r := range roots {
			if r.TraceFlags != 0x03 {
				t.Errorf("root flags %#x, want 0x03 (sampled, random trace id)", r.TraceFlags)
			}
		}
		if r, ok := byTrace[kept]; !ok || r.TraceFlags != 0x01 {
			t.Errorf("sampled parent: span %v flags %#x, want emitted with the parent's flags 0x01", ok, r.TraceFlags)
		}
		if r, ok := byTrace[random]; !ok || r.TraceFlags != 0x03 {
			t.Errorf("sampled random parent: span %v flags %#x, want emitted with 0x03", ok, r.TraceFlags)
		}
		if _, ok := byTrace[unsampledTrace]; ok {
			t.Errorf("the span of an unsampled parent was emitted")
		}
	})

	t.Run("always_off", func(t *testing.T) {
		tr, rd := load(t, Sampler{Root: RootAlwaysOff, IgnoreParent: true})
		byTrace, roots, n := sendSampled(t, tr, rd, port, []samplerReq{{}, {randomTrace(t), 0x01}, {randomTrace(t), 0x00}})
		if n.Sampled != 0 || n.Unsampled != 3 || len(byTrace)+len(roots) != 0 {
			t.Errorf("sampled %d unsampled %d emitted %d, want 0, 3, 0", n.Sampled, n.Unsampled, len(byTrace)+len(roots))
		}
	})

	t.Run("parentbased_always_off", func(t *testing.T) {
		tr, rd := load(t, Sampler{Root: RootAlwaysOff})
		kept := randomTrace(t)
		byTrace, roots, n := sendSampled(t, tr, rd, port, []samplerReq{{}, {}, {kept, 0x01}, {randomTrace(t), 0x00}})
		if n.Sampled != 1 || n.Unsampled != 3 || len(roots) != 0 {
			t.Errorf("sampled %d unsampled %d roots %d, want 1, 3, 0", n.Sampled, n.Unsampled, len(roots))
		}
		if r, ok := byTrace[kept]; !ok || r.TraceFlags != 0x01 {
			t.Errorf("sampled parent: span %v flags %#x, want emitted with 0x01", ok, r.TraceFlags)
		}
	})

	t.Run("always_on ignores an unsampled parent", func(t *testing.T) {
		tr, rd := load(t, Sampler{Root: RootAlwaysOn, IgnoreParent: true})
		tid := randomTrace(t)
		byTrace, _, n := sendSampled(t, tr, rd, port, []samplerReq{{tid, 0x00}})
		if r, ok := byTrace[tid]; n.Sampled != 1 || !ok || r.TraceFlags != 0x01 {
			t.Errorf("span %v flags %#x, want emitted with the sampled bit set (0x01)", ok, r.TraceFlags)
		}
	})

	t.Run("traceidratio 0.5 decides on the trace id", func(t *testing.T) {
		const ratio = 0.5
		tr, rd := load(t, Sampler{Root: RootRatio, IgnoreParent: true, Ratio: ratio})
		var reqs []samplerReq
		for i := range 60 {
			if i%3 == 0 {
				reqs = append(reqs, samplerReq{})
			} else {
				reqs = append(reqs, samplerReq{randomTrace(t), byte(i % 2)})
			}
		}
		byTrace, roots, _ := sendSampled(t, tr, rd, port, reqs)
		th := RatioThreshold(ratio)
		for _, r := range reqs {
			if r.trace == "" {
				continue
			}
			var id [16]byte
			hex.Decode(id[:], []byte(r.trace))
			want := RatioSampled(id, th)
			got, ok := byTrace[r.trace]
			if ok != want {
				t.Errorf("trace %s (parent flags %#x): emitted %v, want %v", r.trace, r.flags, ok, want)
			}
			if ok && got.TraceFlags != 0x01 {
				t.Errorf("trace %s: flags %#x, want the parent's with the sampled bit set (0x01)", r.trace, got.TraceFlags)
			}
		}
		for _, r := range roots {
			if !RatioSampled(r.TraceID, th) || r.TraceFlags != 0x03 {
				t.Errorf("root %s emitted with flags %#x: the rule says %v", r.TraceID, r.TraceFlags, RatioSampled(r.TraceID, th))
			}
		}
	})

	t.Run("parentbased_traceidratio 0 keeps sampled parents", func(t *testing.T) {
		tr, rd := load(t, Sampler{Root: RootRatio, Ratio: 0})
		kept := randomTrace(t)
		byTrace, roots, n := sendSampled(t, tr, rd, port, []samplerReq{{}, {}, {}, {kept, 0x01}})
		if _, ok := byTrace[kept]; n.Sampled != 1 || !ok || len(roots) != 0 {
			t.Errorf("sampled %d, parent's span %v, roots %d: want 1, true, 0", n.Sampled, ok, len(roots))
		}
	})
}
