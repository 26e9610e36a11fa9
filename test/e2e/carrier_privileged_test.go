//go:build linux && privileged

package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// carrierCase is one packet carrier of TLS contexts: ebpf.packet_carrier
// and, for ip_option, ebpf.traffic_control_backend. ip_option×tcx and
// ip_option×tc are one line each here once bpf/tc exists.
type carrierCase struct {
	carrier, tcBackend string
}

var carrierCases = []carrierCase{
	{carrier: "tcp_option"},
	{carrier: "ip_option", tcBackend: "tcx"},
	{carrier: "ip_option", tcBackend: "tc"},
}

func (c carrierCase) name() string {
	if c.tcBackend == "" {
		return c.carrier
	}
	return c.carrier + "/" + c.tcBackend
}

// ebpf is the receiver's ebpf section for propagation; the TC programs of
// ip_option go on the interfaces of the namespaces ns (the veth pair's).
func (c carrierCase) ebpf(propagation string, ns [2]string) map[string]string {
	m := map[string]string{"context_propagation": propagation, "packet_carrier": c.carrier}
	if c.tcBackend != "" {
		m["traffic_control_backend"] = c.tcBackend
		m["traffic_control_namespaces"] = fmt.Sprintf("[%q, %q]", "/run/netns/"+ns[0], "/run/netns/"+ns[1])
	}
	return m
}

// startLog is what the collector's start line says of the carrier.
func (c carrierCase) startLog() string {
	if c.carrier == "tcp_option" {
		return `"tls_carrier": "tcp_option (sockops)"`
	}
	return `"tls_carrier": "ip_option (` + c.tcBackend + `)"`
}

// netnsPair is two network namespaces joined by a veth pair.
type netnsPair struct {
	ns, veth, addr [2]string
}

func setupNetnsPair(t *testing.T) *netnsPair {
	t.Helper()
	id := os.Getpid() % 100000
	p := &netnsPair{
		ns:   [2]string{fmt.Sprintf("e2ecar1-%d", id), fmt.Sprintf("e2ecar2-%d", id)},
		veth: [2]string{fmt.Sprintf("vcar1-%d", id), fmt.Sprintf("vcar2-%d", id)},
		addr: [2]string{"10.201.0.1", "10.201.0.2"},
	}
	run := func(args ...string) {
		t.Helper()
		out, err := exec.Command("ip", args...).CombinedOutput()
		require.NoError(t, err, "ip %s: %s", strings.Join(args, " "), out)
	}
	for i := range p.ns {
		run("netns", "add", p.ns[i])
		ns := p.ns[i]
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	run("link", "add", p.veth[0], "netns", p.ns[0], "type", "veth", "peer", "name", p.veth[1], "netns", p.ns[1])
	for i := range p.ns {
		run("-n", p.ns[i], "addr", "add", p.addr[i]+"/24", "dev", p.veth[i])
		run("-n", p.ns[i], "link", "set", p.veth[i], "up")
		run("-n", p.ns[i], "link", "set", "lo", "up")
	}
	return p
}

// nsCurl runs curl in namespace ns and returns its stdout.
func nsCurl(t *testing.T, ns string, args ...string) []byte {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "curl", "-sS", "-k", "--max-time", "20"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	require.NoError(t, err, "curl %v: %s", args, stderr.String())
	return out
}

// relayURL is the URL of a chain of POST /relay requests: apps[0] relays
// the body to apps[1], …, and the last one mirrors it back.
func relayURL(apps []*App, n int) string {
	target := apps[len(apps)-1].URL("/mirror")
	for i := len(apps) - 2; i >= 0; i-- {
		q := url.Values{"url": {target}}
		if i == 0 && n > 1 {
			q.Set("n", fmt.Sprint(n))
		}
		target = apps[i].URL("/relay?" + q.Encode())
	}
	return target
}

// postChain POSTs body through the chain under traceparent tp from curl in
// namespace ns and checks what comes back is body.
func postChain(t *testing.T, ns, dir, u, tp string, body []byte) {
	t.Helper()
	in := filepath.Join(dir, "body.bin")
	require.NoError(t, os.WriteFile(in, body, 0o600))
	out := nsCurl(t, ns, "--fail", "-H", "traceparent: "+tp, "-H", "Content-Type: application/octet-stream",
		"--data-binary", "@"+in, u)
	require.Equal(t, sha256.Sum256(body), sha256.Sum256(out), "body through the chain: sent %d bytes, got %d", len(body), len(out))
}

func inTrace(trace string) SpanPred { return func(s Span) bool { return s.TraceID == trace } }

// capture runs tcpdump on dev in ns until the returned function is called,
// which returns the segments of the capture and how many of them carried
// our TCP option (kind 253, ExID 0x7c00 or 0x7c01).
func capture(t *testing.T, ns, dev, dir string) func() (segments, ours int) {
	t.Helper()
	file := filepath.Join(dir, fmt.Sprintf("%s.pcap", dev))
	cmd := exec.Command("ip", "netns", "exec", ns, "tcpdump", "-Z", "root", "--immediate-mode", "-i", dev, "-U", "-s", "128", "-w", file, "tcp")
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	require.NoError(t, cmd.Start())
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(syscall.SIGINT)
			_ = cmd.Wait()
		}
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(10 * time.Second); !stderr.Contains("listening on"); {
		require.True(t, time.Now().Before(deadline), "tcpdump did not start: %s", stderr)
		time.Sleep(20 * time.Millisecond)
	}
	return func() (int, int) {
		time.Sleep(200 * time.Millisecond)
		stop()
		b, err := os.ReadFile(file)
		require.NoError(t, err)
		segments, ours := countOption(t, b)
		if segments == 0 {
			out, _ := exec.Command("tcpdump", "-nn", "-r", file).CombinedOutput()
			t.Logf("tcpdump: %s\ncapture of %d bytes: %.2000s", stderr, len(b), out)
		}
		return segments, ours
	}
}

