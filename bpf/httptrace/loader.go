//go:build linux

package httptrace

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.opentelemetry.io/collector/pdata/pcommon"

	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
)

// Options configure the tracer at load time.
type Options struct {
	// RingBufferSize is the size of the event ring buffer in bytes: a power
	// of two and a multiple of the page size.
	RingBufferSize int
	// WakeupRecords is how many records may be pending in the ring buffer
	// before the kernel wakes the reader (at most a quarter of the ring);
	// 0 wakes it for every record. Between wakeups the reader polls.
	WakeupRecords int
	// TrackRequestHeaders honours the traceparent of incoming requests.
	TrackRequestHeaders bool
	// NoBPFLoop parses requests without the bpf_loop helper (kernels before
	// 5.17): the request line only, no headers and no pipelining.
	NoBPFLoop bool
	// Variant forces an attach variant (VariantSocket, VariantTPBTF or
	// VariantRawTP); empty picks the first that loads and attaches, in that
	// order.
	Variant string
	// Hook narrows the variants tried by Attach: HookSocket or HookSysExit;
	// empty tries them all. Variant, if set, wins.
	Hook string
	// ReturnAtOnce loads programs that return as soon as they run: the
	// floor of the hooks' own cost, for benchmarks. Nothing is traced.
	ReturnAtOnce bool
	// Sampler is the head sampler; the zero value is parentbased_always_on.
	Sampler Sampler
	// Carrier turns on the packet-level carrier for TLS: CLIENT requests
	// written through a TLS library under a context fill carrier_out, and
	// TLS requests without a traceparent take carrier_in as their parent
	// (bpf/include/maps/carrier.h). A carrier (bpf/tcpopt, or the IPv4
	// option in TC) moves the entries between hosts. It adds the BTF
	// tracepoint tcp_sendmsg_locked (not with VariantRawTP), so a TLS write
	// whose socket is not known yet fills carrier_out before its bytes go
	// out.
	Carrier bool
}

// Attach variants, in order of preference.
const (
	// VariantSocket hangs on the socket tracepoints sock_recv_length and
	// sock_send_length (tp_btf, kernel 6.3 and later for sock_send_length
	// and sock_recv_length): they run only when a socket read or write
	// returns, and the payload is found through the system call's saved
	// registers (bpf_task_pt_regs, 5.15).
	VariantSocket = "tp_btf/sock_recv_length+sock_send_length"
	// VariantTPBTF is a BTF-typed tracepoint (tp_btf/sys_exit): registers
	// are read directly. Every system call of the host runs it.
	VariantTPBTF = "tp_btf/sys_exit"
	// VariantRawTP is a raw tracepoint (raw_tp/sys_exit): registers are read
	// with a helper call each.
	VariantRawTP = "raw_tp/sys_exit"
)

// Hooks: where the socket I/O is seen.
const (
	HookSocket  = "socket"   // VariantSocket
	HookSysExit = "sys_exit" // VariantTPBTF, else VariantRawTP
)

// Variants lists the attach variants, in the order Attach tries them.
var Variants = []string{VariantSocket, VariantTPBTF, VariantRawTP}

// Tracer is the loaded and, after Attach, attached HTTP/1.x tracer.
type Tracer struct {
	spec    *ebpf.CollectionSpec
	objs    httptraceMaps
	links   []link.Link
	io      map[string]*ebpf.Program // the socket I/O programs, for run statistics
	variant string
	want    string
	hook    string
	carrier bool // Options.Carrier
}

// EventSize is the size of one ring buffer record.
const EventSize = int(unsafe.Sizeof(httptraceHttpEvent{}))

// wakeupBytes is the pending data at which the kernel wakes the reader:
// records records (each with its 8-byte ring header), at most a quarter of
// the ring, so a small ring is drained before it fills.
func wakeupBytes(records, ringSize int) uint64 {
	b := uint64(records) * uint64(EventSize+8)
	if limit := uint64(ringSize) / 4; ringSize > 0 && b > limit {
		b = limit
	}
	return b
}

