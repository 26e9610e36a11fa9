//go:build linux

package httptrace

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"

	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
)

// encode returns the ring buffer bytes of ev, as the kernel writes them
// (bpfel, the generated type's layout).
func encode(tb testing.TB, ev *httptraceHttpEvent) []byte {
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, ev); err != nil {
		tb.Fatal(err)
	}
	if buf.Len() != EventSize {
		tb.Fatalf("encoded %d bytes, want %d", buf.Len(), EventSize)
	}
	return buf.Bytes()
}

// referenceDecode is the obvious decoder: binary.Read into the bpf2go type,
// then field by field. Decode must give the same Request.
func referenceDecode(tb testing.TB, raw []byte, clock Clock) spans.Request {
	var ev httptraceHttpEvent
	if err := binary.Read(bytes.NewReader(raw[:EventSize]), binary.LittleEndian, &ev); err != nil {
		tb.Fatal(err)
	}
	str := func(b []int8, n uint8) string {
		l := min(int(n), len(b))
		out := make([]byte, l)
		for i := range out {
			out[i] = byte(b[i])
		}
		return string(out)
	}
	ip := func(b [16]uint8) netip.Addr {
		if ev.Family == 2 {
			return netip.AddrFrom4([4]byte(b[:4]))
		}
		return netip.AddrFrom16(b).Unmap()
	}
	return spans.Request{
		Kind:         spans.Kind(ev.Kind),
		Start:        clock.Time(ev.StartNs),
		End:          clock.Time(ev.EndNs),
		PID:          ev.Pid,
		TID:          ev.Tid,
		Method:       str(ev.Method[:], ev.MethodLen),
		Path:         str(ev.Path[:], ev.PathLen),
		Host:         str(ev.Host[:], ev.HostLen),
		Status:       int(ev.Status),
		ProtoMinor:   ev.ProtoMinor,
		Local:        netip.AddrPortFrom(ip(ev.LocalAddr), ev.LocalPort),
		Peer:         netip.AddrPortFrom(ip(ev.PeerAddr), ev.PeerPort),
		TraceID:      pcommon.TraceID(ev.TraceId),
		SpanID:       pcommon.SpanID(ev.SpanId),
		ParentSpanID: pcommon.SpanID(ev.ParentId),
		TraceFlags:   ev.TraceFlags,
		TLS:          ev.Tls != 0,
	}
}

// setStr copies s into a C char array and returns its length.
func setStr(dst []int8, s string) uint8 {
	for i := 0; i < len(dst) && i < len(s); i++ {
		dst[i] = int8(s[i])
	}
	return uint8(min(len(s), len(dst)))
}

// randomEvent fills every byte of an event at random, then makes some
// fields plausible so both address families and all lengths are covered,
// including lengths beyond the arrays.
func randomEvent(rng *rand.Rand) *httptraceHttpEvent {
	var ev httptraceHttpEvent
	b := make([]byte, EventSize)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	if err := binary.Read(bytes.NewReader(b), binary.LittleEndian, &ev); err != nil {
		panic(err)
	}
	switch rng.IntN(4) {
	case 0:
		ev.Family = 2 // AF_INET
	case 1:
		ev.Family = 10 // AF_INET6
	case 2:
		ev.Family = 10 // v4-mapped
		copy(ev.PeerAddr[:], []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff})
		copy(ev.LocalAddr[:], []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff})
	}
	if rng.IntN(2) == 0 {
		ev.MethodLen %= uint8(len(ev.Method) + 1)
		ev.PathLen %= uint8(len(ev.Path) + 1)
		ev.HostLen %= uint8(len(ev.Host) + 1)
	}
	return &ev
}

func TestDecodeMatchesReference(t *testing.T) {
	clock := NewClock(time.Hour)
	rng := rand.New(rand.NewPCG(1, 2))
	var got spans.Request
	for i := range 5000 {
		raw := encode(t, randomEvent(rng))
		if i%3 == 0 {
			// A record longer than an event (ring buffer records are
			// padded to 8 bytes) and at an odd offset.
			raw = append(append([]byte{0}, raw...), 0, 0, 0)[1:]
		}
		want := referenceDecode(t, raw, clock)
		if err := Decode(raw, clock, &got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("record %d: Decode\n got %+v\nwant %+v", i, got, want)
		}
	}
}

// TestDecoderMatchesReference runs records through one Decoder, each twice
// and with a few distinct records between, so its cache serves hits, misses
// and replaced slots: it must decode exactly like the reference.
func TestDecoderMatchesReference(t *testing.T) {
	clock := NewClock(time.Hour)
	rng := rand.New(rand.NewPCG(3, 4))
	var d Decoder
	var got spans.Request
	records := make([][]byte, 3000)
	for i := range records {
		records[i] = encode(t, randomEvent(rng))
	}
	for i := range 2 * len(records) {
		raw := records[(i/2+(i%2)*7)%len(records)]
		want := referenceDecode(t, raw, clock)
		if err := d.Decode(raw, clock, &got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("record %d: Decoder.Decode\n got %+v\nwant %+v", i, got, want)
		}
	}
}

