//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// goruntime: per-goroutine trace context for Go processes. Go moves
// goroutines between threads, and net/http writes a client request from the
// transport's own goroutine (created, for a new connection, by descendants of
// the handler goroutine). So the context is kept per goroutine (go_ctxs),
// copied to a goroutine at its creation (runtime.newproc1, marked inherited)
// and to the goroutine that writes a request on a pooled connection
// (net/http); httptrace and ctxprop find the current goroutine in the
// thread's TLS (maps/go.h), so nothing follows the scheduler.
//
// Only entry uprobes and uprobes on RET instructions are used: uretprobes
// rewrite the return address on the goroutine stack and crash the Go runtime
// when the stack moves. Arguments follow Go's register ABI (ABIInternal).

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "maps/traced_pids.h"
#include "maps/thread_ctxs.h"
#include "maps/go.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#if defined(__TARGET_ARCH_x86)
// Integer arguments: RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11; result: RAX.
#define GO_ARG1(r) ((r)->ax)
#define GO_ARG2(r) ((r)->bx)
#define GO_RET1(r) ((r)->ax)
#define GO_G(r) ((r)->r14) // the current goroutine, in Go code
#elif defined(__TARGET_ARCH_arm64)
// Integer arguments: X0..X15; result: X0.
#define GO_ARG1(r) ((r)->regs[0])
#define GO_ARG2(r) ((r)->regs[1])
#define GO_RET1(r) ((r)->regs[0])
#define GO_G(r) ((r)->regs[28]) // the current goroutine, in Go code
#endif

// Context of the caller of the runtime.newproc1 call a thread is in, taken
// at its entry and used at its return: pid_tgid -> context. newproc1 runs on
// the system stack without switching goroutines, so the thread identifies
// the call.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct thread_ctx);
} go_newproc_pending SEC(".maps");

// net/http client requests handed from the goroutine that makes them to the
// goroutine that writes them on a pooled connection (the transport's
// writeLoop): (tgid, *http.Request) -> context of the caller.
struct req_key {
	__u32 tgid;
	__u32 _pad;
	__u64 req;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct req_key);
	__type(value, struct thread_ctx);
} go_http_reqs SEC(".maps");

// Dummy instances so bpf2go emits Go types for them.
const struct go_key *unused_go_key __attribute__((unused));
const struct thread_ctx *unused_thread_ctx __attribute__((unused));

static __always_inline bool traced(__u64 pid_tgid)
{
	__u32 tgid = pid_tgid >> 32;
	return bpf_map_lookup_elem(&traced_pids, &tgid) != NULL;
}

// runtime.newproc1(fn *funcval, callergp *g, callerpc uintptr, parked bool,
// waitreason waitReason) *g, entry: remember the caller's context, or that
// it has none (an entry left by a call whose return was not seen must not
// reach the next call).
static __always_inline int on_newproc1(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!traced(pid_tgid))
		return 0;
	struct go_key key = {.tgid = pid_tgid >> 32, .g = GO_ARG2(ctx)};
	struct thread_ctx *tc = bpf_map_lookup_elem(&go_ctxs, &key);
	if (tc)
		bpf_map_update_elem(&go_newproc_pending, &pid_tgid, tc, BPF_ANY);
	else
		bpf_map_delete_elem(&go_newproc_pending, &pid_tgid);
	return 0;
}

// A RET instruction of runtime.newproc1: the result is the new goroutine.
// It inherits the caller's context; g structs are reused, so a goroutine
// created without one loses any context left by an earlier user of its g.
static __always_inline int on_newproc1_ret(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!traced(pid_tgid))
		return 0;
	struct go_key key = {.tgid = pid_tgid >> 32, .g = GO_RET1(ctx)};
	struct thread_ctx *tc = bpf_map_lookup_elem(&go_newproc_pending, &pid_tgid);
	if (!tc) {
		bpf_map_delete_elem(&go_ctxs, &key);
		return 0;
	}
	tc->inherited = 1;
	bpf_map_update_elem(&go_ctxs, &key, tc, BPF_ANY);
	bpf_map_delete_elem(&go_newproc_pending, &pid_tgid);
	return 0;
}

// net/http.(*persistConn).roundTrip(pc *persistConn, req *transportRequest),
// entry, on the caller's goroutine: remember the caller's context for the
// *http.Request (the first word of transportRequest, an embedded pointer).
static __always_inline int on_round_trip(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!traced(pid_tgid))
		return 0;
	struct req_key rk = {.tgid = pid_tgid >> 32};
	if (bpf_probe_read_user(&rk.req, sizeof(rk.req), (void *)GO_ARG2(ctx)) || !rk.req)
		return 0;
	struct go_key key = {.tgid = pid_tgid >> 32, .g = GO_G(ctx)};
	struct thread_ctx *tc = bpf_map_lookup_elem(&go_ctxs, &key);
	if (tc)
		bpf_map_update_elem(&go_http_reqs, &rk, tc, BPF_ANY);
	else
		bpf_map_delete_elem(&go_http_reqs, &rk);
	return 0;
}

// net/http.(*Request).write(r *Request, ...), entry, on the goroutine that
// writes the request: it works under the caller's context until the request
// is written (used once, like an inherited context).
static __always_inline int on_request_write(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!traced(pid_tgid))
		return 0;
	struct req_key rk = {.tgid = pid_tgid >> 32, .req = GO_ARG1(ctx)};
	struct thread_ctx *tc = bpf_map_lookup_elem(&go_http_reqs, &rk);
	if (!tc)
		return 0;
	struct thread_ctx c = *tc;
	c.inherited = 1;
	bpf_map_delete_elem(&go_http_reqs, &rk);
	struct go_key key = {.tgid = pid_tgid >> 32, .g = GO_G(ctx)};
	bpf_map_update_elem(&go_ctxs, &key, &c, BPF_ANY);
	return 0;
}

// Each program in two attach types: a uprobe_multi link (one link for all
// RET sites, filtered to the whole process) where the kernel has it, single
// perf-event uprobes otherwise.
SEC("uprobe")
int goruntime_newproc1(struct pt_regs *ctx) { return on_newproc1(ctx); }

SEC("uprobe.multi")
int goruntime_newproc1_multi(struct pt_regs *ctx) { return on_newproc1(ctx); }

SEC("uprobe")
int goruntime_newproc1_ret(struct pt_regs *ctx) { return on_newproc1_ret(ctx); }

SEC("uprobe.multi")
int goruntime_newproc1_ret_multi(struct pt_regs *ctx) { return on_newproc1_ret(ctx); }

SEC("uprobe")
int goruntime_round_trip(struct pt_regs *ctx) { return on_round_trip(ctx); }

SEC("uprobe.multi")
int goruntime_round_trip_multi(struct pt_regs *ctx) { return on_round_trip(ctx); }

SEC("uprobe")
int goruntime_request_write(struct pt_regs *ctx) { return on_request_write(ctx); }

SEC("uprobe.multi")
int goruntime_request_write_multi(struct pt_regs *ctx) { return on_request_write(ctx); }
