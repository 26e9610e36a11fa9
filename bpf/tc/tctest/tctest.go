//go:build linux

// Package tctest holds what the tests of the IPv4-option carrier share:
// network namespaces joined by a veth pair, code run inside a namespace,
// and a foreign TC program (a packet counter that always lets the chain go
// on) to attach before ours.
package tctest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ForeignName is the foreign program's name, as the kernel reports it.
const ForeignName = "foreign_count"

// Foreign priority and handle of the foreign tc filter: before ours.
const (
	ForeignPriority = 1
	ForeignHandle   = 1
)

// Ip runs ip(8) with args.
func Ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// Pair is two network namespaces, /run/netns/<prefix>1 and <prefix>2,
// joined by the veth pair <prefix>a (in 1, 10.<n>.0.1/24) and <prefix>b
// (in 2, 10.<n>.0.2/24), loopbacks up.
type Pair struct {
	Names  [2]string
	Paths  [2]string
	Ifaces [2]string
	Addrs  [2]string
	Subnet int
}

// NewPair creates the namespaces and the veth pair; subnet picks 10.<subnet>.0.0/24.
func NewPair(prefix string, subnet int) (*Pair, error) {
	p := &Pair{Subnet: subnet}
	for i := range 2 {
		p.Names[i] = fmt.Sprintf("%s%d", prefix, i+1)
		p.Paths[i] = "/run/netns/" + p.Names[i]
		p.Addrs[i] = fmt.Sprintf("10.%d.0.%d", subnet, i+1)
		_ = Ip("netns", "del", p.Names[i]) // left by an interrupted run
		if err := Ip("netns", "add", p.Names[i]); err != nil {
			p.Close()
			return nil, err
		}
	}
	p.Ifaces = [2]string{prefix + "a", prefix + "b"}
	steps := [][]string{
		{"link", "add", p.Ifaces[0], "netns", p.Names[0], "type", "veth", "peer", "name", p.Ifaces[1], "netns", p.Names[1]},
	}
	for i := range 2 {
		steps = append(steps,
			[]string{"-n", p.Names[i], "addr", "add", p.Addrs[i] + "/24", "dev", p.Ifaces[i]},
			[]string{"-n", p.Names[i], "link", "set", p.Ifaces[i], "up"},
			[]string{"-n", p.Names[i], "link", "set", "lo", "up"})
	}
	for _, s := range steps {
		if err := Ip(s...); err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

// PairFor is NewPair for a test, closed when it ends.
func PairFor(t testing.TB, prefix string, subnet int) *Pair {
	t.Helper()
	p, err := NewPair(prefix, subnet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// Listen listens on TCP addr inside the namespace at path.
func Listen(path, addr string) (net.Listener, error) {
	var ln net.Listener
	err := In(path, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	return ln, err
}

// Echo listens on TCP addr inside the namespace at path and echoes what
// each connection sends; the listener closes when the test ends.
func Echo(t testing.TB, path, addr string) net.Listener {
	t.Helper()
	ln, err := Listen(path, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_, _ = io.Copy(c, c)
				_ = c.Close()
			}()
		}
	}()
	return ln
}

// Dial connects to TCP addr from inside the namespace at path.
func Dial(path, addr string) (net.Conn, error) {
	var c net.Conn
	err := In(path, func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, 5*time.Second)
		return err
	})
	return c, err
}

// Close deletes the namespaces (and with them the veth pair).
func (p *Pair) Close() {
	for _, n := range p.Names {
		if n != "" {
			_ = Ip("netns", "del", n)
		}
	}
}

// In runs f on a thread inside the network namespace at path: sockets f
// creates stay in it.
func In(path string, f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	ns, err := netns.GetFromPath(path)
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer ns.Close()
	if err := netns.Set(ns); err != nil {
		runtime.UnlockOSThread()
		return err
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		return errors.Join(ferr, err) // the locked thread ends with the goroutine
	}
	runtime.UnlockOSThread()
	return ferr
}

// Foreign is a TC program of someone else: it counts packets in a
// one-entry array and returns TC_ACT_UNSPEC (TCX_NEXT).
type Foreign struct {
	Prog  *ebpf.Program
	Count *ebpf.Map
	links []link.Link
}

// NewForeign loads the counting program.
func NewForeign() (*Foreign, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("foreign map: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: ForeignName,
		Type: ebpf.SchedCLS,
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, -1).WithSymbol("out"),
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		_ = m.Close()
		return nil, fmt.Errorf("foreign program: %w", err)
	}
	return &Foreign{Prog: prog, Count: m}, nil
}