// TestDecoderReusesStrings: once a Decoder has seen a record's method, path
// and Host, decoding it again allocates nothing.
func TestDecoderReusesStrings(t *testing.T) {
	clock := NewClock(time.Hour)
	raw := benchRecords(t, 1)[0]
	var d Decoder
	var r spans.Request
	if err := d.Decode(raw, clock, &r); err != nil {
		t.Fatal(err)
	}
	if r.Method == "" || r.Path == "" {
		t.Fatalf("bench record without method or path: %+v", r)
	}
	if n := testing.AllocsPerRun(100, func() { _ = d.Decode(raw, clock, &r) }); n != 0 {
		t.Fatalf("Decoder.Decode of a seen record: %v allocations, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = Decode(raw, clock, &r) }); n == 0 {
		t.Fatal("Decode without a Decoder allocated nothing: the test does not measure what it should")
	}
}

func TestDecodeShort(t *testing.T) {
	var r spans.Request
	if err := Decode(make([]byte, EventSize-1), NewClock(0), &r); err == nil {
		t.Fatal("Decode accepted a short record")
	}
}

// benchRecords returns n realistic records: SERVER and CLIENT spans of a
// few processes, IPv4 and IPv6 peers, paths with ids and queries, with and
// without Host headers.
func benchRecords(tb testing.TB, n int) [][]byte {
	rng := rand.New(rand.NewPCG(7, 11))
	v4 := func(a, b, c, d byte) [16]uint8 { return [16]uint8{a, b, c, d} }
	v6 := netip.MustParseAddr("2001:db8::10").As16()
	v6peer := netip.MustParseAddr("2001:db8::200").As16()
	methods := []string{"GET", "GET", "GET", "POST", "PUT", "DELETE"}
	pids := []uint32{1201, 1202, 1300, 4711}
	out := make([][]byte, n)
	for i := range out {
		ev := &httptraceHttpEvent{
			StartNs:    uint64(time.Hour) + uint64(i)*1000,
			Pid:        pids[rng.IntN(len(pids))],
			Status:     200,
			TraceFlags: 1,
			ProtoMinor: 1,
			Family:     2,
		}
		ev.EndNs = ev.StartNs + uint64(rng.IntN(5_000_000))
		ev.Tid = ev.Pid + uint32(rng.IntN(8))
		for j := range ev.TraceId {
			ev.TraceId[j] = byte(rng.Uint32())
		}
		for j := range ev.SpanId {
			ev.SpanId[j] = byte(rng.Uint32())
		}
		if rng.IntN(2) == 0 {
			for j := range ev.ParentId {
				ev.ParentId[j] = byte(rng.Uint32())
			}
		}
		switch rng.IntN(10) {
		case 0:
			ev.Status = 404
		case 1:
			ev.Status = 503
		}
		ev.MethodLen = setStr(ev.Method[:], methods[rng.IntN(len(methods))])
		var path, host string
		switch rng.IntN(5) {
		case 0:
			path = "/health"
		case 1:
			path = fmt.Sprintf("/api/v1/users/%d", rng.IntN(100000))
		case 2:
			path = fmt.Sprintf("/api/v1/orders/%d?include=items&page=%d", rng.IntN(100000), rng.IntN(20))
		case 3:
			path = fmt.Sprintf("/search?q=ebpf+%d&lang=en", rng.IntN(1000))
		default:
			path = "/static/app.js"
		}
		ev.PathLen = setStr(ev.Path[:], path)
		if rng.IntN(2) == 0 {
			// SERVER: clients from a few hosts, ephemeral ports.
			ev.Kind = uint8(spans.KindServer)
			ev.LocalPort = 8080
			ev.PeerPort = uint16(32768 + rng.IntN(28000))
			if rng.IntN(3) == 0 {
				ev.Family = 10
				ev.LocalAddr, ev.PeerAddr = v6, v6peer
				ev.PeerAddr[15] = byte(rng.IntN(16))
			} else {
				ev.LocalAddr = v4(10, 0, 0, 1)
				ev.PeerAddr = v4(10, 0, 1, byte(rng.IntN(16)))
			}
			switch rng.IntN(3) {
			case 0:
				host = "api.example.com"
			case 1:
				host = "api.example.com:8080"
			}
		} else {
			// CLIENT: calls to a few backends.
			ev.Kind = uint8(spans.KindClient)
			ev.LocalPort = uint16(32768 + rng.IntN(28000))
			ev.PeerPort = 9000
			if rng.IntN(3) == 0 {
				ev.Family = 10
				ev.LocalAddr, ev.PeerAddr = v6peer, v6
				ev.PeerAddr[15] = byte(rng.IntN(4))
			} else {
				ev.LocalAddr = v4(10, 0, 0, 1)
				ev.PeerAddr = v4(10, 0, 2, byte(rng.IntN(4)))
			}
			switch rng.IntN(3) {
			case 0:
				host = "payments.internal:9000"
			case 1:
				host = "[2001:db8::10]:9000"
			}
		}
		ev.HostLen = setStr(ev.Host[:], host)
		out[i] = encode(tb, ev)
	}
	return out
}

// BenchmarkDecodeBuild is the receiver's own cost per span: from raw ring
// buffer records to a finished ptrace.Traces batch (Decoder.Decode, Builder.Append,
// Flush), as readLoop does it. One op is one batch.
func BenchmarkDecodeBuild(b *testing.B) {
	records := benchRecords(b, 4096)
	procs := map[uint32]spans.Process{
		1201: {PID: 1201, ServiceName: "checkout", ExeName: "checkoutd"},
		1202: {PID: 1202, ServiceName: "checkout", ExeName: "checkoutd"},
		1300: {PID: 1300, ServiceName: "", ExeName: "python3"},
		4711: {PID: 4711, ServiceName: "payments", ExeName: "java"},
	}
	for _, batch := range []int{64, 1000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			clock := NewClock(2 * time.Hour)
			bld := spans.NewBuilder("node-1", "v0.1.0")
			// The buffer ringbuf.Reader.ReadInto reuses for every record.
			rec := make([]byte, 0, EventSize+8)
			var req spans.Request
			var dec Decoder
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			n, i := 0, 0
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
				if td := bld.Flush(); td.SpanCount() != batch {
					b.Fatalf("batch has %d spans, want %d", td.SpanCount(), batch)
				}
			}
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/span")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(n), "allocs/span")
		})
	}
}
