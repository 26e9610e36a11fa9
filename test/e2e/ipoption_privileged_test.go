//go:build linux && privileged

package e2e

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/ebpftracing/ebpftracingreceiver/bpf/tc"
	"github.com/ebpftracing/ebpftracingreceiver/bpf/tc/tctest"
)

// inNetns writes a script that runs the built distro inside the network
// namespace of p's first side (as a hostNetwork collector sees the host's
// interfaces, it sees the namespace's), and the config for it, exporting to
// debug.
func inNetns(t *testing.T, p *tctest.Pair, ebpfKeys map[string]string) (bin, config string) {
	t.Helper()
	bin = filepath.Join(t.TempDir(), "otelcol-in-netns")
	// nsenter, not ip netns exec: that one mounts its own /sys, without
	// the cgroup v2 hierarchy sockops needs.
	script := fmt.Sprintf("#!/bin/sh\nexec nsenter --net=%s %s \"$@\"\n", p.Paths[0], DistroPath(t))
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := CollectorConfig{
		Instrument:   []Selector{{PID: os.Getpid()}},
		ExporterName: "debug", ExporterYAML: "    verbosity: basic\n",
		EBPF: ebpfKeys,
	}
	return bin, cfg.YAML()
}

// startCollectorInNetns starts the distro as inNetns runs it.
func startCollectorInNetns(t *testing.T, p *tctest.Pair, ebpfKeys map[string]string) *Collector {
	t.Helper()
	bin, config := inNetns(t, p, ebpfKeys)
	// No health check: its port is inside the namespace.
	return startCollector(t, bin, config, nil, 0)
}

func ipOptionKeys(backend string) map[string]string {
	return map[string]string{"context_propagation": "tcp", "packet_carrier": "ip_option", "traffic_control_backend": backend}
}

// programsOn lists the programs on the TC hooks of p's first veth.
func programsOn(t *testing.T, p *tctest.Pair) []string {
	t.Helper()
	progs, err := tc.ProgramsOn(p.Paths[0], p.Ifaces[0])
	if err != nil {
		t.Fatal(err)
	}
	return progs
}

// poke sends a few packets over the veth pair (a TCP connect to a closed
// port: SYN, RST).
func poke(t *testing.T, p *tctest.Pair) {
	t.Helper()
	for range 3 {
		if c, err := tctest.Dial(p.Paths[0], p.Addrs[1]+":9"); err == nil {
			c.Close()
		}
	}
}