// Packets is the number of packets the program saw.
func (f *Foreign) Packets() uint64 {
	var v uint64
	_ = f.Count.Lookup(uint32(0), &v)
	return v
}

// AttachTCX attaches the program to both tcx hooks of ifname in the
// namespace at path ("" for the caller's).
func (f *Foreign) AttachTCX(path, ifname string) error {
	return runIn(path, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			tl, err := link.AttachTCX(link.TCXOptions{Interface: l.Attrs().Index, Program: f.Prog, Attach: at})
			if err != nil {
				return fmt.Errorf("attach foreign tcx: %w", err)
			}
			f.links = append(f.links, tl)
		}
		return nil
	})
}

// AttachTC adds a clsact qdisc (if missing) and the program as a filter of
// priority ForeignPriority on both hooks of ifname; the filters stay until
// the interface goes.
func (f *Foreign) AttachTC(path, ifname string) error {
	return f.AttachTCAt(path, ifname, ForeignPriority, ForeignHandle)
}

// AttachTCAt is AttachTC with another priority and handle.
func (f *Foreign) AttachTCAt(path, ifname string, prio uint16, fhandle uint32) error {
	h, err := handle(path)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return err
	}
	q := &netlink.GenericQdisc{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT,
	}, QdiscType: "clsact"}
	if err := h.QdiscAdd(q); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact: %w", err)
	}
	for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
		err := h.FilterAdd(&netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: parent, Handle: fhandle,
				Priority: prio, Protocol: unix.ETH_P_ALL},
			Fd: f.Prog.FD(), Name: ForeignName, DirectAction: true,
		})
		if err != nil {
			return fmt.Errorf("add foreign filter: %w", err)
		}
	}
	return nil
}

// Close detaches the tcx links and closes the program and map (tc filters
// keep their own reference to the program).
func (f *Foreign) Close() {
	for _, l := range f.links {
		_ = l.Close()
	}
	_ = f.Prog.Close()
	_ = f.Count.Close()
}

func handle(path string) (*netlink.Handle, error) {
	if path == "" {
		return netlink.NewHandle()
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns)
}

func runIn(path string, f func() error) error {
	if path == "" {
		return f()
	}
	return In(path, f)
}

// CountOurs counts the IPv4-option carrier's programs in a list from
// tc.ProgramsOn.
func CountOurs(progs []string) int {
	n := 0
	for _, p := range progs {
		if strings.Contains(p, " tc_ipopt_in") || strings.Contains(p, " tc_ipopt_out") {
			n++
		}
	}
	return n
}

// Capture is tcpdump on one interface, keeping the TCP packets that carry
// the trace-context option (an ingress capture runs before TC, so before
// the option is removed).
type Capture struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

// StartCapture starts tcpdump in the namespace ns (a /run/netns name) on
// iface and returns once it listens.
func StartCapture(ns, iface string) (*Capture, error) {
	if _, err := exec.LookPath("tcpdump"); err != nil {
		return nil, errors.New("tcpdump missing: apt-get install tcpdump (make test installs it)")
	}
	c := &Capture{cmd: exec.Command("ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-nn", "-p", "-l", "-q",
		"tcp and ip[0] & 0xf = 12 and ip[20] = 0x9e and ip[21] = 28")}
	c.cmd.Stdout = &c.out
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() { // until "listening on …": the capture runs
		if strings.Contains(sc.Text(), "listening") {
			go func() { _, _ = io.Copy(io.Discard, stderr) }()
			return c, nil
		}
	}
	_ = c.cmd.Wait()
	return nil, fmt.Errorf("tcpdump did not start: %v", sc.Err())
}

// Stop ends the capture and returns its packet lines.
func (c *Capture) Stop() []string {
	time.Sleep(200 * time.Millisecond)
	_ = c.cmd.Process.Signal(syscall.SIGINT)
	_ = c.cmd.Wait()
	var lines []string
	for _, l := range strings.Split(c.out.String(), "\n") {
		if strings.Contains(l, " IP ") {
			lines = append(lines, l)
		}
	}
	return lines
}
