// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#pragma once

// The trace context of the request a thread is serving: set by httptrace when
// the thread reads a request, ended when the response is written; read when
// the thread writes an outgoing request (span parent, injected header).
struct thread_ctx {
	__u8 trace_id[16];
	__u8 span_id[8]; // the SERVER span the thread is serving
	__u8 trace_flags;
	__u8 inherited; // copied from the thread that created this one, or handed
	                // to a Go goroutine: used once
	__u8 blocked;   // Go: the goroutine has no context, whatever its ancestors'
	// Threads (not Go): requests read on the thread and not yet answered,
	// counting one per connection. A thread that reads a request while it
	// still serves another (an event loop: Node, nginx, asyncio) cannot
	// tell which of them an outgoing request belongs to: the context is
	// ambiguous until only the newest one is left, and an outgoing request
	// made meanwhile gets none (no parent is guessed). gone: the newest has
	// been answered, inflight older ones are still pending.
	__u8 inflight;
	__u8 ambiguous;
	__u8 gone;
	__u8 _pad[2];
};

// Context of the request a thread is serving, pid_tgid -> context.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct thread_ctx);
} thread_ctxs SEC(".maps");