// countOption walks a pcap of Ethernet frames: TCP segments over IPv4, and
// those with one of our options (the TCP option of tcp_option, or the IPv4
// option of ip_option).
func countOption(t *testing.T, b []byte) (segments, ours int) {
	t.Helper()
	require.GreaterOrEqual(t, len(b), 24, "pcap header")
	require.Equal(t, uint32(0xa1b2c3d4), binary.LittleEndian.Uint32(b), "pcap magic")
	require.Equal(t, uint32(1), binary.LittleEndian.Uint32(b[20:]), "pcap link type Ethernet")
	for off := 24; off+16 <= len(b); {
		incl := int(binary.LittleEndian.Uint32(b[off+8:]))
		pkt := b[off+16 : min(off+16+incl, len(b))]
		off += 16 + incl
		if len(pkt) < 14+20 || binary.BigEndian.Uint16(pkt[12:]) != 0x0800 {
			continue
		}
		ip := pkt[14:]
		ihl := int(ip[0]&0xf) * 4
		if ip[9] != 6 || len(ip) < ihl+20 {
			continue
		}
		ipOpt := ihl >= 20+28 && ip[20] == 0x9e && ip[21] == 28
		tcp := ip[ihl:]
		doff := int(tcp[12]>>4) * 4
		if doff < 20 || len(tcp) < doff {
			continue
		}
		segments++
		if ipOpt {
			ours++
			continue
		}
		for o := tcp[20:doff]; len(o) > 0; {
			if o[0] == 0 {
				break
			}
			if o[0] == 1 {
				o = o[1:]
				continue
			}
			if len(o) < 2 || int(o[1]) < 2 || int(o[1]) > len(o) {
				break
			}
			if o[0] == 253 && o[1] == 28 && binary.BigEndian.Uint16(o[2:])&^1 == 0x7c00 {
				ours++
			}
			o = o[o[1]:]
		}
	}
	return segments, ours
}

