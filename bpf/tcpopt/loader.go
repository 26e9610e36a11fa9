//go:build linux

package tcpopt

import (
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/ebpftracing/ebpftracingreceiver/bpf/httptrace"
)

// Option layout, as tcpopt.h defines it.
const (
	Kind = 253    // RFC 6994 shared experimental option
	Len  = 28     // the whole option, kind and length included
	ExID = 0x7c00 // ExID of an unsampled context; ExID|1: sampled
)

// Carrier is the loaded, and after Attach attached, TCP option carrier.
type Carrier struct {
	objs      tcpoptObjects
	sockops   link.Link
	cgroupDir string
}

// Load loads the sockops program, sharing httptrace's traced_pids,
// carrier_out and carrier_in. On a verifier refusal the error carries the
// verifier log.
func Load(shared httptrace.SharedMaps) (*Carrier, error) {
	if shared.CarrierOut == nil || shared.CarrierIn == nil || shared.TracedPids == nil {
		return nil, errors.New("load tcpopt: httptrace's carrier maps are missing")
	}
	spec, err := loadTcpopt()
	if err != nil {
		return nil, fmt.Errorf("load tcpopt spec: %w", err)
	}
	c := &Carrier{}
	opts := &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"traced_pids": shared.TracedPids,
		"carrier_out": shared.CarrierOut,
		"carrier_in":  shared.CarrierIn,
	}}
	if err := spec.LoadAndAssign(&c.objs, opts); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load tcpopt programs: %w\n%+v", err, ve)
		}
		return nil, fmt.Errorf("load tcpopt programs: %w", err)
	}
	return c, nil
}

// Attach attaches the sockops program to the cgroup v2 directory cgroupDir
// (the hierarchy's root sees every connection of the host). The link has
// multi-attach semantics: other sockops programs on the cgroup (ctxprop's,
// Cilium's) keep running.
func (c *Carrier) Attach(cgroupDir string) error {
	if cgroupDir == "" {
		return errors.New("attach tcpopt sockops: no cgroup v2 hierarchy is mounted: mount it (or use packet_carrier ip_option)")
	}
	l, err := link.AttachCgroup(link.CgroupOptions{
		Path:    cgroupDir,
		Attach:  ebpf.AttachCGroupSockOps,
		Program: c.objs.TcpoptSockops,
	})
	if err != nil {
		return fmt.Errorf("attach tcpopt sockops to cgroup %s: %w", cgroupDir, err)
	}
	c.sockops = l
	c.cgroupDir = cgroupDir
	return nil
}

// Counters are the carrier's counters, summed over CPUs.
type Counters struct {
	Written uint64 // options written on outgoing segments
	Parsed  uint64 // options of ours parsed on incoming segments
	// NoRoom counts segments that should have carried the option and went
	// out unchanged: the header's option space was full (SACK blocks).
	NoRoom  uint64
	Foreign uint64 // kind 253 options of another ExID or length, ignored
}

// ReadCounters sums the per-CPU counters.
func (c *Carrier) ReadCounters() (Counters, error) {
	var out Counters
	for idx, dst := range map[tcpoptTcpoptCounter]*uint64{
		tcpoptTcpoptCounterTCPOPT_WRITTEN: &out.Written,
		tcpoptTcpoptCounterTCPOPT_PARSED:  &out.Parsed,
		tcpoptTcpoptCounterTCPOPT_NO_ROOM: &out.NoRoom,
		tcpoptTcpoptCounterTCPOPT_FOREIGN: &out.Foreign,
	} {
		var per []uint64
		if err := c.objs.TcpoptCounters.Lookup(uint32(idx), &per); err != nil {
			return out, fmt.Errorf("read tcpopt counter %d: %w", idx, err)
		}
		for _, v := range per {
			*dst += v
		}
	}
	return out, nil
}

// Stats are the kernel's run statistics of the sockops program
// (kernel.bpf_stats_enabled): how often it ran and for how long.
func (c *Carrier) Stats() (runs uint64, runtime time.Duration, err error) {
	st, err := c.objs.TcpoptSockops.Stats()
	if err != nil {
		return 0, 0, fmt.Errorf("stats of tcpopt_sockops: %w", err)
	}
	return st.RunCount, st.Runtime, nil
}

// Close detaches the sockops program from the cgroup and closes the
// program and its own maps (the shared ones stay httptrace's).
func (c *Carrier) Close() error {
	var errs []error
	if c.sockops != nil {
		if err := c.sockops.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach tcpopt sockops from cgroup %s: %w", c.cgroupDir, err))
		}
		c.sockops = nil
	}
	if err := c.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close tcpopt objects: %w", err))
	}
	return errors.Join(errs...)
}
