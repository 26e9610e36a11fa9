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

// H2EventSize is the size of an HTTP/2 (h2c) request record.
const H2EventSize = int(unsafe.Sizeof(gogrpcH2Event{}))

func init() {
	// Records share httptrace's ring buffer and are told apart by size.
	for _, n := range []int{EventSize, H2EventSize} {
		if n == httptrace.EventSize || n == httptrace.TraceStateEventSize {
			panic("gogrpc: record size collides with httptrace's")
		}
	}
	if EventSize == H2EventSize {
		panic("gogrpc: gRPC and HTTP/2 records of one size")
	}
}

// IsEvent reports whether raw is a gRPC record.
func IsEvent(raw []byte) bool { return len(raw) == EventSize }

// IsH2Event reports whether raw is an HTTP/2 request record.
func IsH2Event(raw []byte) bool { return len(raw) == H2EventSize }

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
	info  *goexe.GRPCInfo
	err   error
	h2    *goexe.H2Info
	h2err error
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
// or server, and the HTTP/2 probes if it has either copy of Go's HTTP/2
// (with DWARF): one uprobe_multi link per program, for that process only.
// Returns false and no error for a program with neither (or not Go, or
// stripped without grpc), and an error wrapping goexe.ErrNoGRPCOffsets for
// a stripped grpc program, which is left unprobed. The analysis is cached per executable file.
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
		ei.h2, ei.h2err = goexe.InspectH2(path)
		if len(t.exes) >= maxExes {
			clear(t.exes)
		}
		t.exes[key] = ei
	}
	noGRPC := errors.Is(ei.err, goexe.ErrNotGo) || errors.Is(ei.err, goexe.ErrNoGRPC)
	// Nearly every Go program links net/http's HTTP/2: a stripped one
	// (no offsets) is left without HTTP/2 probes silently.
	noH2 := errors.Is(ei.h2err, goexe.ErrNotGo) || errors.Is(ei.h2err, goexe.ErrNoH2) || errors.Is(ei.h2err, goexe.ErrNoH2Offsets)
	if ei.err != nil && !noGRPC {
		return false, fmt.Errorf("attach grpc probes to pid %d (%s): %w", pid, exePath, ei.err)
	}
	// An HTTP/2 inspection that failed otherwise leaves gRPC probed and
	// is reported after.
	var h2err error
	if ei.h2err != nil && !noH2 {
		h2err = fmt.Errorf("attach HTTP/2 probes to pid %d (%s): %w", pid, exePath, ei.h2err)
	}
	if ei.info == nil && ei.h2 == nil {
		return false, h2err
	}
	var bias uint64
	if (ei.info != nil && ei.info.PIE) || (ei.h2 != nil && ei.h2.PIE) {
		if bias, err = goexe.LoadBias(pid, path); err != nil {
			return false, fmt.Errorf("attach grpc probes to pid %d (%s): %w", pid, exePath, err)
		}
	}
	type site struct {
		prog    *ebpf.Program
		sym     string
		addrs   []uint64
		cookies []uint64
	}
	var sites []site
	if info := ei.info; info != nil {
		if err := t.grpcProc(pid, info, bias); err != nil {
			return false, fmt.Errorf("attach grpc probes to pid %d (%s): %w", pid, exePath, err)
		}
		if info.HasClient {
			sites = append(sites, site{t.objs.GogrpcClientWrite, goexe.GRPCClientWrite, []uint64{info.ClientWrite}, nil},
				site{t.objs.GogrpcFinish, goexe.GRPCFinish, []uint64{info.Finish}, nil})
		}
		if info.HasServe {
			sites = append(sites, site{t.objs.GogrpcHandleStream, goexe.GRPCHandleStream, []uint64{info.HandleStream}, nil},
				site{t.objs.GogrpcWriteStatus, goexe.GRPCWriteStatus, []uint64{info.WriteStatus}, nil})
		}
	}
	if h2 := ei.h2; h2 != nil {
		proc, copies := h2Proc(h2, bias)
		if err := t.objs.H2Procs.Put(uint32(pid), proc); err != nil {
			_ = t.objs.GrpcProcs.Delete(uint32(pid))
			return false, fmt.Errorf("attach HTTP/2 probes to pid %d (%s): %w", pid, exePath, err)
		}
		// One link per program, one address per copy, the copy's index
		// as its cookie.
		progs := []*ebpf.Program{t.objs.Goh2RunHandler, t.objs.Goh2HandlerDone,
			t.objs.Goh2EncodeHeaders, t.objs.Goh2WriteHeaders, t.objs.Goh2HandleResponse}
		for j, prog := range progs {
			s := site{prog: prog, sym: "HTTP/2 " + prog.String()}
			for _, c := range copies {
				cp := h2.Copies[c]
				addrs := []uint64{cp.RunHandler, cp.HandlerDone, cp.EncodeHeaders, cp.WriteHeaders, cp.HandleResponse}
				if (j < 2 && !cp.HasServer) || (j >= 2 && !cp.HasClient) {
					continue
				}
				s.addrs = append(s.addrs, addrs[j])
				s.cookies = append(s.cookies, h2CopyIndex(cp.Name))
			}
			if len(s.addrs) > 0 {
				sites = append(sites, s)
			}
		}
	}
	ex, err := link.OpenExecutable(path)
	if err != nil {
		t.deleteProcs(pid)
		return false, fmt.Errorf("attach grpc probes to pid %d (%s): %w", pid, exePath, err)
	}
	var links []link.Link
	for _, s := range sites {
		l, err := ex.UprobeMulti(nil, s.prog, &link.UprobeMultiOptions{Addresses: s.addrs, Cookies: s.cookies, PID: uint32(pid)})
		if err != nil {
			_ = closeLinks(links)
			t.deleteProcs(pid)
			return false, fmt.Errorf("attach grpc probes to pid %d (%s): uprobe_multi on %s: %w", pid, exePath, s.sym, err)
		}
		links = append(links, l)
	}
	t.links[pid] = links
	return true, h2err
}

