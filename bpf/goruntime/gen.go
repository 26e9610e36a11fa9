// Package goruntime keeps a trace context per goroutine in Go processes and
// mirrors it into thread_ctxs, the per-thread context that httptrace and
// ctxprop read: uprobes at the entry of runtime.execute (a thread switches
// goroutine) and at the entry and every RET instruction of runtime.newproc1
// (a goroutine is created, and inherits its creator's context). It shares
// traced_pids, thread_ctxs, go_cur and go_ctxs with httptrace.
package goruntime

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -Wpadded" -target amd64,arm64 -type go_key -type thread_ctx goruntime goruntime.c -- -I../include