// Load loads the programs and maps into the kernel. On a verifier refusal the
// error carries the full verifier log.
func Load(opts Options) (*Tracer, error) {
	spec, err := loadHttptrace()
	if err != nil {
		return nil, fmt.Errorf("load httptrace spec: %w", err)
	}
	if opts.RingBufferSize > 0 {
		spec.Maps["events"].MaxEntries = uint32(opts.RingBufferSize)
	}
	if err := spec.Variables["wakeup_bytes"].Set(wakeupBytes(opts.WakeupRecords, int(spec.Maps["events"].MaxEntries))); err != nil {
		return nil, fmt.Errorf("set wakeup_bytes: %w", err)
	}
	var track uint8
	if opts.TrackRequestHeaders {
		track = 1
	}
	if err := spec.Variables["track_request_headers"].Set(track); err != nil {
		return nil, fmt.Errorf("set track_request_headers: %w", err)
	}
	var loop uint8 = 1
	if opts.NoBPFLoop {
		loop = 0
	}
	if err := spec.Variables["use_bpf_loop"].Set(loop); err != nil {
		return nil, fmt.Errorf("set use_bpf_loop: %w", err)
	}
	if opts.ReturnAtOnce {
		if err := spec.Variables["return_at_once"].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("set return_at_once: %w", err)
		}
	}
	if err := SetSampler(spec, opts.Sampler); err != nil {
		return nil, err
	}
	if opts.Carrier {
		if err := spec.Variables["carrier_tls"].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("set carrier_tls: %w", err)
		}
	}
	t := &Tracer{spec: spec, want: opts.Variant, hook: opts.Hook, carrier: opts.Carrier}
	if err := spec.LoadAndAssign(&t.objs, nil); err != nil {
		return nil, fmt.Errorf("load httptrace maps: %w", err)
	}
	return t, nil
}

