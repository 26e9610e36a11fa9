//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// ctxprop: network-level W3C trace-context propagation for plaintext
// HTTP/1.x. A sockops program on the cgroup v2 root puts the connections
// that traced processes open into a sockhash; an sk_msg program on that
// sockhash sees each write on them and, when the writing thread is serving a
// traced request (thread_ctxs, set by httptrace), inserts
// "traceparent: 00-<trace>-<new span>-<flags>" after the request line. The
// new span id is handed to httptrace (client_ids) for the CLIENT span. A
// request that already carries a traceparent is left untouched.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "ctxprop.h"
#include "http.h"
#include "maps/traced_pids.h"
#include "maps/thread_ctxs.h"
#include "maps/client_ids.h"
#include "maps/tracestate.h"
#include "maps/go.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Connections opened by traced processes, socket cookie -> socket.
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} ctxprop_socks SEC(".maps");

// connect() seen from a traced process, waiting for the handshake to end:
// socket cookie -> tgid.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u32);
} connecting SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PROP_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} prop_counters SEC(".maps");

struct prop_scratch {
	__u8 buf[SCAN_SIZE + SCAN_PAD];
	__u64 end;        // bytes in buf
	__u64 line_start; // offset of the current header line
	__u64 line1_end;  // offset just past the request line
	__u64 header_end; // offset just past the blank line, 0 if not seen
	__u64 tp_found;   // a traceparent header is present
	char hdr[TP_HEADER_LEN + 2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct prop_scratch);
} prop_scratch_map SEC(".maps");

// Socket inodes of a newly traced process, filled by user space before it
// runs ctxprop_existing: inode -> 1.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u8);
} existing_inodes SEC(".maps");

const enum prop_counter *unused_prop_counter __attribute__((unused));

static __always_inline void prop_count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&prop_counters, &which);
	if (v)
		*v += 1;
}

// Knob, set by the loader: every program returns at once (benchmark floor).
volatile const __u8 return_at_once = 0;

SEC("sockops")
int ctxprop_sockops(struct bpf_sock_ops *skops)
{
	if (return_at_once)
		return 1;
	__u64 cookie;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		// connect() runs in the caller's context: the pid is the owner's.
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		if (!bpf_map_lookup_elem(&traced_pids, &tgid))
			return 1;
		cookie = bpf_get_socket_cookie(skops);
		bpf_map_update_elem(&connecting, &cookie, &tgid, BPF_ANY);
		return 1;
	}
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		// Runs in softirq: identify the socket by its cookie.
		cookie = bpf_get_socket_cookie(skops);
		if (!bpf_map_lookup_elem(&connecting, &cookie))
			return 1;
		bpf_map_delete_elem(&connecting, &cookie);
		bpf_sock_hash_update(skops, &ctxprop_socks, &cookie, BPF_NOEXIST);
		return 1;
	}
	return 1;
}

static __always_inline __u64 scan_load8(const __u8 *buf, __u64 i)
{
	__u64 v;
	__builtin_memcpy(&v, buf + (i & SCAN_MASK), 8);
	return v;
}

static __always_inline __u32 scan_load4(const __u8 *buf, __u64 i)
{
	__u32 v;
	__builtin_memcpy(&v, buf + (i & SCAN_MASK), 4);
	return v;
}

// One byte per iteration; the state lives in the scratch map (see httptrace).
static long scan_cb(__u64 i, void *data)
{
	struct prop_scratch *s = *(struct prop_scratch **)data;
	if (i >= s->end)
		return 1;
	__u8 ch = s->buf[i & SCAN_MASK];
	if (i != s->line_start) {
		if (ch == '\n') {
			if (!s->line1_end)
				s->line1_end = i + 1;
			s->line_start = i + 1;
		}
		return 0;
	}
	if (ch == '\r' || ch == '\n') {
		s->header_end = i + 1;
		return 1;
	}
	if ((scan_load8(s->buf, i) | LOWER8) == W8('t', 'r', 'a', 'c', 'e', 'p', 'a', 'r') &&
	    (scan_load4(s->buf, i + 8) | LOWER4) == W4('e', 'n', 't', ':')) {
		s->tp_found = 1;
		return 1;
	}
	return 0;
}

static __always_inline char hex_digit(__u8 v)
{
	return v < 10 ? '0' + v : 'a' + (v - 10);
}

static __always_inline void put_hex(char *dst, const __u8 *src, int n)
{
#pragma unroll
	for (int k = 0; k < 16; k++) {
		if (k >= n)
			break;
		dst[2 * k] = hex_digit((src[k] >> 4) & 15);
		dst[2 * k + 1] = hex_digit(src[k] & 15);
	}
}

