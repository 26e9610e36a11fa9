//go:build linux

package gogrpc

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"go.opentelemetry.io/collector/pdata/pcommon"

	"github.com/ebpftracing/ebpftracingreceiver/bpf/httptrace"
	"github.com/ebpftracing/ebpftracingreceiver/internal/goexe"
	"github.com/ebpftracing/ebpftracingreceiver/internal/spans"
)

// EventSize is the size of a gRPC record in the ring buffer.
const EventSize = int(unsafe.Sizeof(gogrpcGrpcEvent{}))

func init() {
	// Records share httptrace's ring buffer and are told apart by size.
	if EventSize == httptrace.EventSize || EventSize == httptrace.TraceStateEventSize {
		panic("gogrpc: record size collides with httptrace's")
	}
}

// IsEvent reports whether raw is a gRPC record.
func IsEvent(raw []byte) bool { return len(raw) == EventSize }

// maxExes bounds the cache of analysed executables.
const maxExes = 256

// Maps are the maps shared with httptrace (all required).
type Maps struct {
	TracedPids *ebpf.Map
	ThreadCtxs *ebpf.Map
	GoProcs    *ebpf.Map
	GoCtxs     *ebpf.Map
	GoParents  *ebpf.Map
	Events     *ebpf.Map // the ring buffer the records go to
}

// Options configure Load.
type Options struct {
	// WakeupRecords: records pending before the reader is woken (0: per
	// record), as httptrace's.
	WakeupRecords int
	// ReturnAtOnce loads programs that return at once (benchmark floor).
	ReturnAtOnce bool
}

// Counters are the programs' counters.
type Counters struct {
	EventsLost uint64 // ring buffer full
	Joined     uint64 // SERVER spans whose parent is a traced client's span
	Unjoined   uint64 // SERVER spans without a client record
}

// Tracer holds the loaded programs; AttachProcess adds processes.
type Tracer struct {
	mu     sync.Mutex
	objs   gogrpcObjects
	exes   map[exeKey]*exeInfo
	links  map[int][]link.Link
	closed bool
}

type exeKey struct {
	dev, ino uint64
	size     int64
	mtimeNs  int64
}

type exeInfo struct {
	info *goexe.GRPCInfo
	err  error
}

// Load loads the programs. They need uprobe_multi links (Linux 6.6):
// without them it returns an error wrapping ebpf.ErrNotSupported.
func Load(maps Maps, opts Options) (*Tracer, error) {
	if err := features.HaveBPFLinkUprobeMulti(); err != nil {
		return nil, fmt.Errorf("grpc probes: uprobe_multi links: %w", err)
	}
	spec, err := loadGogrpc()
	if err != nil {
		return nil, fmt.Errorf("load gogrpc spec: %w", err)
	}
	ring := maps.Events.MaxEntries()
	spec.Maps["events"].MaxEntries = ring
	wb := uint64(opts.WakeupRecords) * uint64(EventSize+8)
	if limit := uint64(ring) / 4; wb > limit {
		wb = limit
	}
	if err := spec.Variables["wakeup_bytes"].Set(wb); err != nil {
		return nil, fmt.Errorf("set wakeup_bytes: %w", err)
	}
	if opts.ReturnAtOnce {
		if err := spec.Variables["return_at_once"].Set(uint8(1)); err != nil {
			return nil, fmt.Errorf("set return_at_once: %w", err)
		}
	}
	t := &Tracer{exes: map[exeKey]*exeInfo{}, links: map[int][]link.Link{}}
	err = spec.LoadAndAssign(&t.objs, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		"traced_pids": maps.TracedPids,
		"thread_ctxs": maps.ThreadCtxs,
		"go_procs":    maps.GoProcs,
		"go_ctxs":     maps.GoCtxs,
		"go_parents":  maps.GoParents,
		"events":      maps.Events,
	}})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load gogrpc programs: %w\n%+v", err, ve)
		}
		return nil, fmt.Errorf("load gogrpc programs: %w", err)
	}
	return t, nil
}

