// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#pragma once

// Goroutine tracking for Go processes (bpf/goruntime). In a tracked Go
// process the trace context belongs to the goroutine, not to the thread:
// goroutines move between threads. The current goroutine is read from the
// thread's TLS where the Go runtime keeps it, so nothing needs to follow the
// scheduler.

// Go processes whose goroutines are tracked: tgid -> 1, set by goruntime.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} go_procs SEC(".maps");

struct go_key {
	__u32 tgid;
	__u32 _pad;
	__u64 g;
};

// (tgid, g) -> context of the request the goroutine serves, or inherited
// from the goroutine that created it or handed it a request
// (thread_ctx.inherited, used once).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_key);
	__type(value, struct thread_ctx);
} go_ctxs SEC(".maps");

// The goroutine (runtime.g address) the current thread runs, in a tracked Go
// process, else 0. On amd64 Go keeps it in TLS at fsbase-8, with and
// without cgo.
static __always_inline __u64 current_goroutine(__u64 pid_tgid)
{
#if defined(__TARGET_ARCH_x86)
	__u32 tgid = pid_tgid >> 32;
	if (!bpf_map_lookup_elem(&go_procs, &tgid))
		return 0;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u64 fsbase = BPF_CORE_READ(task, thread.fsbase);
	__u64 g = 0;
	if (!fsbase || bpf_probe_read_user(&g, sizeof(g), (void *)(fsbase - 8)))
		return 0;
	return g;
#else
	return 0;
#endif
}

// The context the current thread works under: its goroutine's in a tracked
// Go process, else the thread's. g receives the goroutine (0 if none).
static __always_inline struct thread_ctx *current_ctx(__u64 pid_tgid, __u64 *g)
{
	*g = current_goroutine(pid_tgid);
	if (*g) {
		struct go_key k = {.tgid = pid_tgid >> 32, .g = *g};
		return bpf_map_lookup_elem(&go_ctxs, &k);
	}
	return bpf_map_lookup_elem(&thread_ctxs, &pid_tgid);
}

// Ends an inherited (one-shot) context after its first outgoing request.
static __always_inline void end_inherited(__u64 pid_tgid, __u64 g)
{
	if (g) {
		struct go_key k = {.tgid = pid_tgid >> 32, .g = g};
		bpf_map_delete_elem(&go_ctxs, &k);
	} else {
		bpf_map_delete_elem(&thread_ctxs, &pid_tgid);
	}
}