// carrierFleet: HTTPS Python, Node and Go (crypto/tls) services in two
// network namespaces joined by a veth pair; hops lists the chain's services
// by namespace, each hop crossing to the other one. keepAliveThroughput and
// carrierCost use the first pair (Python → Node).
type carrierFleet struct {
	pair  *netnsPair
	dir   string
	byKey map[string]*App
	chain []*App
}

func startCarrierFleet(t *testing.T) *carrierFleet {
	t.Helper()
	f := &carrierFleet{pair: setupNetnsPair(t), dir: t.TempDir(), byKey: map[string]*App{}}
	cert, key := selfSigned(t, f.dir)
	hops := []struct {
		lang    Lang
		ns      int
		service string
	}{
		{Python, 0, "tls-py-a"},
		{Node, 1, "tls-node-b"},
		{Go, 0, "tls-go-c"},
		{Python, 1, "tls-py-d"},
	}
	ports := FreePorts(t, len(hops))
	for i, h := range hops {
		a := StartAppWith(t, h.lang, ports[i], h.service, AppOptions{
			Netns: f.pair.ns[h.ns], Host: f.pair.addr[h.ns], Cert: cert, Key: key,
		})
		f.byKey[h.service] = a
		f.chain = append(f.chain, a)
	}
	return f
}

func (f *carrierFleet) selectors() []Selector {
	var out []Selector
	for _, a := range f.chain {
		out = append(out, Selector{PID: a.PID})
	}
	return out
}

// nsOf is the namespace app a runs in.
func (f *carrierFleet) nsOf(a *App) string {
	if a.Host == f.pair.addr[1] {
		return f.pair.ns[1]
	}
	return f.pair.ns[0]
}

// waitServing sends POST /mirror to every app until each has an HTTPS
// SERVER span.
func (f *carrierFleet) waitServing(t *testing.T, sink *Sink) {
	t.Helper()
	for _, a := range f.chain {
		deadline := time.Now().Add(spanTimeout)
		for i := 0; len(sink.Matching(All(ServerOf(a.Service), WithAttr("url.scheme", "https")))) == 0; i++ {
			require.True(t, time.Now().Before(deadline), "no HTTPS SERVER span of %s; spans:\n%s", a.Service, sink.Dump())
			nsCurl(t, f.nsOf(a), "-o", "/dev/null", "--data-binary", "warmup", a.URL(fmt.Sprintf("/mirror?warmup=%d", i)))
			time.Sleep(250 * time.Millisecond)
		}
	}
}

func randomBody(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return b
}

// checkCarried checks, in the spans of trace, that the chain's SERVER
// spans are each the child of the CLIENT span of the hop before (one per
// hop: single requests).
func checkCarried(t *testing.T, sink *Sink, chain []*App, trace, incomingParent string) {
	t.Helper()
	parent := incomingParent
	for i, a := range chain {
		srv := onlySpans(t, sink, All(ServerOf(a.Service), inTrace(trace)), 1)[0]
		assert.Equal(t, parent, srv.ParentSpanID, "hop %d (%s): SERVER parent is the upstream CLIENT span; %s", i, a.Service, srv)
		assert.Equal(t, "https", srv.Str("url.scheme"), "%s", srv)
		if i == len(chain)-1 {
			break
		}
		cli := onlySpans(t, sink, All(ClientOf(a.Service), inTrace(trace)), 1)[0]
		assert.Equal(t, srv.SpanID, cli.ParentSpanID, "hop %d (%s): CLIENT child of its SERVER span; %s", i, a.Service, cli)
		parent = cli.SpanID
	}
}