func (t *Tracer) deleteProcs(pid int) {
	_ = t.objs.GrpcProcs.Delete(uint32(pid))
	_ = t.objs.H2Procs.Delete(uint32(pid))
}

// h2CopyIndex is the cookie of a copy: 0 the bundled one, 1 x/net's.
func h2CopyIndex(name string) uint64 {
	if name == "net/http" {
		return 0
	}
	return 1
}

// h2Proc is the programs' view of h2 and the indexes of its copies.
func h2Proc(h2 *goexe.H2Info, bias uint64) (gogrpcH2Proc, []int) {
	o := h2.Offsets
	p := gogrpcH2Proc{
		ReqMethod: uint32(o.ReqMethod), ReqUrl: uint32(o.ReqURL), ReqHost: uint32(o.ReqHost), ReqUri: uint32(o.ReqURI),
		UrlPath: uint32(o.URLPath), UrlQuery: uint32(o.URLQuery), UrlHost: uint32(o.URLHost),
		ConnFd: uint32(o.ConnFD), FdLaddr: uint32(o.FDLaddr), FdRaddr: uint32(o.FDRaddr),
		TcpIp: uint32(o.TCPAddrIP), TcpPort: uint32(o.TCPAddrPort),
		ReqHeader: uint32(o.ReqHeader),
	}
	if o.MapOK {
		p.MapDirPtr, p.MapDirLen, p.MapOk = uint32(o.MapDirPtr), uint32(o.MapDirLen), 1
	}
	if h2.TCPConnItab != 0 {
		p.TcpConnItab = h2.TCPConnItab + bias
	}
	var idx []int
	for i, c := range h2.Copies {
		co := c.Offsets
		pc := &p.Copies[h2CopyIndex(c.Name)]
		pc.ScConn, pc.RwRws, pc.RwsStream, pc.RwsStatus = uint32(co.SCConn), uint32(co.RWRws), uint32(co.RwsStream), uint32(co.RwsStatus)
		pc.StreamId, pc.CsCc, pc.CcTconn = uint32(co.StreamID), uint32(co.CSCC), uint32(co.CCTconn)
		pc.MhfFields, pc.HfValue, pc.Ok = uint32(co.MHFFields), uint32(co.HFValue), 1
		idx = append(idx, i)
	}
	return p, idx
}

// grpcProc puts the gRPC offsets of pid.
func (t *Tracer) grpcProc(pid int, info *goexe.GRPCInfo, bias uint64) error {
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
	return t.objs.GrpcProcs.Put(uint32(pid), proc)
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
	t.deleteProcs(pid)
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

// DecodeH2 decodes an HTTP/2 request record (IsH2Event) into r: a
// spans.Request with HTTP2 set (network.protocol.version "2").
func (d *Decoder) DecodeH2(raw []byte, clock httptrace.Clock, r *spans.Request) error {
	if len(raw) < H2EventSize {
		return fmt.Errorf("decode HTTP/2 event: record of %d bytes, want %d", len(raw), H2EventSize)
	}
	ev := (*gogrpcH2Event)(unsafe.Pointer(&raw[0]))
	*r = spans.Request{
		Kind:         spans.Kind(ev.Kind),
		Start:        clock.Time(ev.StartNs),
		End:          clock.Time(ev.EndNs),
		PID:          ev.Pid,
		TID:          ev.Tid,
		Method:       d.method(ev.Method[:min(int(ev.MethodLen), len(ev.Method))]),
		Host:         d.method(ev.Host[:min(int(ev.HostLen), len(ev.Host))]),
		Status:       int(ev.Status),
		Local:        netip.AddrPortFrom(netip.AddrFrom16(ev.LocalIp).Unmap(), ev.LocalPort),
		Peer:         netip.AddrPortFrom(netip.AddrFrom16(ev.PeerIp).Unmap(), ev.PeerPort),
		HTTP2:        true,
		TraceID:      pcommon.TraceID(ev.TraceId),
		SpanID:       pcommon.SpanID(ev.SpanId),
		ParentSpanID: pcommon.SpanID(ev.ParentId),
		TraceFlags:   ev.TraceFlags,
	}
	path := ev.Path[:min(int(ev.PathLen), len(ev.Path))]
	if q := ev.Query[:min(int(ev.QueryLen), len(ev.Query))]; len(q) > 0 {
		r.Path = string(path) + "?" + string(q)
	} else {
		r.Path = string(path)
	}
	return nil
}
