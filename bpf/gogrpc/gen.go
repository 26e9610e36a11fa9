// Package gogrpc makes SERVER and CLIENT spans of Go programs that use
// google.golang.org/grpc, from uprobe_multi links on the library: entry
// probes and probes on RET instructions, never uretprobes (they crash Go
// programs). Client and server of one call on this host join one trace
// without writing to the call: the client records its span per
// (connection, stream id) and the server reads it (see gogrpc.c).
// It also makes the HTTP/2 (h2c) spans of Go programs, from entry probes
// on both copies of Go's HTTP/2 (net/http's bundled one and
// golang.org/x/net/http2), joined the same way.
// Records go to httptrace's ring buffer; IsEvent and IsH2Event tell them
// apart.
package gogrpc

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -Wpadded" -target amd64,arm64 -type grpc_event -type grpc_proc -type h2_event -type h2_proc gogrpc gogrpc.c -- -I../include
