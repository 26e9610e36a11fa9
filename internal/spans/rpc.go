package spans

import (
	"net/netip"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// RPC is one finished gRPC call seen by the library probes (bpf/gogrpc).
type RPC struct {
	Kind       Kind
	Start, End time.Time
	PID, TID   uint32
	// Method is the call's path as on the wire: "/pkg.Service/Method".
	Method string
	// Code is the gRPC status code (0 OK, 5 NOT_FOUND, ...).
	Code         int
	Local, Peer  netip.AddrPort
	TraceID      pcommon.TraceID
	SpanID       pcommon.SpanID
	ParentSpanID pcommon.SpanID // zero if root
	TraceFlags   uint8
}

// RPC attribute keys: those of the conventions this package follows
// (v1.43: rpc.system.name, rpc.method as "pkg.Service/Method",
// rpc.response.status_code as the code's name), and the older ones many
// backends still read (rpc.system, rpc.service, rpc.grpc.status_code as an
// int), which v1.43 no longer defines.
var (
	keyRPCSystemName = string(semconv.RPCSystemNameKey)
	keyRPCMethod     = string(semconv.RPCMethodKey)
	keyRPCStatus     = string(semconv.RPCResponseStatusCodeKey)
)

const (
	keyRPCSystem     = "rpc.system"
	keyRPCService    = "rpc.service"
	keyRPCGRPCStatus = "rpc.grpc.status_code"
)

// grpcCodes are the names of the gRPC status codes, by value.
var grpcCodes = [...]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// GRPCCodeName is the name of gRPC status code c ("NOT_FOUND"), or its
// number for a code gRPC does not define.
func GRPCCodeName(c int) string {
	if c >= 0 && c < len(grpcCodes) {
		return grpcCodes[c]
	}
	return strconv.Itoa(c)
}

// grpcServerError tells the codes that make a SERVER span an error (the
// gRPC conventions: UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
// UNAVAILABLE, DATA_LOSS); on a CLIENT span every code but OK is.
func grpcServerError(c int) bool {
	switch c {
	case 2, 4, 12, 13, 14, 15:
		return true
	}
	return false
}

// AppendRPC adds r as a span under the resource of proc (see Append).
func (b *Builder) AppendRPC(r *RPC, proc Process) {
	b.fillRPC(b.newSpan(proc), r)
}

func (b *Builder) fillRPC(span ptrace.Span, r *RPC) {
	span.SetTraceID(r.TraceID)
	span.SetSpanID(r.SpanID)
	span.SetParentSpanID(r.ParentSpanID)
	span.SetStartTimestamp(pcommon.NewTimestampFromTime(r.Start))
	span.SetEndTimestamp(pcommon.NewTimestampFromTime(r.End))
	span.SetFlags(spanFlags(&Request{Kind: r.Kind, TraceFlags: r.TraceFlags, ParentSpanID: r.ParentSpanID}))

	var attrs attrBuf
	method := strings.TrimPrefix(r.Method, "/")
	service, _, ok := strings.Cut(method, "/")
	if method == "" || !ok {
		method = "_OTHER"
	}
	span.SetName(method)
	attrs.str(keyRPCSystemName, "grpc")
	attrs.str(keyRPCSystem, "grpc")
	attrs.str(keyRPCMethod, method)
	if ok && service != "" {
		attrs.str(keyRPCService, service)
	}
	code := GRPCCodeName(r.Code)
	attrs.str(keyRPCStatus, code)
	attrs.int(keyRPCGRPCStatus, int64(r.Code))

	server, peer := unmap(r.Peer), unmap(r.Peer)
	isError := r.Code != 0
	switch r.Kind {
	case KindServer:
		span.SetKind(ptrace.SpanKindServer)
		server = unmap(r.Local)
		isError = grpcServerError(r.Code)
		if peer.IsValid() {
			attrs.str(keyClientAddress, b.addrString(peer.Addr()))
		}
	case KindClient:
		span.SetKind(ptrace.SpanKindClient)
	}
	if server.IsValid() {
		attrs.str(keyServerAddress, b.addrString(server.Addr()))
		attrs.int(keyServerPort, int64(server.Port()))
	}
	if peer.IsValid() {
		attrs.str(keyPeerAddress, b.addrString(peer.Addr()))
		attrs.int(keyPeerPort, int64(peer.Port()))
	}
	if isError {
		span.Status().SetCode(ptrace.StatusCodeError)
		attrs.str(keyErrorType, code)
	}
	attrs.to(span.Attributes())
}
