package spans

import (
	"net/netip"
	"testing"
	"time"

	"go.opentelemetry.io/collector/pdata/ptrace"
)

// TestAppendRPC: span name, RPC attributes, and the span status of the
// gRPC conventions: NOT_FOUND is an error on the CLIENT only, INTERNAL on
// both sides.
func TestAppendRPC(t *testing.T) {
	cases := []struct {
		kind      Kind
		code      int
		wantError bool
	}{
		{KindServer, 0, false}, {KindClient, 0, false},
		{KindServer, 5, false}, {KindClient, 5, true},
		{KindServer, 13, true}, {KindClient, 13, true},
	}
	for _, c := range cases {
		b := NewBuilder("h", "v")
		now := time.Now()
		b.AppendRPC(&RPC{
			Kind: c.kind, Start: now, End: now.Add(time.Millisecond), PID: 7,
			Method: "/grpc.health.v1.Health/Check", Code: c.code,
			Local: netip.MustParseAddrPort("[::ffff:127.0.0.1]:5000"), Peer: netip.MustParseAddrPort("127.0.0.2:6000"),
		}, Process{PID: 7, ServiceName: "s"})
		span := b.Flush().ResourceSpans().At(0).ScopeSpans().At(0).Spans().At(0)
		a := span.Attributes()
		get := func(k string) any {
			v, ok := a.Get(k)
			if !ok {
				return nil
			}
			return v.AsRaw()
		}
		wantServer, wantPort := "127.0.0.1", int64(5000)
		wantKind := ptrace.SpanKindServer
		if c.kind == KindClient {
			wantServer, wantPort, wantKind = "127.0.0.2", 6000, ptrace.SpanKindClient
		}
		if span.Name() != "grpc.health.v1.Health/Check" || span.Kind() != wantKind ||
			get("rpc.system.name") != "grpc" || get("rpc.system") != "grpc" ||
			get("rpc.method") != "grpc.health.v1.Health/Check" || get("rpc.service") != "grpc.health.v1.Health" ||
			get("rpc.grpc.status_code") != int64(c.code) || get("rpc.response.status_code") != GRPCCodeName(c.code) ||
			get("server.address") != wantServer || get("server.port") != wantPort || get("network.peer.port") != int64(6000) {
			t.Errorf("%+v: %s %v %v", c, span.Name(), span.Kind(), a.AsRaw())
		}
		if gotErr := span.Status().Code() == ptrace.StatusCodeError; gotErr != c.wantError || (gotErr && get("error.type") != GRPCCodeName(c.code)) {
			t.Errorf("%+v: status %v, error.type %v", c, span.Status().Code(), get("error.type"))
		}
	}
	if GRPCCodeName(5) != "NOT_FOUND" || GRPCCodeName(99) != "99" {
		t.Fatal(GRPCCodeName(5), GRPCCodeName(99))
	}
}
