// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#pragma once

#define CLIENT_IDS_MAX 4 // requests of one write given ids (httptrace's PIPELINE_DEPTH)
#define CLIENT_SEEN 1023 // bytes of a write httptrace parses (its BUF_SIZE - 1)
#define CLIENT_ID_SENT 1
#define CLIENT_ID_APP 2

// The ids of one outgoing request whose traceparent header ctxprop injected.
struct client_id {
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_id[8];
	__u8 trace_flags;
	__u8 set; // CLIENT_ID_SENT: the ids sent in the request's header;
		  // CLIENT_ID_APP: req[0] holds the application's own traceparent,
		  // found in a later write of the block, for the connection's
		  // newest pending CLIENT request (trace_flags as the app sent them)
	__u8 _pad[6];
};

// The ids of the requests of one write, in their order in the write: decided
// in sk_msg while the write is being sent, taken by httptrace at the exit of
// the same write so each CLIENT span has the span id its header names. A
// request ctxprop did not inject has set == 0.
struct client_ids {
	struct client_id req[CLIENT_IDS_MAX];
};

// pid_tgid of the writing thread -> ids.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct client_ids);
} client_ids SEC(".maps");
