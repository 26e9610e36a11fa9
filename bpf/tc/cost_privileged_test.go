//go:build linux && privileged

package tc

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ebpftracing/ebpftracingreceiver/bpf/tc/tctest"
)

// progStats is a program's bpf_stats: total run time and runs.
func progStats(t *testing.T, p *ebpf.Program) (time.Duration, uint64) {
	t.Helper()
	st, err := p.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st.Runtime, st.RunCount
}

// TestCost measures, with bpf_stats, the BPF time of both programs per
// packet and per request on a keep-alive connection: requests without a
// context (every packet of the host pays this) and requests each with its
// own context (option written, read and removed). Figures in the README.
func TestCost(t *testing.T) {
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatalf("enable bpf_stats: %v", err)
	}
	defer stats.Close()
	p, err := tctest.NewPair("tcb", 90)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	c := startCarrier(t, p, BackendTCX)
	defer c.Close()
	pe := newPeer(t, c, p)
	const n = 2000
	egress, ingress := c.Programs()
	for _, carry := range []bool{false, true} {
		e0, en0 := progStats(t, egress)
		i0, in0 := progStats(t, ingress)
		w0, _ := c.ReadCounters()
		for seq := uint16(1); seq <= n; seq++ {
			pe.post(seq, 200, carry)
		}
		e1, en1 := progStats(t, egress)
		i1, in1 := progStats(t, ingress)
		w1, _ := c.ReadCounters()
		if en1 == en0 || in1 == in0 {
			t.Fatal("no runs counted: bpf_stats off?")
		}
		if carry && w1.Written-w0.Written < n {
			t.Fatalf("%d options written for %d requests", w1.Written-w0.Written, n)
		}
		eNs := float64(e1-e0) / float64(en1-en0)
		iNs := float64(i1-i0) / float64(in1-in0)
		t.Logf("context %v: egress %.0f ns/run × %.2f runs/request, ingress %.0f ns/run × %.2f runs/request; per request %.0f ns (both ends, all interfaces); options written %d",
			carry, eNs, float64(en1-en0)/n, iNs, float64(in1-in0)/n,
			float64((e1-e0)+(i1-i0))/n, w1.Written-w0.Written)
	}
}
