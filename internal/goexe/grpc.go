package goexe

import (
	"debug/dwarf"
	"debug/elf"
	"errors"
	"fmt"
)

// Functions of google.golang.org/grpc probed for gRPC spans.
const (
	// (*http2Client).write(s *ClientStream, hdr, data, opts) entry, on the
	// caller's goroutine (ClientStream.Write, inlined, calls it): the
	// request message goes to a stream whose id is set; the CLIENT span
	// starts. Entry probes only (on the stack check's JBE, which
	// the kernel emulates: one trap); a RET instruction is single-stepped
	// out of line (two traps), so no RET is probed.
	GRPCClientWrite = "google.golang.org/grpc/internal/transport.(*http2Client).write"
	// (*clientStream).finish(err error) entry: the call ends with err's
	// status code (nil or io.EOF: OK).
	GRPCFinish = "google.golang.org/grpc.(*clientStream).finish"
	// io.EOF, the variable: finish treats it as success.
	symIOEOF = "io.EOF"
	// (*Server).handleStream(t ServerTransport, stream *ServerStream),
	// entry: a SERVER span starts, on the stream's own goroutine.
	GRPCHandleStream = "google.golang.org/grpc.(*Server).handleStream"
	// (*http2Server).writeStatus(s *ServerStream, st *status.Status),
	// entry: the SERVER span ends with st's code.
	GRPCWriteStatus = "google.golang.org/grpc/internal/transport.(*http2Server).writeStatus"
	// The itab of *internal/status.Error as an error: how the RET of
	// Invoke tells a gRPC status error from another error.
	grpcStatusErrorItab = "go:itab.*google.golang.org/grpc/internal/status.Error,error"
	// The itab of *http2Server as a ServerTransport: handleStream's
	// transport is one (not ServeHTTP's handler transport).
	grpcServerTransportItab = "go:itab.*google.golang.org/grpc/internal/transport.http2Server,google.golang.org/grpc/internal/transport.ServerTransport"
)

// ErrNoGRPC is returned by InspectGRPC for a Go program without the probed
// grpc functions.
var ErrNoGRPC = errors.New("no google.golang.org/grpc client or server")

// ErrNoGRPCOffsets is returned by InspectGRPC for a grpc program whose
// struct offsets cannot be read (stripped: no DWARF).
var ErrNoGRPCOffsets = errors.New("grpc struct offsets unknown (stripped binary: no DWARF)")

// GRPCOffsets are the byte offsets the gRPC programs read, from DWARF.
type GRPCOffsets struct {
	StreamMethod, StreamID uint64 // transport.Stream.method (string), .id (uint32)
	ClientStream           uint64 // transport.ClientStream.Stream (embedded)
	ClientStreamCT         uint64 // transport.ClientStream.ct (*http2Client)
	ServerStream           uint64 // transport.ServerStream.Stream (embedded)
	ClientLocal            uint64 // http2Client.localAddr (net.Addr)
	ClientRemote           uint64 // http2Client.remoteAddr (net.Addr)
	ServerPeer             uint64 // http2Server.peer (peer.Peer)
	PeerAddr, PeerLocal    uint64 // peer.Peer.Addr, .LocalAddr (net.Addr)
	TCPAddrIP, TCPAddrPort uint64 // net.TCPAddr.IP ([]byte), .Port (int)
	StatusProto            uint64 // internal/status.Status.s (*spb.Status)
	ErrorStatus            uint64 // internal/status.Error.s (*Status)
	ProtoCode              uint64 // genproto rpc/status.Status.Code (int32)
}

// GRPCInfo is what InspectGRPC found: the probe sites as file offsets (0 or
// nil: that side is absent), the offsets and the link-time address of the
// *status.Error itab (0 if unknown).
type GRPCInfo struct {
	ClientWrite, Finish uint64 // entries
	HandleStream        uint64 // entry
	WriteStatus         uint64 // entry
	IOEOF               uint64 // link-time address of the variable io.EOF, 0 if unknown
	Offsets             GRPCOffsets
	StatusErrorItab     uint64
	ServerTransportItab uint64 // link-time *http2Server ServerTransport itab, 0 if unknown
	PIE                 bool   // itab addresses move by the load bias
	HasClient, HasServe bool
}

// grpcStructs are the DWARF struct names and the fields read of each.
var grpcStructs = map[string][]string{
	"google.golang.org/grpc/internal/transport.Stream":        {"method", "id"},
	"google.golang.org/grpc/internal/transport.ClientStream":  {"Stream", "ct"},
	"google.golang.org/grpc/internal/transport.ServerStream":  {"Stream"},
	"google.golang.org/grpc/internal/transport.http2Client":   {"localAddr", "remoteAddr"},
	"google.golang.org/grpc/internal/transport.http2Server":   {"peer"},
	"google.golang.org/grpc/peer.Peer":                        {"Addr", "LocalAddr"},
	"net.TCPAddr":                                             {"IP", "Port"},
	"google.golang.org/grpc/internal/status.Status":           {"s"},
	"google.golang.org/grpc/internal/status.Error":            {"s"},
	"google.golang.org/genproto/googleapis/rpc/status.Status": {"Code"},
}

