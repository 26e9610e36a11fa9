//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// goruntime: the net/http client's hand-over, for Go processes. A Go
// program's trace context is kept per goroutine (maps/go.h): a goroutine
// works under its own context or its nearest ancestor's, read from the g at
// the socket operation, so no goroutine spawn is probed. The one exception
// is the transport's writeLoop goroutine, which writes the requests of every
// caller on a pooled connection: the caller's context is handed to it at
// persistConn.roundTrip (one uprobe hit per request), found through the
// writeLoop goroutine each connection starts (one hit per connection); a
// caller about to dial a connection has its ancestry walked before the
// transport's dial goroutine can reuse an exited ancestor's g (one hit per
// connection).
//
// Only entry uprobes are used, placed on the stack check's conditional jump,
// which the kernel emulates (no single-step): uretprobes rewrite the return
// address on the goroutine stack and crash the Go runtime when the stack
// moves. Arguments follow Go's register ABI (ABIInternal).

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

// Knob, set by the loader: every program returns at once (benchmark floor).
volatile const __u8 return_at_once = 0;

// The writeLoop goroutine of each persistConn: (tgid, *persistConn) -> its
// go_ctxs key.
struct pc_key {
	__u32 tgid;
	__u32 _pad;
	__u64 pc;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct pc_key);
	__type(value, __u64);
} go_write_loops SEC(".maps");

// A context handed at roundTrip before the connection's writeLoop goroutine
// started (a new connection): (tgid, *persistConn) -> context, taken by the
// writeLoop at its entry.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct pc_key);
	__type(value, struct thread_ctx);
} go_handed SEC(".maps");

// Dummy instances so bpf2go emits Go types for them.
const struct go_key *unused_go_key __attribute__((unused));
const struct go_proc *unused_go_proc __attribute__((unused));
const struct thread_ctx *unused_thread_ctx __attribute__((unused));

static __always_inline bool traced(__u64 pid_tgid)
{
	__u32 tgid = pid_tgid >> 32;
	return bpf_map_lookup_elem(&traced_pids, &tgid) != NULL;
}

// net/http.(*persistConn).writeLoop(pc *persistConn), entry, on the
// connection's writeLoop goroutine: remember it for the connection.
static __always_inline int on_write_loop(struct pt_regs *ctx)
{
	if (return_at_once)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!traced(pid_tgid))
		return 0;
	bool is_go;
	__u64 id = current_go_id(pid_tgid >> 32, &is_go);
	if (!id)
		return 0;
	struct pc_key k = {.tgid = pid_tgid >> 32, .pc = GO_ARG1(ctx)};
	bpf_map_update_elem(&go_write_loops, &k, &id, BPF_ANY);
	struct thread_ctx *handed = bpf_map_lookup_elem(&go_handed, &k);
	if (handed) {
		struct go_key wk = {.tgid = pid_tgid >> 32, .g = id};
		bpf_map_update_elem(&go_ctxs, &wk, handed, BPF_ANY);
		bpf_map_delete_elem(&go_handed, &k);
	}
	return 0;
}

// The writeLoop goroutine of persistConn pc (its go_ctxs key) if it is
// parked waiting for a request, 0 otherwise: the first receiver waiting on
// pc.writech, which only the writeLoop reads, checked by its start
// function. This finds the writer of a connection opened before the probes
// (whose writeLoop entry was never seen) and is never stale; the
// go_write_loops entry covers a writer not parked at that instant.
static __always_inline __u64 parked_writer(__u32 tgid, __u64 pc)
{
	struct go_proc *p = bpf_map_lookup_elem(&go_procs, &tgid);
	if (!p || !p->writech_off || !p->recvq_off || !p->write_loop || !p->startpc_off || !pc)
		return 0;
	__u64 ch = read_u64(pc + p->writech_off);
	if (!ch)
		return 0;
	__u64 sg = read_u64(ch + p->recvq_off); // recvq.first, a *sudog
	if (!sg)
		return 0;
	__u64 g = read_u64(sg); // sudog.g, its first field
	if (!g || read_u64(g + p->startpc_off) != p->write_loop)
		return 0;
	return go_id(p, g);
}

// net/http.(*persistConn).roundTrip(pc *persistConn, req *transportRequest),
// entry, on the caller's goroutine: the connection's writeLoop goroutine
// writes this request next, under the caller's context, or under none if
// the caller has none (never its own ancestors': it descends from whoever
// dialed the connection).
static __always_inline int on_round_trip(struct pt_regs *ctx)
{
	if (return_at_once)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!traced(pid_tgid))
		return 0;
	__u64 id;
	struct thread_ctx *tc = current_ctx(pid_tgid, &id);
	struct thread_ctx c = {.blocked = 1};
	if (tc) {
		c = *tc;
		c.inherited = 1;
		c.blocked = 0;
	}
	struct pc_key pk = {.tgid = pid_tgid >> 32, .pc = GO_ARG1(ctx)};
	// Handed over for a writeLoop that has not started yet: a new
	// connection's (the caller that dialed usually runs before the
	// writeLoop goroutine), or one made before the probes, whose writeLoop
	// stays without context. Always, since the writer found below may be
	// stale: a persistConn freed by the GC leaves its entry, and a new one
	// at the same address would otherwise hand its first request to the
	// dead writeLoop. A live writeLoop never takes it; a later one at this
	// address gets its own request's context from its own roundTrip.
	bpf_map_update_elem(&go_handed, &pk, &c, BPF_ANY);
	struct go_key wk = {.tgid = pid_tgid >> 32, .g = parked_writer(pid_tgid >> 32, GO_ARG1(ctx))};
	if (wk.g) {
		bpf_map_update_elem(&go_write_loops, &pk, &wk.g, BPF_ANY);
	} else {
		__u64 *writer = bpf_map_lookup_elem(&go_write_loops, &pk);
		if (!writer)
			return 0;
		wk.g = *writer;
	}
	bpf_map_update_elem(&go_ctxs, &wk, &c, BPF_ANY);
	return 0;
}

// net/http.(*Transport).queueForDial(t *Transport, w *wantConn), entry, on
// the caller's goroutine when no idle connection is left: the goroutine the
// transport starts to dial can take over the g of an exited ancestor of the
// caller (the runtime reuses the last freed g first), and with it the only
// record of that ancestor's parent. Walking the ancestry now, before that
// spawn, leaves it in go_parents for roundTrip. One hit per new connection.
static __always_inline int on_dial(struct pt_regs *ctx)
{
	if (return_at_once)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!traced(pid_tgid))
		return 0;
	__u64 id;
	current_ctx(pid_tgid, &id);
	return 0;
}

// Each program in two attach types: a uprobe_multi link (filtered to the
// whole process) where the kernel has it, single perf-event uprobes
// otherwise.
SEC("uprobe")
int goruntime_round_trip(struct pt_regs *ctx) { return on_round_trip(ctx); }

SEC("uprobe.multi")
int goruntime_round_trip_multi(struct pt_regs *ctx) { return on_round_trip(ctx); }

SEC("uprobe")
int goruntime_write_loop(struct pt_regs *ctx) { return on_write_loop(ctx); }

SEC("uprobe.multi")
int goruntime_write_loop_multi(struct pt_regs *ctx) { return on_write_loop(ctx); }

SEC("uprobe")
int goruntime_dial(struct pt_regs *ctx) { return on_dial(ctx); }

SEC("uprobe.multi")
int goruntime_dial_multi(struct pt_regs *ctx) { return on_dial(ctx); }