// TestTLSCarrier: the trace context of HTTPS requests crosses network
// namespaces in the packets (ebpf.packet_carrier), for each carrier: one
// trace across a Python → Node → Go → Python chain of HTTPS services whose
// hops alternate between two namespaces, 64 KiB request and response
// bodies intact, each request of a keep-alive connection with its own
// parent, the option on the wire with tcp and all and never with headers
// or disabled.
func TestTLSCarrier(t *testing.T) {
	for _, cc := range carrierCases {
		t.Run(cc.name(), func(t *testing.T) { testTLSCarrier(t, cc) })
	}
}

func testTLSCarrier(t *testing.T, cc carrierCase) {
	f := startCarrierFleet(t)
	ns1 := f.pair.ns[0]
	t.Logf("uninstrumented: %s", keepAliveThroughput(t, f, ns1))
	for _, mode := range []string{"all", "tcp", "headers", "disabled"} {
		t.Run(mode, func(t *testing.T) {
			sink := StartSink(t)
			col := StartCollector(t, CollectorConfig{
				Instrument:   f.selectors(),
				SinkEndpoint: sink.Endpoint(),
				EBPF:         cc.ebpf(mode, f.pair.ns),
			})
			defer col.Stop()
			f.waitServing(t, sink)
			carried := mode == "all" || mode == "tcp"
			if carried {
				assert.Contains(t, col.Output(), cc.startLog(), "start log names the carrier")
			}

			stop := capture(t, ns1, f.pair.veth[0], f.dir)
			trace, parent := traceparentIDs(t, randomTraceparent())
			tp := "00-" + trace + "-" + parent + "-01"
			postChain(t, ns1, f.dir, relayURL(f.chain, 1), tp, randomBody(t, 64<<10))
			segments, ours := stop()
			require.Greater(t, segments, 20, "the capture saw the chain's segments")
			if mode == "disabled" {
				t.Logf("disabled (httptrace only): %s", keepAliveThroughput(t, f, ns1))
			}
			if !carried {
				assert.Zero(t, ours, "%s: no segment carries our TCP option", mode)
				// The TLS hops get no context: the first downstream
				// SERVER span is not the child of the upstream CLIENT.
				srv := sink.WaitForSpans(t, All(ServerOf(f.chain[0].Service), inTrace(trace)), 1, spanTimeout)[0]
				assert.Equal(t, parent, srv.ParentSpanID, "%s", srv)
				time.Sleep(settle)
				assert.Empty(t, sink.Matching(All(ServerOf(f.chain[1].Service), inTrace(trace))),
					"%s: %s got the context of a TLS request", mode, f.chain[1].Service)
				return
			}
			assert.Greater(t, ours, 0, "%s: segments carry our TCP option (%d segments)", mode, segments)
			checkCarried(t, sink, f.chain, trace, parent)
			if mode != "all" {
				return
			}

			// Keep-alive: n requests on one connection, for every
			// adjacent pair of the chain (both directions between the
			// namespaces, each language as client and as server), each
			// SERVER span the child of its own CLIENT span.
			for i := 0; i+1 < len(f.chain); i++ {
				pair := f.chain[i : i+2]
				const n = 4
				trace, parent := traceparentIDs(t, randomTraceparent())
				tp := "00-" + trace + "-" + parent + "-01"
				postChain(t, f.nsOf(pair[0]), f.dir, relayURL(pair, n), tp, randomBody(t, 64<<10))
				clis := onlySpans(t, sink, All(ClientOf(pair[0].Service), inTrace(trace)), n)
				srvs := onlySpans(t, sink, All(ServerOf(pair[1].Service), inTrace(trace)), n)
				sort.Slice(clis, func(i, j int) bool { return clis[i].Start.Before(clis[j].Start) })
				sort.Slice(srvs, func(i, j int) bool { return srvs[i].Start.Before(srvs[j].Start) })
				for i := range clis {
					assert.Equal(t, clis[i].SpanID, srvs[i].ParentSpanID, "%s → %s request %d of one connection; CLIENT %s SERVER %s",
						pair[0].Service, pair[1].Service, i+1, clis[i], srvs[i])
				}
			}
			t.Run("cost", func(t *testing.T) { carrierCost(t, f, ns1) })
			t.Logf("all (carrier on): %s", keepAliveThroughput(t, f, ns1))
		})
	}
}

