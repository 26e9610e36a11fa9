// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#pragma once

// The W3C tracestate of an incoming request's context, kept so that it is
// sent on with the propagated traceparent (ctxprop) and recorded in the
// spans (httptrace). Written by httptrace when a SERVER request with a valid
// traceparent and a valid tracestate is read; deleted when its response is
// written. data holds the validated list members joined by ',' (no
// whitespace), at most TRACESTATE_MAX bytes (truncated at member
// boundaries), not NUL-terminated.
#define TRACESTATE_MAX 512

struct tracestate {
	__u16 len; // bytes in data, 1..TRACESTATE_MAX
	__u8 _pad[6];
	char data[TRACESTATE_MAX];
};

// SERVER span id (the 8 bytes of thread_ctx.span_id as a __u64) ->
// tracestate of the request that span serves.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct tracestate);
} tracestates SEC(".maps");