// SetSampler writes the sampler knobs of bpf/include/sampler.h into spec, a
// collection whose C source includes it (httptrace's, ctxprop's).
func SetSampler(spec *ebpf.CollectionSpec, s Sampler) error {
	switch s.Root {
	case RootAlwaysOn, RootAlwaysOff, RootRatio:
	default:
		return fmt.Errorf("set sampler: unknown root sampler %d", s.Root)
	}
	var parentBased uint8 = 1
	if s.IgnoreParent {
		parentBased = 0
	}
	for name, v := range map[string]any{
		"sampler_root":            uint8(s.Root),
		"sampler_parent_based":    parentBased,
		"sampler_ratio_threshold": RatioThreshold(s.Ratio),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

// Attach loads the programs of the first variant the kernel accepts and
// attaches them: the socket tracepoints, else sys_exit as tp_btf, else as
// raw_tp. The error of each refused variant is returned when none works,
// with the verifier log if there is one.
func (t *Tracer) Attach() error {
	variants := []struct {
		name  string
		progs map[string]string // program -> tracepoint
	}{
		{VariantSocket, map[string]string{
			"httptrace_sock_recv": "sock_recv_length",
			"httptrace_sock_send": "sock_send_length",
			"httptrace_fork_btf":  "sched_process_fork",
			"httptrace_exit_btf":  "sched_process_exit",
		}},
		{VariantTPBTF, map[string]string{
			"httptrace_sys_exit_btf": "sys_exit",
			"httptrace_fork_btf":     "sched_process_fork",
			"httptrace_exit_btf":     "sched_process_exit",
		}},
		{VariantRawTP, map[string]string{
			"httptrace_sys_exit": "sys_exit",
			"httptrace_fork":     "sched_process_fork",
			"httptrace_exit":     "sched_process_exit",
		}},
	}
	var errs []error
	for _, v := range variants {
		if t.want != "" && t.want != v.name {
			continue
		}
		if t.want == "" && t.hook != "" && (t.hook == HookSocket) != (v.name == VariantSocket) {
			continue
		}
		if t.carrier && v.name != VariantRawTP {
			v.progs["httptrace_tcp_sendmsg"] = "tcp_sendmsg_locked"
		}
		err := t.attachVariant(v.name, v.progs)
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", v.name, err))
	}
	if len(errs) == 0 {
		return fmt.Errorf("attach httptrace: unknown variant %q or hook %q", t.want, t.hook)
	}
	return fmt.Errorf("attach httptrace: %w", errors.Join(errs...))
}

func (t *Tracer) attachVariant(name string, progs map[string]string) (err error) {
	coll := &ebpf.CollectionSpec{
		Maps:      t.spec.Maps,
		Programs:  map[string]*ebpf.ProgramSpec{},
		Variables: t.spec.Variables,
		Types:     t.spec.Types,
		ByteOrder: t.spec.ByteOrder,
	}
	for p := range progs {
		if coll.Programs[p] = t.spec.Programs[p]; coll.Programs[p] == nil {
			return fmt.Errorf("no program %s", p)
		}
	}
	c, err := ebpf.NewCollectionWithOptions(coll, ebpf.CollectionOptions{MapReplacements: t.mapReplacements()})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return fmt.Errorf("load: %w\n%+v", err, ve)
		}
		return fmt.Errorf("load: %w", err)
	}
	// The maps are clones of t.objs': closing the collection keeps them.
	defer c.Close()
	defer func() {
		if err != nil {
			for _, l := range t.links {
				_ = l.Close()
			}
			t.links = nil
			t.closeIO()
		}
	}()
	for p, tp := range progs {
		var l link.Link
		if name != VariantRawTP {
			l, err = link.AttachTracing(link.TracingOptions{Program: c.Programs[p]})
		} else {
			l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: tp, Program: c.Programs[p]})
		}
		if err != nil {
			return fmt.Errorf("attach %s: %w", tp, err)
		}
		t.links = append(t.links, l)
		switch tp {
		case "sys_exit", "sock_recv_length", "sock_send_length":
			if t.io == nil {
				t.io = map[string]*ebpf.Program{}
			}
			t.io[p] = c.DetachProgram(p)
		}
	}
	t.variant = name
	return nil
}

// mapReplacements names every map of t.objs by its section name, so each
// variant's programs use the maps loaded once by Load (and shared with the
// other packages), whatever maps the C code declares.
func (t *Tracer) mapReplacements() map[string]*ebpf.Map {
	out := map[string]*ebpf.Map{}
	v := reflect.ValueOf(&t.objs).Elem()
	for i := 0; i < v.NumField(); i++ {
		if name := v.Type().Field(i).Tag.Get("ebpf"); name != "" {
			out[name] = v.Field(i).Interface().(*ebpf.Map)
		}
	}
	return out
}

func (t *Tracer) closeIO() error {
	var errs []error
	for name, p := range t.io {
		if err := p.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close %s: %w", name, err))
		}
	}
	t.io = nil
	return errors.Join(errs...)
}

// IOStats sums the kernel's run statistics (kernel.bpf_stats_enabled) of
// the programs that see socket I/O: how often they ran and for how long.
func (t *Tracer) IOStats() (runs uint64, runtime time.Duration, err error) {
	for name, p := range t.io {
		st, err := p.Stats()
		if err != nil {
			return 0, 0, fmt.Errorf("stats of %s: %w", name, err)
		}
		runs += st.RunCount
		runtime += st.Runtime
	}
	return runs, runtime, nil
}

// Variant is the attach variant in use, after Attach.
func (t *Tracer) Variant() string { return t.variant }

// Events is the ring buffer of finished requests.
func (t *Tracer) Events() *ebpf.Map { return t.objs.Events }

