// Package goruntime follows trace contexts between goroutines in Go
// processes. httptrace and ctxprop read the current goroutine from the
// thread's TLS and its ancestry (goid, parentGoid) from the runtime.g at the
// socket operation (include/maps/go.h), so a Go server pays no uprobe. What
// this package adds is the net/http client's hand-over: entry uprobes on
// persistConn.roundTrip (one hit per request), persistConn.writeLoop and
// Transport.queueForDial (one hit each per new connection). Attached
// processes are listed in go_procs, with the runtime.g offsets and the
// address of runtime.allgs found by internal/goexe (DWARF, or a per-release
// table for stripped binaries).
package goruntime

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -Wpadded" -target amd64,arm64 -type go_key -type go_proc -type thread_ctx goruntime goruntime.c -- -I../include
