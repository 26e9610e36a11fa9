//go:build linux && privileged

package tc

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/ebpftracing/ebpftracingreceiver/bpf/tc/tctest"
)

var backends = []string{BackendTCX, BackendTC}

// eachBackend runs f for each backend on its own namespace pair
// (10.<subnet+i>.0.0/24).
func eachBackend(t *testing.T, prefix string, subnet int, f func(t *testing.T, backend string, p *tctest.Pair)) {
	for i, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			f(t, backend, tctest.PairFor(t, prefix, subnet+i))
		})
	}
}

// startCarrier loads the carrier and attaches it in both namespaces.
func startCarrier(t *testing.T, p *tctest.Pair, backend string) *Carrier {
	t.Helper()
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	c, err := Load(Maps{}, Options{Backend: backend, Netns: p.Paths[:]})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	if err := c.Start(); err != nil {
		_ = c.Close()
		t.Fatalf("start: %+v", err)
	}
	if c.Backend() != backend {
		t.Fatalf("backend %q, want %q", c.Backend(), backend)
	}
	return c
}

// peer is an HTTP server in the pair's second namespace and a keep-alive
// client in the first, on one connection.
type peer struct {
	t      *testing.T
	c      *Carrier
	p      *tctest.Pair
	srv    *http.Server
	url    string
	client *http.Client

	mu      sync.Mutex
	key     *tcCarrierKey // the client's connection, client's view
	pending tcCarrierCtx  // what carrier_out gets at dial
	carry   bool          // whether it gets it
}

func newPeer(t *testing.T, c *Carrier, p *tctest.Pair) *peer {
	pe := &peer{t: t, c: c, p: p}
	ln, err := tctest.Listen(p.Paths[1], p.Addrs[1]+":0")
	if err != nil {
		t.Fatal(err)
	}
	pe.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		w.Header().Set("X-Sum", hex.EncodeToString(h.Sum(nil)))
		w.Header().Set("X-Len", strconv.FormatInt(n, 10))
		_, _ = w.Write(body(int(n)))
	})}
	go func() { _ = pe.srv.Serve(ln) }()
	pe.url = "http://" + ln.Addr().String() + "/"
	pe.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		MaxConnsPerHost: 1,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := tctest.In(p.Paths[0], func() (err error) {
				conn, err = (&net.Dialer{}).DialContext(ctx, "tcp4", addr)
				return err
			})
			if err != nil {
				return nil, err
			}
			k := keyOf(conn.LocalAddr(), conn.RemoteAddr())
			pe.mu.Lock()
			pe.key = &k
			if pe.carry {
				err = c.objs.CarrierOut.Put(&k, &pe.pending)
			}
			pe.mu.Unlock()
			return conn, err
		},
	}}
	t.Cleanup(func() {
		pe.client.CloseIdleConnections()
		_ = pe.srv.Close()
	})
	return pe
}

func keyOf(local, remote net.Addr) tcCarrierKey {
	l := netip.MustParseAddrPort(local.String())
	r := netip.MustParseAddrPort(remote.String())
	return tcCarrierKey{
		LocalAddr: l.Addr().As16(), RemoteAddr: r.Addr().As16(), // v4-mapped
		LocalPort: l.Port(), RemotePort: r.Port(),
	}
}