// Trace starts tracing the process pid.
func (t *Tracer) Trace(pid uint32) error {
	if err := t.objs.TracedPids.Put(pid, uint32(1)); err != nil {
		return fmt.Errorf("trace pid %d: %w", pid, err)
	}
	return nil
}

// Untrace stops tracing the process pid.
func (t *Tracer) Untrace(pid uint32) error {
	if err := t.objs.TracedPids.Delete(pid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("untrace pid %d: %w", pid, err)
	}
	return nil
}

// Counters are the kernel-side drop counters, summed over CPUs.
type Counters struct {
	EventsLost    uint64 // ring buffer full
	PipelineFull  uint64 // pipelined requests beyond the tracked depth
	ConnStateFull uint64 // connection state could not be stored
	Sampled       uint64 // finished spans of sampled contexts, sent on
	Unsampled     uint64 // finished spans of unsampled contexts, not sent
	// HeadersTooLarge counts request header blocks longer than the 16 KiB
	// scanned: headers past the limit are not looked at.
	HeadersTooLarge uint64
	// AssocUncertain counts outgoing requests made on a thread that was
	// serving several requests at once (an event loop): no parent was
	// guessed, the request started its own trace.
	AssocUncertain uint64
	// TLSHTTP2 counts HTTP/2 connection prefaces seen in TLS plaintext
	// (ALPN h2, Go's default over TLS): such connections are not parsed.
	TLSHTTP2 uint64
	// GoTLSNoFD counts Go crypto/tls calls whose connection was not a TCP
	// socket reached through a *net.TCPConn: not traced.
	GoTLSNoFD uint64
}

// ReadCounters sums the per-CPU counters.
func (t *Tracer) ReadCounters() (Counters, error) {
	var c Counters
	read := func(idx httptraceCounter) (uint64, error) {
		var per []uint64
		if err := t.objs.Counters.Lookup(uint32(idx), &per); err != nil {
			return 0, fmt.Errorf("read counter %d: %w", idx, err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		return sum, nil
	}
	var err error
	if c.EventsLost, err = read(httptraceCounterCOUNTER_EVENTS_LOST); err != nil {
		return c, err
	}
	if c.PipelineFull, err = read(httptraceCounterCOUNTER_PIPELINE_FULL); err != nil {
		return c, err
	}
	if c.ConnStateFull, err = read(httptraceCounterCOUNTER_CONN_STATE_FULL); err != nil {
		return c, err
	}
	if c.Sampled, err = read(httptraceCounterCOUNTER_SAMPLED); err != nil {
		return c, err
	}
	if c.Unsampled, err = read(httptraceCounterCOUNTER_UNSAMPLED); err != nil {
		return c, err
	}
	if c.HeadersTooLarge, err = read(httptraceCounterCOUNTER_HEADERS_TOO_LARGE); err != nil {
		return c, err
	}
	if c.AssocUncertain, err = read(httptraceCounterCOUNTER_ASSOC_UNCERTAIN); err != nil {
		return c, err
	}
	if c.TLSHTTP2, err = read(httptraceCounterCOUNTER_TLS_HTTP2); err != nil {
		return c, err
	}
	if c.GoTLSNoFD, err = read(httptraceCounterCOUNTER_GO_TLS_NO_FD); err != nil {
		return c, err
	}
	return c, nil
}

// Close detaches the programs and closes every map and program.
func (t *Tracer) Close() error {
	var errs []error
	for _, l := range t.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", t.variant, err))
		}
	}
	t.links = nil
	if err := t.closeIO(); err != nil {
		errs = append(errs, err)
	}
	if err := t.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close httptrace objects: %w", err))
	}
	return errors.Join(errs...)
}

// Clock converts the kernel's CLOCK_MONOTONIC timestamps to wall time.
type Clock struct{ bootWall time.Time }

// NewClock captures the offset between CLOCK_MONOTONIC and the wall clock.
func NewClock(monoNow time.Duration) Clock {
	return Clock{bootWall: time.Now().Add(-monoNow)}
}

