//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// w3ctest: a test-only program (BPF_PROG_TYPE_SYSCALL, run with
// BPF_PROG_TEST_RUN) that runs the header block scanner of httptrace
// (bpf/include/w3c.h) on a request given as the program's context, and
// leaves what it found in the results map.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

#define BUF_SIZE 1024
#define BUF_MASK (BUF_SIZE - 1)
#define BUF_PAD 136
// The context is a kernel copy of the test's input.
#define W3C_READ(dst, n, src) bpf_probe_read_kernel(dst, n, src)
#include "w3c.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct w3c_input {
	__u32 len; // bytes in data
	__u32 _pad;
	__u8 data[];
};

struct w3c_result {
	__u64 header_end;
	__u64 content_length;
	__u8 trace_id[16];
	__u8 parent_id[8];
	__u8 tp_count;
	__u8 tp_valid;
	__u8 trace_flags;
	__u8 over_limit;
	__u8 ts_seen;
	__u8 host_len;
	__u16 ts_len; // the tracestate httptrace would store, 0 if none
	char host[W3C_HOST_MAX];
	char ts[W3C_TS_MAX];
};

struct scratch {
	struct w3c_buf buf;
	struct w3c_scan st;
	struct ts_scan ts;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct w3c_result);
} results SEC(".maps");

const struct w3c_result *unused_w3c_result __attribute__((unused));

SEC("syscall")
int w3c_parse(struct w3c_input *in)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &zero);
	struct w3c_result *res = bpf_map_lookup_elem(&results, &zero);
	if (!s || !res)
		return 1;
	__u64 len = in->len;
	__u64 n = len < BUF_SIZE ? len : BUF_SIZE;
	barrier_var(n);
	if (n == 0 || n > BUF_SIZE)
		return 1;
	if (bpf_probe_read_kernel(s->buf.b, n, in->data))
		return 1;
	struct w3c_scan *st = &s->st;
	__builtin_memset(st, 0, sizeof(*st));
	st->end = n;
	st->len = len;
	st->src = (__u64)in->data;
	st->limit = HDR_BLOCK_MAX;
	st->want_ts = 1;
	w3c_scan(st, &s->buf, &s->ts, 1);

	__builtin_memset(res, 0, sizeof(*res));
	res->header_end = st->header_end;
	res->content_length = st->content_length;
	__builtin_memcpy(res->trace_id, st->trace_id, sizeof(res->trace_id));
	__builtin_memcpy(res->parent_id, st->parent_id, sizeof(res->parent_id));
	res->tp_count = st->tp_count;
	res->tp_valid = st->tp_valid;
	res->trace_flags = st->trace_flags;
	res->over_limit = st->over_limit;
	res->ts_seen = st->ts_seen;
	res->host_len = st->host_len;
	__builtin_memcpy(res->host, st->host, sizeof(res->host));
	// As httptrace: a tracestate only with a valid (single) traceparent,
	// and a complete header block.
	if (st->ts_seen && st->tp_count == 1 && st->tp_valid && st->header_end) {
		struct w3c_tracestate *v = ts_result(&s->ts);
		if (v) {
			res->ts_len = v->len;
			__builtin_memcpy(res->ts, v->data, sizeof(res->ts));
		}
	}
	return 0;
}
