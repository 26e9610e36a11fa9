// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#pragma once

// Goroutine tracking for Go processes (bpf/goruntime): the goroutine each
// thread runs, and the trace context each goroutine carries. goruntime keeps
// thread_ctxs equal to the context of the goroutine a thread runs, so the
// other programs keep reading thread_ctxs.

// pid_tgid -> g (runtime.g address) the thread runs, set at runtime.execute.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} go_cur SEC(".maps");

struct go_key {
	__u32 tgid;
	__u32 _pad;
	__u64 g;
};

// (tgid, g) -> context of the request the goroutine serves, or inherited
// from the goroutine that created it (thread_ctx.inherited, used once).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct go_key);
	__type(value, struct thread_ctx);
} go_ctxs SEC(".maps");