// Time converts a CLOCK_MONOTONIC timestamp in nanoseconds.
func (c Clock) Time(ns uint64) time.Time { return c.bootWall.Add(time.Duration(ns)) }

// Decode turns one ring buffer record into a request. Records shorter than
// an event are rejected; tracestate records (IsTraceState) go to
// TraceStates instead. Its strings are newly allocated; a reader decoding
// many records uses a Decoder.
func Decode(raw []byte, clock Clock, r *spans.Request) error {
	return (*Decoder)(nil).Decode(raw, clock, r)
}

// Decode is Decode with the strings taken from d's caches.
func (d *Decoder) Decode(raw []byte, clock Clock, r *spans.Request) error {
	if len(raw) < EventSize {
		return fmt.Errorf("decode http event: record of %d bytes, want %d", len(raw), EventSize)
	}
	ev := (*httptraceHttpEvent)(unsafe.Pointer(&raw[0]))
	r.Kind = spans.Kind(ev.Kind)
	r.Start = clock.Time(ev.StartNs)
	r.End = clock.Time(ev.EndNs)
	r.PID = ev.Pid
	r.TID = ev.Tid
	r.Method = d.str(ev.Method[:], ev.MethodLen)
	r.Path = d.str(ev.Path[:], ev.PathLen)
	r.Host = d.str(ev.Host[:], ev.HostLen)
	r.Status = int(ev.Status)
	r.ProtoMinor = ev.ProtoMinor
	r.Local = netip.AddrPortFrom(addr(ev.Family, &ev.LocalAddr), ev.LocalPort)
	r.Peer = netip.AddrPortFrom(addr(ev.Family, &ev.PeerAddr), ev.PeerPort)
	r.TraceID = pcommon.TraceID(ev.TraceId)
	r.SpanID = pcommon.SpanID(ev.SpanId)
	r.ParentSpanID = pcommon.SpanID(ev.ParentId)
	r.TraceFlags = ev.TraceFlags
	r.TLS = ev.Tls != 0
	return nil
}

const afInet = 2

func addr(family uint8, b *[16]uint8) netip.Addr {
	if family == afInet {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(*b).Unmap()
}

// SharedMaps are the maps ctxprop, goruntime and the packet carriers share
// with this tracer.
type SharedMaps struct {
	TracedPids *ebpf.Map // tgid -> 1: processes to trace
	ThreadCtxs *ebpf.Map // pid_tgid -> context of the request a thread serves
	ClientIDs  *ebpf.Map // pid_tgid -> ids of an injected traceparent
	GoProcs    *ebpf.Map // tgid -> go_proc: Go processes tracked by goroutine
	GoCtxs     *ebpf.Map // (tgid, goid) -> context (Go)
	GoParents  *ebpf.Map // (tgid, goid) -> parentGoid (Go)
	// Tracestates: SERVER span id -> tracestate of its incoming context.
	Tracestates *ebpf.Map
	// CarrierOut and CarrierIn are the packet carrier's maps
	// (bpf/include/maps/carrier.h): the context of the request being sent
	// on a connection, and the newest one received on it.
	CarrierOut *ebpf.Map
	CarrierIn  *ebpf.Map
}

// Shared returns the maps to hand to ctxprop.Load, tcpopt.Load, ….
func (t *Tracer) Shared() SharedMaps {
	return SharedMaps{
		TracedPids:  t.objs.TracedPids,
		ThreadCtxs:  t.objs.ThreadCtxs,
		ClientIDs:   t.objs.ClientIds,
		GoProcs:     t.objs.GoProcs,
		GoCtxs:      t.objs.GoCtxs,
		GoParents:   t.objs.GoParents,
		Tracestates: t.objs.Tracestates,
		CarrierOut:  t.objs.CarrierOut,
		CarrierIn:   t.objs.CarrierIn,
	}
}