SEC("sk_msg")
int ctxprop_sk_msg(struct sk_msg_md *msg)
{
	if (return_at_once)
		return SK_PASS;
	__u32 size = msg->size;
	if (size < 16)
		return SK_PASS;
	bpf_msg_pull_data(msg, 0, size < SCAN_SIZE ? size : SCAN_SIZE, 0);
	__u8 *data = msg->data;
	__u8 *end = msg->data_end;
	if (data + 16 > end)
		return SK_PASS;
	if (!request_method_len(data))
		return SK_PASS;
	// Looked up once the write is known to start a request: in a Go
	// process the lookup may walk the goroutine's ancestry.
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 g;
	struct thread_ctx *t = current_ctx(pid_tgid, &g);
	if (!t)
		return SK_PASS;

	__u32 zero = 0;
	struct prop_scratch *s = bpf_map_lookup_elem(&prop_scratch_map, &zero);
	if (!s)
		return SK_PASS;
	__u64 n = end - data;
	if (n > SCAN_SIZE)
		n = SCAN_SIZE;
	barrier_var(n);
	if (n > SCAN_SIZE || n < 16)
		return SK_PASS;
	if (bpf_probe_read_kernel(s->buf, n, data))
		return SK_PASS;
	s->end = n;
	s->line_start = (__u64)-1;
	s->line1_end = 0;
	s->header_end = 0;
	s->tp_found = 0;
	bpf_loop(SCAN_SIZE, scan_cb, &s, 0);
	if (s->tp_found) {
		prop_count(PROP_APP_HEADER);
		return SK_PASS;
	}
	__u64 off = s->line1_end;
	if (!s->header_end || !off || off > SCAN_SIZE) {
		prop_count(PROP_HEADERS_TOO_LONG);
		return SK_PASS;
	}

	struct client_ids ids = {};
	__builtin_memcpy(ids.trace_id, t->trace_id, sizeof(ids.trace_id));
	__builtin_memcpy(ids.parent_id, t->span_id, sizeof(ids.parent_id));
	ids.trace_flags = t->trace_flags;
	random_id(ids.span_id, 2);

	char *hdr = s->hdr;
	__builtin_memcpy(hdr, "traceparent: 00-", 16);
	put_hex(hdr + 16, ids.trace_id, 16);
	hdr[48] = '-';
	put_hex(hdr + 49, ids.span_id, 8);
	hdr[65] = '-';
	put_hex(hdr + 66, &ids.trace_flags, 1);
	hdr[68] = '\r';
	hdr[69] = '\n';

	if (bpf_msg_push_data(msg, off, TP_HEADER_LEN, 0)) {
		prop_count(PROP_PUSH_FAILED);
		return SK_PASS;
	}
	if (bpf_msg_pull_data(msg, off, off + TP_HEADER_LEN, 0)) {
		bpf_msg_pop_data(msg, off, TP_HEADER_LEN, 0);
		prop_count(PROP_PUSH_FAILED);
		return SK_PASS;
	}
	data = msg->data;
	end = msg->data_end;
	if (data + TP_HEADER_LEN > end) {
		bpf_msg_pop_data(msg, off, TP_HEADER_LEN, 0);
		prop_count(PROP_PUSH_FAILED);
		return SK_PASS;
	}
#pragma unroll
	for (int k = 0; k < TP_HEADER_LEN; k++)
		data[k] = hdr[k];
	bpf_map_update_elem(&client_ids, &pid_tgid, &ids, BPF_ANY);
	if (t->inherited)
		end_inherited(pid_tgid, g); // an inherited context serves one request
	prop_count(PROP_INJECTED);
	return SK_PASS;
}

#define TCP_ESTABLISHED 1

// Iterates over the host's TCP sockets and puts the established ones of a
// newly traced process (existing_inodes) into the sockhash: connections it
// opened before it was traced (keep-alive pools) get injected too.
SEC("iter/tcp")
int ctxprop_existing(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	if (!skc)
		return 0;
	struct sock *sk = (struct sock *)bpf_skc_to_tcp_sock(skc);
	if (!sk || sk->__sk_common.skc_state != TCP_ESTABLISHED)
		return 0;
	struct socket *so = sk->sk_socket;
	if (!so)
		return 0;
	struct file *f = so->file;
	if (!f)
		return 0;
	__u64 ino = f->f_inode->i_ino;
	if (!bpf_map_lookup_elem(&existing_inodes, &ino))
		return 0;
	__u64 cookie = bpf_get_socket_cookie(sk);
	bpf_map_update_elem(&ctxprop_socks, &cookie, sk, BPF_NOEXIST);
	return 0;
}
