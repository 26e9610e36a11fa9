// Package ctxprop loads and attaches network-level trace-context
// propagation: a sockops program on the cgroup v2 root that tracks the
// connections of traced processes in a sockhash, and an sk_msg program on it
// that injects a W3C traceparent header into their outgoing HTTP/1.x
// requests. It shares traced_pids, thread_ctxs and client_ids with httptrace.
package ctxprop

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror -Wpadded" -target amd64,arm64 -type prop_counter ctxprop ctxprop.c -- -I../include
