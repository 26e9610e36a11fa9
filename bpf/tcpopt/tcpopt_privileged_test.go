//go:build linux && privileged

package tcpopt

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf/rlimit"

	"github.com/ebpftracing/ebpftracingreceiver/bpf/httptrace"
	"github.com/ebpftracing/ebpftracingreceiver/internal/kernelprobe"
)

func load(t *testing.T) (*httptrace.Tracer, *Carrier) {
	t.Helper()
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	report, err := kernelprobe.Probe()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := httptrace.Load(httptrace.Options{TrackRequestHeaders: true, Carrier: true})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	// The tracer's programs (tcp_sendmsg_locked with the carrier) load too.
	if err := tr.Attach(); err != nil {
		t.Fatalf("%+v", err)
	}
	c, err := Load(tr.Shared())
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Attach(report.CgroupV2); err != nil {
		t.Fatal(err)
	}
	return tr, c
}

func keyOf(local, remote netip.AddrPort) tcpoptCarrierKey {
	return tcpoptCarrierKey{
		LocalAddr:  netip.AddrFrom16(local.Addr().As16()).As16(),
		RemoteAddr: netip.AddrFrom16(remote.Addr().As16()).As16(),
		LocalPort:  local.Port(),
		RemotePort: remote.Port(),
	}
}

// The option written from carrier_out on a traced process's connection is
// parsed into carrier_in on the accepting side, keyed from its view; each
// new request number gives a new entry with the receiver's own number;
// only the first segments of a request carry it; a connection without an
// entry carries nothing.
func TestCarrierLoopback(t *testing.T) {
	tr, c := load(t)
	if err := tr.Trace(uint32(os.Getpid())); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ network, addr string }{{"tcp4", "127.0.0.1:0"}, {"tcp6", "[::1]:0"}} {
		t.Run(tc.network, func(t *testing.T) { testCarrierLoopback(t, tr, c, tc.network, tc.addr) })
	}
}

func testCarrierLoopback(t *testing.T, tr *httptrace.Tracer, c *Carrier, network, addr string) {
	shared := tr.Shared()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		s, err := ln.Accept()
		if err == nil {
			accepted <- s
		}
	}()
	cli, err := net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv := <-accepted
	defer srv.Close()
	cliLocal := cli.LocalAddr().(*net.TCPAddr).AddrPort()
	cliRemote := cli.RemoteAddr().(*net.TCPAddr).AddrPort()
	out := keyOf(cliLocal, cliRemote)
	in := keyOf(cliRemote, cliLocal) // the server's view

	exchange := func(n int) {
		t.Helper()
		msg := bytes.Repeat([]byte("x"), n)
		if _, err := cli.Write(msg); err != nil {
			t.Fatal(err)
		}
		_ = srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(srv, make([]byte, n)); err != nil {
			t.Fatal(err)
		}
	}
	before, _ := c.ReadCounters()
	exchange(100)
	var got tcpoptCarrierCtx
	if err := shared.CarrierIn.Lookup(&in, &got); err == nil {
		t.Fatalf("carrier_in has %+v without any carrier_out entry", got)
	}
	if n, _ := c.ReadCounters(); n.Written != before.Written {
		t.Fatalf("options written without a carrier_out entry: %d", n.Written-before.Written)
	}

	for seq, span := range [][8]byte{{1, 2, 3, 4, 5, 6, 7, 8}, {9, 9, 9, 9, 9, 9, 9, 9}} {
		want := tcpoptCarrierCtx{
			TraceId:    [16]byte{0xaa, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, byte(seq)},
			SpanId:     span,
			TraceFlags: 1,
			Seq:        uint16(seq + 1),
		}
		if err := shared.CarrierOut.Put(&out, &want); err != nil {
			t.Fatal(err)
		}
		before, _ := c.ReadCounters()
		for i := 0; i < 10; i++ {
			exchange(100)
		}
		if err := shared.CarrierIn.Lookup(&in, &got); err != nil {
			n, _ := c.ReadCounters()
			var k tcpoptCarrierKey
			var v tcpoptCarrierCtx
			for it := shared.CarrierIn.Iterate(); it.Next(&k, &v); {
				t.Logf("carrier_in: %+v -> %+v", k, v)
			}
			t.Fatalf("request %d: no carrier_in entry for %+v: %v (counters %+v)", seq+1, in, err, n)
		}
		if got.TraceId != want.TraceId || got.SpanId != want.SpanId || got.TraceFlags != 1 || got.Seq != uint16(seq+1) {
			t.Fatalf("request %d: carrier_in %+v, want %+v", seq+1, got, want)
		}
		after, _ := c.ReadCounters()
		// Ten writes of one request: only its first 4 data segments
		// carry it (no pure ACK: the server sends no data to be acked).
		if w := after.Written - before.Written; w != 4 {
			t.Fatalf("request %d: %d options written, want 4", seq+1, w)
		}
		if after.Parsed-before.Parsed != after.Written-before.Written {
			t.Fatalf("request %d: %d written, %d parsed", seq+1, after.Written-before.Written, after.Parsed-before.Parsed)
		}
		// httptrace takes the entry: the next request makes a new one.
		if err := shared.CarrierIn.Delete(&in); err != nil {
			t.Fatal(err)
		}
	}
	runs, rt, err := c.Stats()
	if err == nil && runs > 0 {
		t.Logf("tcpopt_sockops: %d runs, %v (%.0f ns/run; needs kernel.bpf_stats_enabled)", runs, rt, float64(rt.Nanoseconds())/float64(runs))
	}
}