// body is n deterministic bytes.
func body(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

// ctxFor is the context of request seq.
func ctxFor(seq uint16) tcCarrierCtx {
	var c tcCarrierCtx
	for i := range c.TraceId {
		c.TraceId[i] = byte(0xa0 + i + int(seq))
	}
	binary.BigEndian.PutUint64(c.SpanId[:], 0x1122334455660000|uint64(seq))
	c.TraceFlags = 1
	c.Seq = seq
	return c
}

// post sends request seq with an n-byte body, carrying ctx when carry is
// set, and checks both bodies arrived intact.
func (pe *peer) post(seq uint16, n int, carry bool) {
	t := pe.t
	t.Helper()
	cx := ctxFor(seq)
	pe.mu.Lock()
	pe.pending, pe.carry = cx, carry
	if pe.key != nil && carry {
		if err := pe.c.objs.CarrierOut.Put(pe.key, &cx); err != nil {
			t.Fatal(err)
		}
	}
	pe.mu.Unlock()
	sent := body(n)
	resp, err := pe.client.Post(pe.url, "application/octet-stream", bytes.NewReader(sent))
	if err != nil {
		t.Fatalf("request %d (%d bytes): %v", seq, n, err)
	}
	got, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(sent)
	if resp.Header.Get("X-Sum") != hex.EncodeToString(sum[:]) || resp.Header.Get("X-Len") != strconv.Itoa(n) {
		t.Fatalf("request %d: server got %s bytes, sum %s; want %d, %x", seq, resp.Header.Get("X-Len"), resp.Header.Get("X-Sum"), n, sum)
	}
	if !bytes.Equal(got, body(n)) {
		t.Fatalf("request %d: response body of %d bytes differs (want %d)", seq, len(got), n)
	}
}

var tcpLenRE = regexp.MustCompile(`tcp (\d+)`)

// rawPost writes request seq with an n-byte body in one write on a new
// connection (so the kernel builds one GSO packet of it) and checks the
// server got it intact and carrier_in the context.
func (pe *peer) rawPost(seq uint16, n int) {
	t := pe.t
	t.Helper()
	conn, err := tctest.Dial(pe.p.Paths[0], strings.TrimPrefix(strings.TrimSuffix(pe.url, "/"), "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	k := keyOf(conn.LocalAddr(), conn.RemoteAddr())
	cx := ctxFor(seq)
	if err := pe.c.objs.CarrierOut.Put(&k, &cx); err != nil {
		t.Fatal(err)
	}
	sent := body(n)
	req := append([]byte(fmt.Sprintf("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", n)), sent...)
	if _, err := conn.Write(req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	sum := sha256.Sum256(sent)
	if resp.Header.Get("X-Sum") != hex.EncodeToString(sum[:]) || !bytes.Equal(got, body(n)) {
		t.Fatalf("raw request %d: server got %s bytes, sum %s", seq, resp.Header.Get("X-Len"), resp.Header.Get("X-Sum"))
	}
	in := tcCarrierKey{LocalAddr: k.RemoteAddr, RemoteAddr: k.LocalAddr, LocalPort: k.RemotePort, RemotePort: k.LocalPort}
	var v tcCarrierCtx
	if err := pe.c.objs.CarrierIn.Lookup(&in, &v); err != nil || v != cx {
		t.Fatalf("raw request %d: carrier_in %+v (%v), want %+v", seq, v, err, cx)
	}
}

// received is carrier_in of the connection in the server's view.
func (pe *peer) received() (tcCarrierCtx, bool) {
	pe.mu.Lock()
	k := *pe.key
	pe.mu.Unlock()
	in := tcCarrierKey{LocalAddr: k.RemoteAddr, RemoteAddr: k.LocalAddr, LocalPort: k.RemotePort, RemotePort: k.LocalPort}
	var v tcCarrierCtx
	err := pe.c.objs.CarrierIn.Lookup(&in, &v)
	return v, err == nil
}

// TestCarrierAcrossNetns: the ids user space puts in carrier_out in ns1
// come out of carrier_in in ns2's view, per request of a keep-alive
// connection, bodies of up to 192 KiB intact; packets carry the option on
// the wire only for requests with a context.
func TestCarrierAcrossNetns(t *testing.T) {
	eachBackend(t, "tcc", 40, func(t *testing.T, backend string, p *tctest.Pair) {
		c := startCarrier(t, p, backend)
		defer c.Close()
		ifs := c.Interfaces()
		for _, want := range []string{p.Paths[0] + "/lo", p.Paths[0] + "/" + p.Ifaces[0], p.Paths[1] + "/" + p.Ifaces[1]} {
			if !slices.Contains(ifs, want) {
				t.Fatalf("interfaces %v lack %s", ifs, want)
			}
		}
		pe := newPeer(t, c, p)

		// No context in carrier_out: nothing on the wire.
		capt := capture(t, p, 1)
		pe.post(1, 64, false)
		pe.post(2, 65536, false)
		base := capt.Stop()

		capt = capture(t, p, 1)
		sizes := []int{100, 65536, 300, 3 * 65536, 1000, 65536, 0}
		for j, n := range sizes[:len(sizes)-1] { // the last is rawPost's
			seq := uint16(10 + j)
			pe.post(seq, n, true)
			got, ok := pe.received()
			want := ctxFor(seq)
			if !ok || got != want {
				t.Fatalf("request %d (%d bytes): carrier_in %+v (found %v), want %+v", seq, n, got, ok, want)
			}
		}
		// Headers and a 64 KiB body in one write on a fresh
		// connection: its first packet is a GSO packet (the
		// initial window: ~7 KiB) and takes the option, its
		// segments each a copy.
		pe.rawPost(20, 65536)
		onWire := capt.Stop()
		big := false
		for _, l := range onWire {
			if m := tcpLenRE.FindStringSubmatch(l); m != nil {
				if n, _ := strconv.Atoi(m[1]); n > 1500 {
					big = true
				}
			}
		}
		if !big {
			t.Fatalf("no GSO packet (over the 1500-byte MTU) with the option: %q", onWire)
		}
		cnt, err := c.ReadCounters()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("counters %+v; packets with the option on the wire: %d without context, %d with", cnt, len(base), len(onWire))
		if len(base) != 0 {
			t.Fatalf("packets carried the option for requests without a context: %q", base)
		}
		if len(onWire) < len(sizes) {
			t.Fatalf("%d packets with the option on the wire, want ≥ %d: %q", len(onWire), len(sizes), onWire)
		}
		if cnt.NoRoom != 0 || cnt.StripFailed != 0 || cnt.Written < uint64(len(sizes)) || cnt.Parsed < cnt.Written || cnt.Stripped != cnt.Parsed {
			t.Fatalf("counters %+v", cnt)
		}
	})
}

// TestNewInterfaceGetsPrograms: a veth created after Start gets both
// programs (netlink link subscription), and is forgotten when deleted.
func TestNewInterfaceGetsPrograms(t *testing.T) {
	eachBackend(t, "tcn", 50, func(t *testing.T, backend string, p *tctest.Pair) {
		c := startCarrier(t, p, backend)
		defer c.Close()
		if err := tctest.Ip("-n", p.Names[0], "link", "add", "tcnx", "type", "veth", "peer", "name", "tcny"); err != nil {
			t.Fatal(err)
		}
		want := p.Paths[0] + "/tcnx"
		deadline := time.Now().Add(5 * time.Second)
		for !slices.Contains(c.Interfaces(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("interfaces %v lack %s 5 s after it was created", c.Interfaces(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
		progs, err := ProgramsOn(p.Paths[0], "tcny")
		if err != nil {
			t.Fatal(err)
		}
		if countOurs(progs) != 2 {
			t.Fatalf("programs on tcny: %v, want ours on ingress and egress", progs)
		}
		if err := tctest.Ip("-n", p.Names[0], "link", "del", "tcnx"); err != nil {
			t.Fatal(err)
		}
		for slices.Contains(c.Interfaces(), want) {
			if time.Now().After(deadline.Add(5 * time.Second)) {
				t.Fatalf("deleted %s still listed", want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

func countOurs(progs []string) int { return tctest.CountOurs(progs) }

func capture(t *testing.T, p *tctest.Pair, side int) *tctest.Capture {
	t.Helper()
	c, err := tctest.StartCapture(p.Names[side], p.Ifaces[side])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestChainsWithForeignProgram: a foreign program attached first on the
// same hooks keeps seeing every packet with ours attached, the carrier still
// works, and after Close the foreign program is all that is left, still
// counting.
func TestChainsWithForeignProgram(t *testing.T) {
	eachBackend(t, "tcf", 60, func(t *testing.T, backend string, p *tctest.Pair) {
		if err := rlimit.RemoveMemlock(); err != nil {
			t.Fatal(err)
		}
		f, err := tctest.NewForeign()
		if err != nil {
			t.Fatalf("%+v", err)
		}
		defer f.Close()
		for j := range 2 {
			if backend == BackendTCX {
				err = f.AttachTCX(p.Paths[j], p.Ifaces[j])
			} else {
				err = f.AttachTC(p.Paths[j], p.Ifaces[j])
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		c := startCarrier(t, p, backend)
		progs, _ := ProgramsOn(p.Paths[1], p.Ifaces[1])
		if countOurs(progs) != 2 || len(progs) != 4 {
			t.Fatalf("programs on %s: %v, want the foreign one and ours on each hook", p.Ifaces[1], progs)
		}
		before := f.Packets()
		pe := newPeer(t, c, p)
		for seq := uint16(1); seq <= 5; seq++ {
			pe.post(seq, 65536, true)
			if got, ok := pe.received(); !ok || got != ctxFor(seq) {
				t.Fatalf("request %d: carrier_in %+v (found %v)", seq, got, ok)
			}
		}
		during := f.Packets() - before
		// 5 × 64 KiB each way: at least the ~90 segments of one
		// direction, seen by both ends (GSO packets count once).
		if during < 20 {
			t.Fatalf("foreign program counted %d packets during the traffic", during)
		}
		pe.client.CloseIdleConnections()
		if err := c.Close(); err != nil {
			t.Fatalf("close: %v", err)
		}
		for j := range 2 {
			progs, err := ProgramsOn(p.Paths[j], p.Ifaces[j])
			if err != nil {
				t.Fatal(err)
			}
			if countOurs(progs) != 0 || len(progs) != 2 {
				t.Fatalf("after Close, programs on %s: %v, want only the foreign one on each hook", p.Ifaces[j], progs)
			}
		}
		after := f.Packets()
		if err := tctest.In(p.Paths[0], func() error {
			return exec.Command("ping", "-c", "3", "-i", "0.2", "-W", "1", p.Addrs[1]).Run()
		}); err != nil {
			// ping may be missing: a TCP connect (SYN, RST) then.
			if conn, err := tctest.Dial(p.Paths[0], p.Addrs[1]+":9"); err == nil {
				conn.Close()
			}
		}
		if f.Packets() == after {
			t.Fatalf("foreign program stopped counting after our Close")
		}
		t.Logf("foreign program counted %d packets with ours attached", during)
	})
}

// TestNoRoomCounted: a connection whose packets already carry IP options
// (IP_OPTIONS: four bytes of NOPs) cannot take ours: its requests go out
// unchanged and intact, counted as no_room, and nothing arrives in
// carrier_in.
func TestNoRoomCounted(t *testing.T) {
	p := tctest.PairFor(t, "tcr", 45)
	c := startCarrier(t, p, BackendTCX)
	defer c.Close()
	ln := tctest.Echo(t, p.Paths[1], p.Addrs[1]+":0")
	var conn net.Conn
	err := tctest.In(p.Paths[0], func() (err error) {
		d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptString(int(fd), unix.IPPROTO_IP, unix.IP_OPTIONS, "\x01\x01\x01\x00")
			})
			return errors.Join(err, serr)
		}}
		conn, err = d.Dial("tcp4", ln.Addr().String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	k := keyOf(conn.LocalAddr(), conn.RemoteAddr())
	cx := ctxFor(1)
	if err := c.objs.CarrierOut.Put(&k, &cx); err != nil {
		t.Fatal(err)
	}
	msg := body(5000)
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo differs (%v)", err)
	}
	cnt, err := c.ReadCounters()
	if err != nil {
		t.Fatal(err)
	}
	if cnt.NoRoom == 0 || cnt.Written != 0 || cnt.Parsed != 0 {
		t.Fatalf("counters %+v: want no_room > 0 and nothing written", cnt)
	}
	in := tcCarrierKey{LocalAddr: k.RemoteAddr, RemoteAddr: k.LocalAddr, LocalPort: k.RemotePort, RemotePort: k.LocalPort}
	var v tcCarrierCtx
	if err := c.objs.CarrierIn.Lookup(&in, &v); err == nil {
		t.Fatalf("carrier_in filled: %+v", v)
	}
	t.Logf("counters %+v", cnt)
}

// dropFirstCarrier loads a TC program that drops the first packet that
// carries our option (TC_ACT_SHOT) and lets every other one go on; drops
// counts them.
func dropFirstCarrier(t *testing.T) (*ebpf.Program, *ebpf.Map) {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "drop_first_opt",
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.LoadAbs(14, asm.Byte), // version and IHL
			asm.And.Imm(asm.R0, 0x0f),
			asm.JNE.Imm(asm.R0, 12, "pass"),
			asm.LoadAbs(34, asm.Byte), // the first option's type
			asm.JNE.Imm(asm.R0, 0x9e, "pass"),
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "pass"),
			asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
			asm.JGE.Imm(asm.R1, 1, "pass"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 2), // TC_ACT_SHOT
			asm.Return(),
			asm.Mov.Imm(asm.R0, -1).WithSymbol("pass"),
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	t.Cleanup(func() { _ = prog.Close() })
	return prog, m
}

// TestRetransmissionCarriesOption: the first segment of a request, option
// included, is lost on the wire (a program after ours on egress drops it);
// TCP sends it again, egress writes the option on the retransmission (same
// TCP sequence number), and carrier_in gets the context.
func TestRetransmissionCarriesOption(t *testing.T) {
	p := tctest.PairFor(t, "tct", 46)
	c := startCarrier(t, p, BackendTCX)
	defer c.Close()
	prog, drops := dropFirstCarrier(t)
	err := tctest.In(p.Paths[0], func() error {
		l, err := net.InterfaceByName(p.Ifaces[0])
		if err != nil {
			return err
		}
		// Appended: after ours, like a lossy link.
		lk, err := link.AttachTCX(link.TCXOptions{Interface: l.Index, Program: prog, Attach: ebpf.AttachTCXEgress})
		if err != nil {
			return err
		}
		t.Cleanup(func() { _ = lk.Close() })
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	pe := newPeer(t, c, p)
	pe.post(1, 300, true)
	var dropped uint64
	_ = drops.Lookup(uint32(0), &dropped)
	if dropped != 1 {
		t.Fatalf("%d packets dropped, want 1", dropped)
	}
	if got, ok := pe.received(); !ok || got != ctxFor(1) {
		t.Fatalf("carrier_in %+v (found %v) after the retransmission, want %+v", got, ok, ctxFor(1))
	}
	cnt, _ := c.ReadCounters()
	if cnt.Written < 2 || cnt.Parsed < 1 {
		t.Fatalf("counters %+v: want the option written on the first segment and again on its retransmission", cnt)
	}
	t.Logf("counters %+v", cnt)
}

// TestBridgeWritesOnce: behind a bridge the egress program runs twice per
// packet (the bridge device, then its port): the option is written once and
// the second run neither writes it again nor counts no_room.
func TestBridgeWritesOnce(t *testing.T) {
	p := tctest.PairFor(t, "tcg", 47)
	for _, s := range [][]string{
		{"link", "add", "tcgbr", "type", "bridge"},
		{"link", "set", p.Ifaces[0], "master", "tcgbr"},
		{"addr", "del", p.Addrs[0] + "/24", "dev", p.Ifaces[0]},
		{"addr", "add", p.Addrs[0] + "/24", "dev", "tcgbr"},
		{"link", "set", "tcgbr", "up"},
	} {
		if err := tctest.Ip(append([]string{"-n", p.Names[0]}, s...)...); err != nil {
			t.Fatal(err)
		}
	}
	c := startCarrier(t, p, BackendTCX)
	defer c.Close()
	if !slices.Contains(c.Interfaces(), p.Paths[0]+"/tcgbr") {
		t.Fatalf("bridge not attached: %v", c.Interfaces())
	}
	pe := newPeer(t, c, p)
	for seq := uint16(1); seq <= 3; seq++ {
		pe.post(seq, 65536, true)
		if got, ok := pe.received(); !ok || got != ctxFor(seq) {
			t.Fatalf("request %d: carrier_in %+v (found %v)", seq, got, ok)
		}
	}
	cnt, _ := c.ReadCounters()
	if cnt.Written != 3 || cnt.NoRoom != 0 {
		t.Fatalf("counters %+v: want 3 written, none without room", cnt)
	}
}