// AttachProcess places the gRPC probes in Go process pid if its executable
// (opened as /proc/<pid>/exe; exePath names it in errors) has grpc's client
// or server: one uprobe_multi link per program, for that process only.
// Returns false and no error for a program without grpc (or not Go), and
// an error wrapping goexe.ErrNoGRPCOffsets for a stripped grpc program,
// which is left unprobed. The analysis is cached per executable file.
func (t *Tracer) AttachProcess(pid int, exePath string) (bool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false, fmt.Errorf("attach grpc probes to pid %d: tracer closed", pid)
	}
	if _, ok := t.links[pid]; ok {
		return true, nil
	}
	path := fmt.Sprintf("/proc/%d/exe", pid)
	fi, err := os.Stat(path)
	if err != nil {
		return false, fmt.Errorf("attach grpc probes to pid %d (%s): %w", pid, exePath, err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	key := exeKey{size: fi.Size(), mtimeNs: fi.ModTime().UnixNano()}
	if st != nil {
		key.dev, key.ino = st.Dev, st.Ino
	}
	ei := t.exes[key]
	if ei == nil {
		info, err := goexe.InspectGRPC(path)
		ei = &exeInfo{info: info, err: err}
		if len(t.exes) >= maxExes {
			clear(t.exes)
		}
		t.exes[key] = ei
	}
	if errors.Is(ei.err, goexe.ErrNotGo) || errors.Is(ei.err, goexe.ErrNoGRPC) {
		return false, nil
	}
	if ei.err != nil {
		return false, fmt.Errorf("attach grpc probes to pid %d (%s): %w", pid, exePath, ei.err)
	}
	info := ei.info
	var bias uint64
	if info.PIE {
		if bias, err = goexe.LoadBias(pid, path); err != nil {
			return false, fmt.Errorf("attach grpc probes to pid %d (%s): %w", pid, exePath, err)
		}
	}
	o := info.Offsets
	proc := gogrpcGrpcProc{
		StreamMethod: uint32(o.StreamMethod), StreamId: uint32(o.StreamID),
		ClientStream: uint32(o.ClientStream), ClientCt: uint32(o.ClientStreamCT),
		ServerStream: uint32(o.ServerStream),
		ClientLocal:  uint32(o.ClientLocal), ClientRemote: uint32(o.ClientRemote),
		ServerPeer: uint32(o.ServerPeer), PeerAddr: uint32(o.PeerAddr), PeerLocal: uint32(o.PeerLocal),
		TcpIp: uint32(o.TCPAddrIP), TcpPort: uint32(o.TCPAddrPort),
		StatusProto: uint32(o.StatusProto), ErrorStatus: uint32(o.ErrorStatus), ProtoCode: uint32(o.ProtoCode),
	}
	if info.IOEOF != 0 {
		proc.IoEof = info.IOEOF + bias
	}
	if info.StatusErrorItab != 0 {
		proc.StatusErrorItab = info.StatusErrorItab + bias
	}
	if info.ServerTransportItab != 0 {
		proc.ServerTransportItab = info.ServerTransportItab + bias
	}
	if err := t.objs.GrpcProcs.Put(uint32(pid), proc); err != nil {
		return false, fmt.Errorf("attach grpc probes to pid %d (%s): %w", pid, exePath, err)
	}
	ex, err := link.OpenExecutable(path)
	if err != nil {
		_ = t.objs.GrpcProcs.Delete(uint32(pid))
		return false, fmt.Errorf("attach grpc probes to pid %d (%s): %w", pid, exePath, err)
	}
	type site struct {
		prog  *ebpf.Program
		sym   string
		addrs []uint64
	}
	var sites []site
	if info.HasClient {
		sites = append(sites, site{t.objs.GogrpcClientWrite, goexe.GRPCClientWrite, []uint64{info.ClientWrite}},
			site{t.objs.GogrpcFinish, goexe.GRPCFinish, []uint64{info.Finish}})
	}
	if info.HasServe {
		sites = append(sites, site{t.objs.GogrpcHandleStream, goexe.GRPCHandleStream, []uint64{info.HandleStream}},
			site{t.objs.GogrpcWriteStatus, goexe.GRPCWriteStatus, []uint64{info.WriteStatus}})
	}
	var links []link.Link
	for _, s := range sites {
		l, err := ex.UprobeMulti(nil, s.prog, &link.UprobeMultiOptions{Addresses: s.addrs, PID: uint32(pid)})
		if err != nil {
			_ = closeLinks(links)
			_ = t.objs.GrpcProcs.Delete(uint32(pid))
			return false, fmt.Errorf("attach grpc probes to pid %d (%s): uprobe_multi on %s: %w", pid, exePath, s.sym, err)
		}
		links = append(links, l)
	}
	t.links[pid] = links
	return true, nil
}

func closeLinks(links []link.Link) error {
	var errs []error
	for _, l := range links {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
}

// DetachProcess removes the probes of pid; a pid not attached is no error.
func (t *Tracer) DetachProcess(pid int) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.detachLocked(pid)
}

func (t *Tracer) detachLocked(pid int) error {
	links, ok := t.links[pid]
	if !ok {
		return nil
	}
	delete(t.links, pid)
	_ = t.objs.GrpcProcs.Delete(uint32(pid))
	if err := closeLinks(links); err != nil {
		return fmt.Errorf("detach grpc probes from pid %d: %w", pid, err)
	}
	return nil
}

// Pids are the processes with probes attached.
func (t *Tracer) Pids() []int {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]int, 0, len(t.links))
	for pid := range t.links {
		out = append(out, pid)
	}
	return out
}