// TestIPOptionCarrierAfterKill: the real collector (ip_option, each
// backend) attaches after a foreign TC program, is killed with SIGKILL and
// started again: the foreign program is still there and counting, exactly
// one of ours is on each hook (a stale tc filter of the killed run is
// replaced; tcx links die with their process), and after a clean shutdown
// only the foreign program is left.
func TestIPOptionCarrierAfterKill(t *testing.T) {
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	for i, backend := range []string{"tcx", "tc"} {
		t.Run(backend, func(t *testing.T) {
			p := tctest.PairFor(t, "tce", 70+i)
			f, err := tctest.NewForeign()
			if err != nil {
				t.Fatalf("%+v", err)
			}
			defer f.Close()
			if backend == "tcx" {
				err = f.AttachTCX(p.Paths[0], p.Ifaces[0])
			} else {
				err = f.AttachTC(p.Paths[0], p.Ifaces[0])
			}
			if err != nil {
				t.Fatal(err)
			}
			want := func(stage string, ours int) {
				t.Helper()
				progs := programsOn(t, p)
				if tctest.CountOurs(progs) != ours || len(progs)-ours != 2 {
					t.Fatalf("%s: programs on %s: %v; want the foreign one and %d of ours", stage, p.Ifaces[0], progs, ours)
				}
				before := f.Packets()
				poke(t, p)
				if f.Packets() == before {
					t.Fatalf("%s: the foreign program stopped counting", stage)
				}
			}

			col := startCollectorInNetns(t, p, ipOptionKeys(backend))
			if !col.out.Contains("IPv4-option carrier attached") {
				t.Fatalf("no attach line in the collector log:\n%s", col.Output())
			}
			want("running", 2)
			if err := syscall.Kill(col.PID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-col.done
			stale := 0
			if backend == "tc" {
				stale = 2 // tc filters outlive the process that added them
			}
			want("after kill -9", stale)

			col = startCollectorInNetns(t, p, ipOptionKeys(backend))
			want("restarted", 2)
			if backend == "tc" && !col.out.Contains(`"stale_removed": 2`) {
				t.Fatalf("restart did not log the stale filters it removed:\n%s", col.Output())
			}
			if code := col.Stop(); code != 0 {
				t.Fatalf("collector exit code %d:\n%s", code, col.Output())
			}
			want("after shutdown", 0)
		})
	}
}

// collectorMap opens the map named name that the collector holds.
func collectorMap(t *testing.T, pid int, name string) *ebpf.Map {
	t.Helper()
	for _, id := range heldBPFObjects(t, pid)["map"] {
		m, err := ebpf.NewMapFromID(ebpf.MapID(id))
		if err != nil {
			continue
		}
		if info, err := m.Info(); err == nil && info.Name == name {
			return m
		}
		m.Close()
	}
	t.Fatalf("collector %d holds no map %s", pid, name)
	return nil
}

// TestIPOptionOnlyWithIPOptionCarrier: with context_propagation disabled or
// headers no TC program is attached and a connection with a context in the
// collector's carrier_out sends no IPv4 option; with tcp + ip_option the
// capture on the receiving side shows it.
func TestIPOptionOnlyWithIPOptionCarrier(t *testing.T) {
	for i, cs := range []struct {
		name   string
		keys   map[string]string
		option bool
	}{
		{"disabled", map[string]string{"context_propagation": "disabled"}, false},
		{"headers", map[string]string{"context_propagation": "headers", "packet_carrier": "ip_option"}, false},
		{"tcp_ip_option", ipOptionKeys("auto"), true},
	} {
		t.Run(cs.name, func(t *testing.T) {
			p := tctest.PairFor(t, "tcd", 80+i)
			col := startCollectorInNetns(t, p, cs.keys)
			if n := tctest.CountOurs(programsOn(t, p)); (n == 2) != cs.option {
				t.Fatalf("%d of our programs on %s with %v", n, p.Ifaces[0], cs.keys)
			}
			out := collectorMap(t, col.PID, "carrier_out")
			defer out.Close()

			ln := tctest.Echo(t, p.Paths[1], p.Addrs[1]+":0")
			conn, err := tctest.Dial(p.Paths[0], ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// carrier_key: v4-mapped addresses, host-order ports.
			l := netip.MustParseAddrPort(conn.LocalAddr().String())
			r := netip.MustParseAddrPort(conn.RemoteAddr().String())
			key := make([]byte, 40)
			la, ra := l.Addr().As16(), r.Addr().As16()
			copy(key[0:], la[:])
			copy(key[16:], ra[:])
			binary.NativeEndian.PutUint16(key[32:], l.Port())
			binary.NativeEndian.PutUint16(key[34:], r.Port())
			val := make([]byte, 32)
			for j := range 24 {
				val[j] = byte(0x10 + j)
			}
			val[24] = 1                                // flags: sampled
			binary.NativeEndian.PutUint16(val[26:], 1) // seq
			if err := out.Put(key, val); err != nil {
				t.Fatal(err)
			}
			capt, err := tctest.StartCapture(p.Names[1], p.Ifaces[1])
			if err != nil {
				t.Fatal(err)
			}
			msg := make([]byte, 20000)
			if _, err := conn.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(conn, msg); err != nil {
				t.Fatal(err)
			}
			lines := capt.Stop()
			if (len(lines) > 0) != cs.option {
				t.Fatalf("%d packets with the IPv4 option (want them: %v): %q\n%s", len(lines), cs.option, lines, col.Output())
			}
		})
	}
}

// TestIPOptionStartFailsClearly: when the interface already has someone
// else's tc filter at our priority and handle, the collector does not
// replace it: it exits at start with an error naming the interface, the
// filter and the setting, and leaves the foreign filter in place.
func TestIPOptionStartFailsClearly(t *testing.T) {
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	p := tctest.PairFor(t, "tcs", 88)
	f, err := tctest.NewForeign()
	if err != nil {
		t.Fatalf("%+v", err)
	}
	defer f.Close()
	if err := f.AttachTCAt(p.Paths[0], p.Ifaces[0], tc.FilterPriority, tc.FilterHandle); err != nil {
		t.Fatal(err)
	}
	bin, config := inNetns(t, p, ipOptionKeys("tc"))
	res := RunDistro(t, bin, t.TempDir(), config, nil, 60*time.Second)
	out := res.Stdout + res.Stderr
	if res.ExitCode == 0 {
		t.Fatalf("collector started over a foreign filter at our priority and handle:\n%s", out)
	}
	for _, want := range []string{"ebpf.packet_carrier ip_option", p.Ifaces[0], "prio 3 handle 0xeb7c", "file exists"} {
		if !strings.Contains(out, want) {
			t.Fatalf("start error lacks %q:\n%s", want, out)
		}
	}
	progs := programsOn(t, p)
	if tctest.CountOurs(progs) != 0 || len(progs) != 2 {
		t.Fatalf("programs on %s after the failed start: %v, want only the foreign ones", p.Ifaces[0], progs)
	}
}
