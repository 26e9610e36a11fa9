// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// Head sampling, decided in the kernel when a trace context is made, with the
// OpenTelemetry SDK samplers: always_on, always_off, traceidratio and their
// parentbased_* forms. The decision is the W3C sampled flag (0x01) of the
// context: it is propagated with the context (an unsampled request still
// sends its traceparent, with that bit clear) and a span whose context is not
// sampled is not sent to user space.
#pragma once

#define TRACE_FLAG_SAMPLED 0x01
// W3C Trace Context Level 2: the right 7 bytes of the trace id are random.
// Set on the contexts whose trace id is made here (bpf_get_prandom_u32).
#define TRACE_FLAG_RANDOM 0x02

enum sampler_root {
	SAMPLER_ROOT_ALWAYS_ON = 0,
	SAMPLER_ROOT_ALWAYS_OFF = 1,
	SAMPLER_ROOT_RATIO = 2, // traceidratio, sampler_ratio_threshold
};

// Knobs, set by the loader before the program is loaded.
// How a context without a (valid) parent is decided: enum sampler_root.
volatile const __u8 sampler_root = SAMPLER_ROOT_ALWAYS_ON;
// 1: a context with a parent keeps the parent's decision (parentbased_*);
// 0: the root sampler decides on the trace id for every context.
volatile const __u8 sampler_parent_based = 1;
// traceidratio: sampled when (big-endian u64 of trace id bytes 8..15) >> 1
// is below this, ratio * 2^63, computed in user space (the OTel spec rule
// and the Go SDK's).
volatile const __u64 sampler_ratio_threshold = 1ull << 63;

// sample_trace_id is the root sampler's decision for trace_id.
static __always_inline bool sample_trace_id(const __u8 *trace_id)
{
	if (sampler_root == SAMPLER_ROOT_ALWAYS_OFF)
		return false;
	if (sampler_root != SAMPLER_ROOT_RATIO)
		return true;
	__u64 x = 0;
#pragma unroll
	for (int k = 8; k < 16; k++)
		x = (x << 8) | trace_id[k];
	return (x >> 1) < sampler_ratio_threshold;
}

// sample_root returns the flags of a new root context whose trace id was
// just made at random.
static __always_inline __u8 sample_root(const __u8 *trace_id)
{
	return (sample_trace_id(trace_id) ? TRACE_FLAG_SAMPLED : 0) | TRACE_FLAG_RANDOM;
}

// sample_child returns the flags of a context continuing a valid parent
// whose flags are parent_flags: kept as received under parentbased_*, else
// with the sampled bit replaced by the root sampler's decision.
static __always_inline __u8 sample_child(const __u8 *trace_id, __u8 parent_flags)
{
	if (sampler_parent_based)
		return parent_flags;
	return (parent_flags & ~TRACE_FLAG_SAMPLED) |
	       (sample_trace_id(trace_id) ? TRACE_FLAG_SAMPLED : 0);
}

// sampled reports whether a context with these flags is exported.
static __always_inline bool sampled(__u8 trace_flags)
{
	return trace_flags & TRACE_FLAG_SAMPLED;
}
