// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#pragma once

// The ids of an outgoing request whose traceparent header ctxprop injected:
// decided in sk_msg while the request is being written, taken by httptrace at
// the exit of the same write so the CLIENT span has the injected span id.
struct client_ids {
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_id[8];
	__u8 trace_flags;
	__u8 _pad[7];
};

// pid_tgid of the writing thread -> ids.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct client_ids);
} client_ids SEC(".maps");
