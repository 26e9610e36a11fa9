//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// ctxprop: network-level W3C trace-context propagation for plaintext
// HTTP/1.x. A sockops program on the cgroup v2 root puts the connections
// that traced processes open into a sockhash; an sk_msg program on that
// sockhash sees each write on them and, when the writing thread is serving a
// traced request (thread_ctxs, set by httptrace), inserts
// "traceparent: 00-<trace>-<new span>-<flags>" at the end of each request's
// header block (each pipelined request of a write gets its own span). The
// new span ids are handed to httptrace (client_ids) for the CLIENT spans. A
// request that already carries a traceparent is left untouched, and its ids
// go to httptrace when they come in a later write than the request line.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "ctxprop.h"
#include "http.h"
#include "swar.h"
#include "sampler.h"
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

// Scan state of one write; the bytes are copied into buf.
struct prop_scratch {
	__u8 buf[SCAN_SIZE + SCAN_PAD];
	char hdr[HDR_MAX]; // the headers to insert
	struct client_ids ids; // for httptrace: the ids sent in each request of the write
	__u64 pos;         // next byte to look at
	__u64 end;         // bytes in buf
	__u64 blank;       // offset + 1 of the blank line ending the block, 0 if not seen
	__u64 open_line;   // offset + 1 of a header line cut before NAME_LEN bytes, or 0
	__u64 mid_line;    // pos is inside a line (the request line, or one cut by a write)
	__u64 app_tp;      // a traceparent header line was seen
	__u64 app_ts;      // a tracestate header line was seen
	__u64 tp_line;     // offset + 1 of the first traceparent line starting in buf, or 0
	__u64 next;        // next_request: where the next request may start
	__u64 added;       // ... bytes inserted into the message before it
	__u64 size;        // ... the message's size before any insertion
	struct prop_conn conn; // the request's state, kept in prop_conns between writes
};

// Not in the trimmed vmlinux.h (uapi values).
#define PROP_MAP_TYPE_SK_STORAGE 24 // BPF_MAP_TYPE_SK_STORAGE
#define PROP_F_NO_PREALLOC 1        // BPF_F_NO_PREALLOC
#define PROP_SK_STORAGE_CREATE 1    // PROP_SK_STORAGE_CREATE

// Outgoing request whose header block is being written, per socket: freed
// with the socket.
struct {
	__uint(type, PROP_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, PROP_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct prop_conn);
} prop_conns SEC(".maps");

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

#define LINE_WORDS 8 // 8-byte words searched for '\n' per iteration

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

// Which of our header names the NAME_LEN bytes w (8), w4 (4) of a line
// start are, compared case-insensitively: 1 traceparent, 2 tracestate.
static __always_inline int header_name(__u64 w, __u32 w4)
{
	w |= LOWER8;
	w4 |= LOWER4;
	if (w == W8('t', 'r', 'a', 'c', 'e', 'p', 'a', 'r') && w4 == W4('e', 'n', 't', ':'))
		return 1;
	if (w == W8('t', 'r', 'a', 'c', 'e', 's', 't', 'a') &&
	    (w4 & 0xffffff) == W4('t', 'e', ':', 0))
		return 2;
	return 0;
}

