// Package goruntime carries trace contexts between goroutines in Go
// processes: uprobes at the entry and every RET instruction of
// runtime.newproc1 (a goroutine is created and inherits its creator's
// context), and at the entry of net/http's persistConn.roundTrip and
// Request.write (a request is handed to the transport's writeLoop goroutine).
// httptrace and ctxprop find the current goroutine in the thread's TLS and
// look its context up in go_ctxs. Attached processes are listed in go_procs.
// It shares traced_pids, thread_ctxs, go_procs and go_ctxs with httptrace.
package goruntime

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -Wpadded" -target amd64,arm64 -type go_key -type thread_ctx goruntime goruntime.c -- -I../include