// InspectGRPC finds the gRPC probe sites of the Go executable at path
// (amd64). Offsets come from DWARF only: a stripped grpc program gives
// ErrNoGRPCOffsets (no per-release table: grpc's structs change between
// its releases independently of Go's).
func InspectGRPC(path string) (*GRPCInfo, error) {
	gi, err := Inspect(path, GRPCClientWrite, GRPCFinish, GRPCHandleStream, GRPCWriteStatus)
	if err != nil {
		return nil, err
	}
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("parse executable: %w", err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("grpc probes on %s: amd64 only", f.Machine)
	}
	info := &GRPCInfo{}
	cw, okCW := gi.Funcs[GRPCClientWrite]
	fin, okFin := gi.Funcs[GRPCFinish]
	hs, okHS := gi.Funcs[GRPCHandleStream]
	ws, okWS := gi.Funcs[GRPCWriteStatus]
	info.HasClient = okCW && okFin
	info.HasServe = okHS && okWS
	if !info.HasClient && !info.HasServe {
		return nil, ErrNoGRPC
	}
	d, err := f.DWARF()
	if err != nil {
		return nil, ErrNoGRPCOffsets
	}
	fields := structFields(d, grpcStructs)
	get := func(st, field string) uint64 {
		v, ok := fields[st][field]
		if !ok {
			err = errors.Join(err, fmt.Errorf("%s.%s", st, field))
		}
		return v
	}
	err = nil
	const tr = "google.golang.org/grpc/internal/transport."
	info.Offsets = GRPCOffsets{
		StreamMethod:   get(tr+"Stream", "method"),
		StreamID:       get(tr+"Stream", "id"),
		ClientStream:   get(tr+"ClientStream", "Stream"),
		ClientStreamCT: get(tr+"ClientStream", "ct"),
		ServerStream:   get(tr+"ServerStream", "Stream"),
		TCPAddrIP:      get("net.TCPAddr", "IP"),
		TCPAddrPort:    get("net.TCPAddr", "Port"),
		StatusProto:    get("google.golang.org/grpc/internal/status.Status", "s"),
		ErrorStatus:    get("google.golang.org/grpc/internal/status.Error", "s"),
		ProtoCode:      get("google.golang.org/genproto/googleapis/rpc/status.Status", "Code"),
	}
	if info.HasClient {
		info.Offsets.ClientLocal = get(tr+"http2Client", "localAddr")
		info.Offsets.ClientRemote = get(tr+"http2Client", "remoteAddr")
	}
	if info.HasServe {
		info.Offsets.ServerPeer = get(tr+"http2Server", "peer")
		info.Offsets.PeerAddr = get("google.golang.org/grpc/peer.Peer", "Addr")
		info.Offsets.PeerLocal = get("google.golang.org/grpc/peer.Peer", "LocalAddr")
	}
	if err != nil {
		return nil, fmt.Errorf("grpc struct fields not in DWARF: %w", err)
	}
	if info.HasClient {
		if info.ClientWrite, err = ProbeSite(f, GRPCClientWrite, cw); err != nil {
			return nil, err
		}
		if info.Finish, err = ProbeSite(f, GRPCFinish, fin); err != nil {
			return nil, err
		}
	}
	info.PIE = f.Type == elf.ET_DYN
	if syms, err := f.Symbols(); err == nil {
		for _, s := range syms {
			switch s.Name {
			case grpcStatusErrorItab:
				info.StatusErrorItab = s.Value
			case grpcServerTransportItab:
				info.ServerTransportItab = s.Value
			case symIOEOF:
				info.IOEOF = s.Value
			}
		}
	}
	if info.HasServe {
		if info.HandleStream, err = ProbeSite(f, GRPCHandleStream, hs); err != nil {
			return nil, err
		}
		if info.WriteStatus, err = ProbeSite(f, GRPCWriteStatus, ws); err != nil {
			return nil, err
		}
	}
	return info, nil
}

// structFields reads the member offsets of the named structs from DWARF:
// name -> field -> offset, for the fields asked for that exist.
func structFields(d *dwarf.Data, want map[string][]string) map[string]map[string]uint64 {
	out := map[string]map[string]uint64{}
	r := d.Reader()
	for len(out) < len(want) {
		e, err := r.Next()
		if err != nil || e == nil {
			break
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		names, ok := want[name]
		if e.Tag != dwarf.TagStructType || !ok || out[name] != nil {
			if e.Children && e.Tag != dwarf.TagCompileUnit {
				r.SkipChildren()
			}
			continue
		}
		asked := map[string]bool{}
		for _, n := range names {
			asked[n] = true
		}
		fields := map[string]uint64{}
		for {
			m, err := r.Next()
			if err != nil || m == nil || m.Tag == 0 {
				break
			}
			fname, _ := m.Val(dwarf.AttrName).(string)
			if loc, ok := m.Val(dwarf.AttrDataMemberLoc).(int64); ok && m.Tag == dwarf.TagMember && asked[fname] {
				fields[fname] = uint64(loc)
			}
		}
		out[name] = fields
	}
	return out
}