// One line per iteration: at a header line start, look at its name (or note
// that the write cuts it) and at the blank line; then find the line's end,
// LINE_WORDS words at a time, resuming there when the line is longer.
static long scan_cb(__u64 i, void *data)
{
	struct prop_scratch *s = *(struct prop_scratch **)data;
	__u64 pos = s->pos;
	__u64 end = s->end;
	if (pos >= end)
		return 1;
	const __u8 *buf = s->buf;
	if (!s->mid_line) {
		__u8 ch = buf[pos & SCAN_MASK];
		if (ch == '\r' || ch == '\n') {
			s->blank = pos + 1;
			return 1;
		}
		if (pos + NAME_LEN <= end) {
			int h = header_name(scan_load8(buf, pos), scan_load4(buf, pos + 8));
			if (h == 1 && !s->tp_line)
				s->tp_line = pos + 1;
			if (h == 1)
				s->app_tp = 1;
			else if (h == 2)
				s->app_ts = 1;
		} else {
			s->open_line = pos + 1;
		}
	}
#pragma unroll
	for (int k = 0; k < LINE_WORDS; k++) {
		__u64 m = bytes_eq(scan_load8(buf, pos + 8 * k), '\n');
		if (m) {
			__u64 nl = pos + 8 * k + first_byte(m);
			if (nl >= end)
				break;
			s->pos = nl + 1;
			s->mid_line = 0;
			s->open_line = 0;
			return 0;
		}
	}
	s->pos = pos + 8 * LINE_WORDS;
	s->mid_line = 1;
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

// Resolves a header line whose start the previous write cut before NAME_LEN
// bytes (c->carry): completes it with this write's first bytes.
static __always_inline void resolve_carry(struct prop_conn *c, const __u8 *buf, __u64 n)
{
	__u64 cl = c->carry_len;
	if (cl >= NAME_LEN) {
		c->carry_open = 0;
		return;
	}
#pragma unroll
	for (int k = 0; k < NAME_LEN; k++) {
		if (k < n && cl + k < NAME_LEN)
			c->carry[(cl + k) & 15] = buf[k];
	}
	cl += n < NAME_LEN - cl ? n : NAME_LEN - cl;
	c->carry_len = cl;
	if (cl < NAME_LEN)
		return;
	c->carry_open = 0;
	__u64 w;
	__u32 w4;
	__builtin_memcpy(&w, c->carry, 8);
	__builtin_memcpy(&w4, c->carry + 8, 4);
	int h = header_name(w, w4);
	if (h == 1)
		c->app_tp = 1;
	else if (h == 2)
		c->app_ts = 1;
}

// Writes "traceparent: 00-<trace>-<span>-<flags>\r\n", and when the SERVER
// span has a tracestate and the application sends none,
// "tracestate: <value>\r\n", into s->hdr. Returns the length.
static __always_inline __u64 build_headers(struct prop_scratch *s, struct prop_conn *c)
{
	char *hdr = s->hdr;
	__builtin_memcpy(hdr, "traceparent: 00-", 16);
	put_hex(hdr + 16, c->trace_id, 16);
	hdr[48] = '-';
	put_hex(hdr + 49, c->span_id, 8);
	hdr[65] = '-';
	put_hex(hdr + 66, &c->trace_flags, 1);
	hdr[68] = '\r';
	hdr[69] = '\n';
	if (c->app_ts)
		return TP_HEADER_LEN;
	struct tracestate *ts = bpf_map_lookup_elem(&tracestates, &c->server_span);
	if (!ts)
		return TP_HEADER_LEN;
	__u64 len = ts->len;
	barrier_var(len);
	if (len == 0 || len > TRACESTATE_MAX)
		return TP_HEADER_LEN;
	__builtin_memcpy(hdr + TP_HEADER_LEN, "tracestate: ", TS_PREFIX_LEN);
	if (bpf_probe_read_kernel(hdr + TP_HEADER_LEN + TS_PREFIX_LEN, len, ts->data))
		return TP_HEADER_LEN;
	__u64 p = TP_HEADER_LEN + TS_PREFIX_LEN + len;
	barrier_var(p);
	if (p > HDR_MAX - 2)
		return TP_HEADER_LEN;
	hdr[p] = '\r';
	hdr[p + 1] = '\n';
	prop_count(PROP_TRACESTATE);
	return p + 2;
}

// Inserts s->hdr (len bytes) at offset off of the message. 0 on success.
//
// bpf_msg_push_data leaves the message in three scatterlist pieces (the
// bytes before off, the new ones, the rest of the piece off was in), and the
// kernel sends each piece with its own tcp_sendmsg_locked and push. Only the
// first goes out at once: on a socket with Nagle on (nginx's upstream
// connections, Python http.client) the others are small segments behind an
// unacknowledged small segment and wait for the peer's ACK, which a server
// that has half a header block delays (40 ms delayed ACK on Linux) -- every
// injected request waited that long. So once written, the pieces from the
// message's start up to the byte after the insertion are merged back into
// one (bpf_msg_pull_data copies them whole into one buffer): the header
// block leaves in one segment, as the application wrote it. If the kernel
// cannot allocate the buffer the message is sent in pieces, bytes intact
// (counted, PROP_UNMERGED).
static __always_inline int insert_headers(struct sk_msg_md *msg, struct prop_scratch *s,
					  __u64 off, __u64 len, __u64 size)
{
	if (len < 8 || len > HDR_MAX)
		return -1;
	if (bpf_msg_push_data(msg, off, len, 0))
		return -1;
	if (bpf_msg_pull_data(msg, off, off + len, 0))
		goto undo;
	__u8 *data = msg->data;
	__u8 *end = msg->data_end;
#pragma unroll
	for (int k = 0; k < HDR_MAX / 8; k++) {
		if (8 * k + 8 > len)
			break;
		if (data + 8 * k + 8 > end)
			goto undo;
		__u64 v;
		__builtin_memcpy(&v, s->hdr + 8 * k, 8);
		*(__u64 *)(data + 8 * k) = v;
	}
	__u64 o = len - 8; // the last, possibly partial, word
	barrier_var(o);
	if (o > HDR_MAX - 8)
		goto undo;
	if (data + o + 8 > end)
		goto undo;
	__u64 v;
	__builtin_memcpy(&v, s->hdr + o, 8);
	*(__u64 *)(data + o) = v;
	// The block's blank line follows the insertion (off < size).
	if (off < size && bpf_msg_pull_data(msg, 0, off + len + 1, 0))
		prop_count(PROP_UNMERGED);
	return 0;
undo:
	bpf_msg_pop_data(msg, off, len, 0);
	return -1;
}

static __always_inline void set_ids(struct client_id *id, struct prop_conn *c)
{
	__builtin_memcpy(id->trace_id, c->trace_id, sizeof(id->trace_id));
	__builtin_memcpy(id->span_id, c->span_id, sizeof(id->span_id));
	__builtin_memcpy(id->parent_id, &c->server_span, sizeof(id->parent_id));
	id->trace_flags = c->trace_flags;
	id->set = CLIENT_ID_SENT;
}

static __always_inline int hex_val(__u8 ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

// Decodes the 2n lower-case hex digits at buf[p] into dst: -1 if one is not,
// else whether any byte is non-zero.
static __always_inline int from_hex(const __u8 *buf, __u64 p, __u8 *dst, int n)
{
	__u8 any = 0;
#pragma unroll
	for (int k = 0; k < 16; k++) {
		if (k >= n)
			break;
		int hi = hex_val(buf[(p + 2 * k) & SCAN_MASK]);
		int lo = hex_val(buf[(p + 2 * k + 1) & SCAN_MASK]);
		if (hi < 0 || lo < 0)
			return -1;
		dst[k] = hi << 4 | lo;
		any |= dst[k];
	}
	return any != 0;
}

// Reads the application's own "traceparent: 00-<trace>-<span>-<flags>"
// whose line starts at s->tp_line - 1 in this write (a later write of the
// block than the request line, where httptrace did not see it) into
// s->ids.req[0] as CLIENT_ID_APP: the CLIENT span made at the request line
// takes it. Only a version-00 value whole in this write is read; otherwise
// the span keeps the ids picked at the request line. 1 when read.
// A global function: verified once.
__noinline int app_traceparent(void)
{
	__u32 zero = 0;
	struct prop_scratch *s = bpf_map_lookup_elem(&prop_scratch_map, &zero);
	if (!s || !s->tp_line)
		return 0;
	const __u8 *buf = s->buf;
	__u64 p = s->tp_line - 1 + NAME_LEN; // just past "traceparent:"
	for (int k = 0; k < 2; k++) {
		__u8 ch = buf[p & SCAN_MASK];
		if (ch == ' ' || ch == '\t')
			p++;
	}
	if (p + 56 > s->end)
		return 0;
#define v(k) buf[(p + (k)) & SCAN_MASK]
	if (v(0) != '0' || v(1) != '0' || v(2) != '-' || v(35) != '-' || v(52) != '-')
		return 0;
	if (v(55) != '\r' && v(55) != '\n' && v(55) != ' ' && v(55) != '\t')
		return 0;
	struct client_id *id = &s->ids.req[0];
	__builtin_memset(id, 0, sizeof(*id));
	// Lower-case hex, non-zero ids.
	if (from_hex(buf, p + 3, id->trace_id, 16) <= 0 || from_hex(buf, p + 36, id->span_id, 8) <= 0 ||
	    from_hex(buf, p + 53, &id->trace_flags, 1) < 0)
		return 0;
	struct prop_conn *c = &s->conn;
	bool same = true;
#pragma unroll
	for (int k = 0; k < 16; k++)
		same = same && id->trace_id[k] == c->trace_id[k];
	if (same)
		__builtin_memcpy(id->parent_id, &c->server_span, sizeof(id->parent_id));
	id->set = CLIENT_ID_APP;
	return 1;
#undef v
}

// Offset just past the blank line s->blank names.
static __always_inline __u64 block_end(struct prop_scratch *s)
{
	__u64 b = s->blank - 1;
	return b + (s->buf[b & SCAN_MASK] == '\r' ? 2 : 1);
}

// The requests that follow the first one in a write (a pipelining client):
// each whose header block also ends in this write gets its own CLIENT span
// id and header, like the first (or keeps the application's own), and its
// ids go to httptrace in s->ids in the same order. httptrace parses only the
// write's first CLIENT_SEEN bytes and CLIENT_IDS_MAX requests: a request
// starting later, or whose block goes on in the next write, is left
// untouched (no header names a span that is not recorded) and counted.
//
// One request per call, the idx-th of the write, at s->next; s->added bytes
// are already inserted before it. Returns 1 when the next one is to be
// looked at. A global function: verified once, not once per request.
__noinline int next_request(struct sk_msg_md *msg, __u32 idx)
{
	__u32 zero = 0;
	struct prop_scratch *s = bpf_map_lookup_elem(&prop_scratch_map, &zero);
	if (!s || !msg)
		return 0;
	struct prop_conn *c = &s->conn;
	__u64 o = s->next;
	if (o + 8 > s->end || !request_method_len(s->buf + (o & SCAN_MASK)))
		return 0; // no request follows (or a body does)
	if (idx >= CLIENT_IDS_MAX || o + 16 > CLIENT_SEEN || o + 16 > s->end) {
		prop_count(PROP_PIPELINED_SKIPPED);
		return 0;
	}
	s->pos = o;
	s->blank = 0;
	s->open_line = 0;
	s->mid_line = 1; // the request line
	s->app_tp = 0;
	s->app_ts = 0;
	bpf_loop(SCAN_LOOPS, scan_cb, &s, 0);
	if (!s->blank) {
		prop_count(PROP_PIPELINED_SKIPPED);
		return 0;
	}
	if (s->app_tp) {
		prop_count(PROP_APP_HEADER);
	} else {
		random_id(c->span_id, 2);
		c->app_ts = s->app_ts;
		__u64 len = build_headers(s, c);
		__u64 added = s->added;
		if (insert_headers(msg, s, s->blank - 1 + added, len, s->size + added)) {
			prop_count(PROP_PUSH_FAILED);
			return 0;
		}
		s->added = added + len;
		prop_count(PROP_INJECTED);
		__u64 k = idx;
		barrier_var(k); // keep the mask: clang knows idx < CLIENT_IDS_MAX, the verifier not
		k &= CLIENT_IDS_MAX - 1;
		set_ids(&s->ids.req[k], c);
	}
	s->next = block_end(s);
	return 1;
}

// Sees every write on a connection of a traced process. A write that starts
// an HTTP/1.x request line while the thread serves a traced request decides
// the CLIENT span's ids (handed to httptrace through client_ids at once:
// httptrace reads them at the end of this write); the header block is then
// followed, over as many writes as the application uses, and the headers are
// inserted before its blank line, in the write that has it, unless the block
// carries the application's own traceparent. Lines are found 8 bytes at a
// time; only the block's first SCAN_SIZE bytes are searched: a longer one
// passes untouched. Pipelined requests that follow in the same write are
// handled by next_request; a body passes untouched.
SEC("sk_msg")
int ctxprop_sk_msg(struct sk_msg_md *msg)
{
	if (return_at_once)
		return SK_PASS;
	__u64 size = msg->size;
	struct bpf_sock *sk = msg->sk;
	if (!size || !sk)
		return SK_PASS;
	__u32 zero = 0;
	struct prop_scratch *s = bpf_map_lookup_elem(&prop_scratch_map, &zero);
	if (!s)
		return SK_PASS;
	// The state of a block cut by a write lives with the socket; the state
	// of a request is worked on in s->conn and stored only when its block
	// goes on in the next write (the usual single-write block needs no
	// storage).
	struct prop_conn *stored = bpf_sk_storage_get(&prop_conns, sk, 0, 0);
	bool first = !stored || !stored->in_headers;
	struct prop_conn *c = &s->conn;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u8 *data, *end;
	__u64 want;
	if (first) {
		if (size < 8)
			return SK_PASS;
		data = msg->data;
		end = msg->data_end;
		if (data + 8 > end) {
			bpf_msg_pull_data(msg, 0, 8, 0);
			data = msg->data;
			end = msg->data_end;
			if (data + 8 > end)
				return SK_PASS;
		}
		if (!request_method_len(data))
			return SK_PASS;
		// Looked up once the write is known to start a request: in a Go
		// process the lookup may walk the goroutine's ancestry.
		__u64 g;
		struct thread_ctx *t = current_ctx(pid_tgid, &g);
		struct thread_ctx *amb = 0;
		if (!t) {
			// A thread serving several requests at once: which one this
			// request belongs to is unknown. It starts its own trace,
			// sent downstream, rather than a guessed parent's.
			amb = g ? 0 : bpf_map_lookup_elem(&thread_ctxs, &pid_tgid);
			if (!amb || !amb->ambiguous)
				return SK_PASS;
		}
		__builtin_memset(c, 0, sizeof(*c));
		if (t) {
			__builtin_memcpy(c->trace_id, t->trace_id, sizeof(c->trace_id));
			__builtin_memcpy(&c->server_span, t->span_id, sizeof(c->server_span));
			c->trace_flags = t->trace_flags;
		} else {
			random_id(c->trace_id, 4);
			c->trace_flags = sample_root(c->trace_id);
		}
		random_id(c->span_id, 2);
		c->in_headers = 1;
		c->mid_line = 1; // the request line
		if (t && t->inherited)
			end_inherited(pid_tgid, g); // an inherited context serves one request
		want = size < SCAN_SIZE ? size : SCAN_SIZE;
	} else {
		__builtin_memcpy(c, stored, sizeof(*c));
		stored->in_headers = 0; // set again below if the block goes on
		__u64 left = c->hdr_bytes < SCAN_SIZE ? SCAN_SIZE - c->hdr_bytes : 0;
		want = size < left ? size : left;
		if (!want) {
			prop_count(PROP_HEADERS_TOO_LONG);
			return SK_PASS;
		}
	}

	bpf_msg_pull_data(msg, 0, want, 0);
	data = msg->data;
	end = msg->data_end;
	__u64 n = end - data;
	if (n > want)
		n = want;
	barrier_var(n);
	if (n > SCAN_SIZE || n < want || bpf_probe_read_kernel(s->buf, n, data)) {
		prop_count(PROP_PUSH_FAILED); // the bytes cannot be seen: give up on the block
		return SK_PASS;
	}
	if (c->carry_open && !first)
		resolve_carry(c, s->buf, n);
	s->pos = 0;
	s->end = n;
	s->blank = 0;
	s->open_line = 0;
	s->mid_line = c->mid_line;
	s->app_tp = 0;
	s->app_ts = 0;
	s->tp_line = 0;
	bpf_loop(SCAN_LOOPS, scan_cb, &s, 0);
	if (!first && s->tp_line && !c->app_tp && app_traceparent()) {
		// The application's own traceparent, in a later write than the
		// request line: the CLIENT span made there takes its ids.
		bpf_map_update_elem(&client_ids, &pid_tgid, &s->ids, BPF_ANY);
	}
	if (s->app_tp)
		c->app_tp = 1;
	if (s->app_ts)
		c->app_ts = 1;

	bool ended = s->blank != 0; // the block ends in this write
	__u64 added = 0;            // bytes inserted into this write
	if (ended) {
		if (c->app_tp) {
			prop_count(PROP_APP_HEADER);
		} else {
			__u64 len = build_headers(s, c);
			if (insert_headers(msg, s, s->blank - 1, len, size)) {
				prop_count(PROP_PUSH_FAILED);
				return SK_PASS;
			}
			added = len;
			prop_count(PROP_INJECTED);
			if (!first)
				prop_count(PROP_SPLIT);
		}
	} else if (c->hdr_bytes + n >= SCAN_SIZE || n < size) {
		prop_count(PROP_HEADERS_TOO_LONG);
		return SK_PASS;
	} else {
		// The block goes on in the next write.
		c->hdr_bytes += n;
		c->mid_line = s->mid_line;
		if (s->open_line) {
			__u64 ls = s->open_line - 1;
			__u64 cl = n - ls;
#pragma unroll
			for (int k = 0; k < NAME_LEN; k++) {
				if (k < cl)
					c->carry[k] = s->buf[(ls + k) & SCAN_MASK];
			}
			c->carry_len = cl < NAME_LEN ? cl : NAME_LEN;
			c->carry_open = 1;
		}
		if (!stored)
			stored = bpf_sk_storage_get(&prop_conns, sk, 0, PROP_SK_STORAGE_CREATE);
		if (!stored)
			return SK_PASS; // no memory: the block passes untouched
		__builtin_memcpy(stored, c, sizeof(*c));
		if (c->app_tp)
			return SK_PASS;
	}
	if (!first) {
		// httptrace makes CLIENT spans only for the requests of a write
		// that starts with one: a request after this block is left alone.
		__u64 o = ended ? block_end(s) : 0;
		if (o && o + 8 <= s->end && request_method_len(s->buf + (o & SCAN_MASK)))
			prop_count(PROP_PIPELINED_SKIPPED);
		return SK_PASS;
	}
	struct client_ids *ids = &s->ids;
	__builtin_memset(ids, 0, sizeof(*ids));
	if (!c->app_tp)
		set_ids(&ids->req[0], c);
	if (ended) {
		s->next = block_end(s);
		s->added = added;
		s->size = size;
		for (__u32 i = 1; i <= CLIENT_IDS_MAX; i++) {
			if (!next_request(msg, i))
				break;
		}
	}
	bpf_map_update_elem(&client_ids, &pid_tgid, ids, BPF_ANY);
	return SK_PASS;
}

// Receive side of the sockhash's sockets: passes every skb on unchanged.
// Its attachment is what matters: on kernels with the sockmap receive
// regression (Linux 929e30f93125) a socket in a sockhash without an SK_SKB
// verdict answers FIONREAD with 0; with one, received data is accounted
// in the psock's queue that FIONREAD reports.
SEC("sk_skb/verdict")
int ctxprop_sk_skb(struct __sk_buff *skb)
{
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