// ReadCounters reads the programs' counters.
func (t *Tracer) ReadCounters() (Counters, error) {
	var c Counters
	for i, dst := range []*uint64{&c.EventsLost, &c.Joined, &c.Unjoined} {
		if err := t.objs.GrpcCounters.Lookup(uint32(i), dst); err != nil {
			return c, fmt.Errorf("read grpc counters: %w", err)
		}
	}
	return c, nil
}

// Close detaches every process and closes the programs and the maps of
// its own (the shared ones stay open). Safe to call twice.
func (t *Tracer) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	for pid := range t.links {
		errs = append(errs, t.detachLocked(pid))
	}
	if err := t.objs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close gogrpc objects: %w", err))
	}
	return errors.Join(errs...)
}

// Decoder decodes gRPC records, keeping the method strings it has seen.
type Decoder struct {
	methods map[string]string
}

// maxMethods bounds the decoder's method cache; cleared when full.
const maxMethods = 4096

// Decode decodes a gRPC record (IsEvent) into r.
func (d *Decoder) Decode(raw []byte, clock httptrace.Clock, r *spans.RPC) error {
	if len(raw) < EventSize {
		return fmt.Errorf("decode grpc event: record of %d bytes, want %d", len(raw), EventSize)
	}
	ev := (*gogrpcGrpcEvent)(unsafe.Pointer(&raw[0]))
	r.Kind = spans.Kind(ev.Kind)
	r.Start = clock.Time(ev.StartNs)
	r.End = clock.Time(ev.EndNs)
	r.PID, r.TID = ev.Pid, ev.Tid
	n := min(int(ev.MethodLen), len(ev.Method))
	r.Method = d.method(ev.Method[:n])
	r.Code = int(ev.Code)
	r.Local = netip.AddrPortFrom(netip.AddrFrom16(ev.LocalIp).Unmap(), ev.LocalPort)
	r.Peer = netip.AddrPortFrom(netip.AddrFrom16(ev.PeerIp).Unmap(), ev.PeerPort)
	r.TraceID = pcommon.TraceID(ev.TraceId)
	r.SpanID = pcommon.SpanID(ev.SpanId)
	r.ParentSpanID = pcommon.SpanID(ev.ParentId)
	r.TraceFlags = ev.TraceFlags
	return nil
}

func (d *Decoder) method(b []byte) string {
	if d.methods == nil {
		d.methods = map[string]string{}
	}
	if s, ok := d.methods[string(b)]; ok {
		return s
	}
	if len(d.methods) >= maxMethods {
		clear(d.methods)
	}
	s := string(b)
	d.methods[s] = s
	return s
}