// keepAliveThroughput times 5 × 40 keep-alive HTTPS requests (1 KiB
// bodies) from the chain's first app to the second, across the
// namespaces: a rough rate for comparing modes in one invocation (the
// bench is the reference).
func keepAliveThroughput(t *testing.T, f *carrierFleet, ns string) string {
	t.Helper()
	const rounds, perConn = 5, 40
	start := time.Now()
	for i := 0; i < rounds; i++ {
		trace, parent := traceparentIDs(t, randomTraceparent())
		postChain(t, ns, f.dir, relayURL(f.chain[:2], perConn), "00-"+trace+"-"+parent+"-01", randomBody(t, 1024))
	}
	d := time.Since(start)
	return fmt.Sprintf("%d keep-alive HTTPS requests in %v: %.0f req/s", rounds*perConn, d.Round(time.Millisecond), float64(rounds*perConn)/d.Seconds())
}

// carrierCost logs the sockops program's run time per request
// (kernel.bpf_stats_enabled) on a keep-alive HTTPS workload across the
// namespaces.
func carrierCost(t *testing.T, f *carrierFleet, ns string) {
	require.NoError(t, os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", []byte("1"), 0o644))
	defer os.WriteFile("/proc/sys/kernel/bpf_stats_enabled", []byte("0"), 0o644) //nolint:errcheck
	stats := func(name string) (runs, ns uint64) {
		out, err := exec.Command("bpftool", "prog", "show", "name", name, "--json").Output()
		require.NoError(t, err, "bpftool prog show name %s", name)
		var progs []struct {
			RunTimeNs uint64 `json:"run_time_ns"`
			RunCnt    uint64 `json:"run_cnt"`
		}
		dec := json.NewDecoder(bytes.NewReader(out))
		if out[0] != '[' {
			var one struct {
				RunTimeNs uint64 `json:"run_time_ns"`
				RunCnt    uint64 `json:"run_cnt"`
			}
			require.NoError(t, dec.Decode(&one))
			return one.RunCnt, one.RunTimeNs
		}
		require.NoError(t, dec.Decode(&progs))
		for _, p := range progs {
			runs += p.RunCnt
			ns += p.RunTimeNs
		}
		return runs, ns
	}
	const rounds, perConn = 5, 40
	// The carrier's own programs: sockops for tcp_option, TC for ip_option
	// (whose programs bpftool may not name); those not loaded are skipped.
	var progs []string
	for _, p := range []string{"tcpopt_sockops", "httptrace_tcp_sendmsg"} {
		if exec.Command("bpftool", "prog", "show", "name", p).Run() == nil {
			progs = append(progs, p)
		}
	}
	before := map[string][2]uint64{}
	for _, p := range progs {
		r, n := stats(p)
		before[p] = [2]uint64{r, n}
	}
	for i := 0; i < rounds; i++ {
		trace, parent := traceparentIDs(t, randomTraceparent())
		postChain(t, ns, f.dir, relayURL(f.chain[:2], perConn), "00-"+trace+"-"+parent+"-01", randomBody(t, 1024))
	}
	requests := float64(rounds * (perConn + 1))
	for _, p := range progs {
		r, n := stats(p)
		runs, rt := r-before[p][0], n-before[p][1]
		per := 0.0
		if runs > 0 {
			per = float64(rt) / float64(runs)
		}
		t.Logf("%s: %d runs, %.1f runs/request, %.0f ns/run, %.0f ns/request (%v HTTPS requests, keep-alive, 1 KiB bodies)",
			p, runs, float64(runs)/requests, per, float64(rt)/requests, requests)
	}
}
