//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// httptrace: HTTP/1.x requests and responses of selected processes, seen
// where a socket read or write returns (no kprobes). The default programs
// hang on the socket tracepoints sock_recv_length and sock_send_length, which
// run only for socket I/O: the bytes are found through the registers the
// system call saved (bpf_task_pt_regs). A fallback variant hangs on sys_exit,
// which every system call of the host passes. Requests and responses are
// matched in the kernel, per connection (tgid, fd), and one record per
// finished request goes to the ring buffer. Trace and span ids are decided
// here, so that they are known before any header leaves the process.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "httptrace.h"
#define W3C_READ(dst, n, src) bpf_probe_read_user(dst, n, src)
#include "w3c.h"
#include "maps/traced_pids.h"
#include "maps/thread_ctxs.h"
#include "maps/client_ids.h"
#include "maps/tracestate.h"
#include "maps/go.h"
#include "maps/carrier.h"
#include "sampler.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Knobs, set by the loader before the program is loaded.
// Pending ring buffer bytes that wake the reader; 0 wakes it per record.
volatile const __u64 wakeup_bytes = 0;
// Parse request headers (incoming traceparent, Host). Needs bpf_loop (5.17).
volatile const __u8 track_request_headers = 1;
// bpf_loop is available (5.17). Without it only the request line is parsed,
// with a bounded loop: no headers (traceparent, Host), no pipelining.
volatile const __u8 use_bpf_loop = 1;
// Every program returns at once: the floor of the hooks' cost, for benchmarks.
volatile const __u8 return_at_once = 0;
// The packet-level carrier is on (context_propagation tcp or all): requests
// written through a TLS library store their CLIENT context in carrier_out,
// and TLS requests without a traceparent take carrier_in as their parent.
volatile const __u8 carrier_tls = 0;

// Per-connection state of traced processes, (tgid, fd) -> state.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct conn_key);
	__type(value, struct conn_state);
} conns SEC(".maps");

// One record per finished request. Size set by the loader.
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

// Drop and error counters, indexed by enum counter.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");


_Static_assert(sizeof(struct w3c_tracestate) == sizeof(struct tracestate),
	       "w3c_tracestate mirrors tracestate");

// The scan state lives in the per-CPU scratch map, not on the stack: the
// verifier does not track map contents, so the callbacks are verified once
// instead of once per distinct value of the offsets.
struct scratch {
	__u8 buf[BUF_SIZE + BUF_PAD];
	struct w3c_scan st;
	// The struct sock the socket hook was given, 0 at sys_exit: handed to
	// the global functions here (they take scalars only).
	__u64 hint;
	__u64 src; // user address of the data read or written (buf[0])
	__u64 len; // bytes of it
	__u64 tls; // the data is the plaintext of a TLS library call
	struct ts_scan ts; // tracestate of a header block seen in one read
};

// Tracestate validation of a header block that continues in later reads,
// (tgid, fd) -> state.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct conn_key);
	__type(value, struct ts_scan);
} ts_scans SEC(".maps");

// TLS library calls in progress, pid_tgid -> call (see struct tls_call).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

// How many tls_calls entries are writes (the only ones tcp_sendmsg_locked
// looks for): raised only when a write entry is created, lowered only when
// one this code removes is gone, so an LRU eviction can leave it too high
// (the lookup is done for nothing) but never too low (a write missed).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s64);
} tls_writes SEC(".maps");

static __always_inline void tls_writes_add(__s64 d)
{
	__u32 zero = 0;
	__s64 *n = bpf_map_lookup_elem(&tls_writes, &zero);
	if (n)
		__sync_fetch_and_add(n, d);
}

// Deletes the thread's tls_calls entry, and counts it out of tls_writes if
// it was a write. Out of line: its stack is not on on_io's deepest chain.
static __noinline void tls_call_delete(__u64 pid_tgid)
{
	struct tls_call *tc = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
	if (!tc)
		return;
	bool was_write = !tc->is_read;
	if (!bpf_map_delete_elem(&tls_calls, &pid_tgid) && was_write)
		tls_writes_add(-1);
}

// The socket each SSL object was last seen on, (tgid, SSL *) -> fd.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct tls_key);
	__type(value, struct tls_fd);
} tls_fds SEC(".maps");

// Processes whose TLS library keeps the ciphertext in memory (a memory BIO:
// Node.js links OpenSSL statically), tgid -> 1: the socket read comes
// before SSL_read, not inside it.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} tls_membio SEC(".maps");

// In those processes, the last socket each thread read, pid_tgid -> socket.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct tls_fd);
} tls_last_read SEC(".maps");

// An all-zero connection state, never written: the initial value of new
// entries in conns (too large to build on the stack).
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct conn_state);
} conn_zero SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch_map SEC(".maps");

// Dummy instances so bpf2go emits Go types for them.
const struct http_event *unused_http_event __attribute__((unused));
const enum counter *unused_counter __attribute__((unused));
const struct tracestate_event *unused_tracestate_event __attribute__((unused));

#if defined(__TARGET_ARCH_x86)
#define NR_READ 0
#define NR_WRITE 1
#define NR_CLOSE 3
#define NR_READV 19
#define NR_WRITEV 20
#define NR_SENDTO 44
#define NR_RECVFROM 45
#define NR_SENDMSG 46
#define NR_RECVMSG 47
#define SYSCALL_NR(regs) BPF_CORE_READ(regs, orig_ax)
#define SYSCALL_ARG1(regs) BPF_CORE_READ(regs, di)
#define SYSCALL_ARG2(regs) BPF_CORE_READ(regs, si)
#define SYSCALL_NR_BTF(regs) ((regs)->orig_ax)
#define SYSCALL_ARG1_BTF(regs) ((regs)->di)
#define SYSCALL_ARG2_BTF(regs) ((regs)->si)
// A C function's arguments and result at a uprobe (System V ABI).
#define CALL_ARG1(r) ((r)->di)
#define CALL_ARG2(r) ((r)->si)
#define CALL_ARG3(r) ((r)->dx)
#define CALL_ARG4(r) ((r)->cx)
#define CALL_RET(r) ((r)->ax)
#elif defined(__TARGET_ARCH_arm64)
#define NR_CLOSE 57
#define NR_READ 63
#define NR_WRITE 64
#define NR_READV 65
#define NR_WRITEV 66
#define NR_SENDTO 206
#define NR_RECVFROM 207
#define NR_SENDMSG 211
#define NR_RECVMSG 212
#define SYSCALL_NR(regs) BPF_CORE_READ(regs, syscallno)
#define SYSCALL_ARG1(regs) BPF_CORE_READ(regs, orig_x0)
#define SYSCALL_ARG2(regs) BPF_CORE_READ(regs, regs[1])
#define SYSCALL_NR_BTF(regs) ((regs)->syscallno)
#define SYSCALL_ARG1_BTF(regs) ((regs)->orig_x0)
#define SYSCALL_ARG2_BTF(regs) ((regs)->regs[1])
#define CALL_ARG1(r) ((r)->regs[0])
#define CALL_ARG2(r) ((r)->regs[1])
#define CALL_ARG3(r) ((r)->regs[2])
#define CALL_ARG4(r) ((r)->regs[3])
#define CALL_RET(r) ((r)->regs[0])
#endif

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1
#define S_IFMT 0170000
#define S_IFSOCK 0140000
#define MSG_PEEK 2
#define PF_IO_WORKER 0x00000010

// User-space ABI structs (fixed layout on 64-bit targets).
struct user_iovec {
	__u64 base;
	__u64 len;
};

struct user_msghdr64 {
	__u64 name;
	__u32 namelen;
	__u32 _pad;
	__u64 iov;
	__u64 iovlen;
};

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &which);
	if (v)
		*v += 1;
}


// True if buf starts a status line: "HTTP/1.x NNN".
static __always_inline bool is_response(const __u8 *b)
{
	return b[0] == 'H' && b[1] == 'T' && b[2] == 'T' && b[3] == 'P' && b[4] == '/' &&
	       b[5] == '1' && b[6] == '.' && b[8] == ' ' && b[9] >= '1' && b[9] <= '5' &&
	       b[10] >= '0' && b[10] <= '9' && b[11] >= '0' && b[11] <= '9';
}

// True if b starts the HTTP/2 client connection preface "PRI * HTTP/2.0".
static __always_inline bool is_h2_preface(const __u8 *b)
{
	return b[0] == 'P' && b[1] == 'R' && b[2] == 'I' && b[3] == ' ' && b[4] == '*' &&
	       b[5] == ' ' && b[6] == 'H' && b[7] == 'T' && b[8] == 'T' && b[9] == 'P' &&
	       b[10] == '/' && b[11] == '2';
}

static __always_inline __u16 status_at(const __u8 *buf, __u64 off)
{
	return (at(buf, off + 9) - '0') * 100 + (at(buf, off + 10) - '0') * 10 +
	       (at(buf, off + 11) - '0');
}

// Resolves fd of the current task to its struct sock, if it is a TCP socket.
static __always_inline struct sock *fd_to_sock(__u32 fd)
{
	struct task_struct *task = (void *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt)
		return 0;
	if (fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return 0;
	umode_t mode = BPF_CORE_READ(f, f_inode, i_mode);
	if ((mode & S_IFMT) != S_IFSOCK)
		return 0;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	if (BPF_CORE_READ(sk, sk_type) != SOCK_STREAM)
		return 0;
	return sk;
}

static __always_inline void fill_addrs(struct conn_state *c, struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	c->family = (__u8)family;
	c->local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	c->peer_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		__u32 l = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 p = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(c->local_addr, &l, 4);
		__builtin_memcpy(c->peer_addr, &p, 4);
	} else {
		BPF_CORE_READ_INTO(&c->local_addr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&c->peer_addr, sk, __sk_common.skc_v6_daddr);
	}
}

// The local and peer ports of sk, one number: with the struct sock's
// address, what tells a connection from a later one reusing its memory.
static __always_inline __u32 sk_ports(struct sock *sk)
{
	return (__u32)BPF_CORE_READ(sk, __sk_common.skc_num) << 16 |
	       bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

// True if the state c was made for the socket sk, not for an earlier
// connection whose struct sock had the same address and whose fd had the
// same number (the socket hooks do not see close).
static __always_inline bool same_conn(struct conn_state *c, struct sock *sk)
{
	return c->sk == (__u64)sk && c->local_port == BPF_CORE_READ(sk, __sk_common.skc_num) &&
	       c->peer_port == bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
}

// The request r read on the thread reader (not Go) has been answered, or its
// connection has gone; next is the request pipelined after it on the same
// connection, served next, or 0. Keeps the thread's count of requests in
// flight: the context is certain again once only the newest is left.
static __noinline void thread_req_done(__u64 reader, struct req_info *r, struct req_info *next)
{
	struct thread_ctx *t = bpf_map_lookup_elem(&thread_ctxs, &reader);
	if (!t)
		return;
	if (!t->gone && same_span(t->span_id, r->span_id)) {
		if (next) {
			__builtin_memcpy(t->trace_id, next->trace_id, sizeof(t->trace_id));
			__builtin_memcpy(t->span_id, next->span_id, sizeof(t->span_id));
			t->trace_flags = next->trace_flags;
		} else if (t->inflight > 1) {
			// Older requests are still pending: which one a later write
			// belongs to stays unknown until they are answered.
			t->inflight--;
			t->gone = 1;
			__builtin_memset(t->span_id, 0, sizeof(t->span_id));
		} else {
			bpf_map_delete_elem(&thread_ctxs, &reader);
		}
		return;
	}
	if (t->inherited || t->inflight <= 1) {
		if (t->gone)
			bpf_map_delete_elem(&thread_ctxs, &reader);
		return;
	}
	t->inflight--;
	if (t->inflight == 1 && !t->gone)
		t->ambiguous = 0; // only the newest, the context's own, is left
}

// A connection's state is dropped (its fd closed or now naming another
// socket) with requests still unanswered: they no longer count as in flight
// on the thread that read them.
static __always_inline void conn_gone(__u32 tgid, struct conn_state *c)
{
	if (!c->srv_count)
		return;
	struct req_info *r = &c->srv[c->srv_head & (PIPELINE_DEPTH - 1)];
	thread_req_done(((__u64)tgid << 32) | r->tid, r, 0);
}

// Returns the state of the connection, creating it (or resetting it when the
// fd now names another socket) if create is set. hint is the socket the
// hook was given (socket hooks), 0 at sys_exit: the fd is then resolved.
static __always_inline struct conn_state *conn_get(struct conn_key *key, bool create,
						   struct sock *hint)
{
	struct conn_state *c = bpf_map_lookup_elem(&conns, key);
	if (hint && c && same_conn(c, hint))
		return c;
	if (!create)
		return hint ? 0 : c;
	// The socket hooks' registers name the fd: it must name their socket
	// (io_uring and in-kernel senders bring unrelated registers).
	struct sock *sk = fd_to_sock(key->fd);
	if (!sk || (hint && sk != hint)) {
		if (c && !hint) {
			conn_gone(key->tgid, c);
			bpf_map_delete_elem(&conns, key);
		}
		return 0;
	}
	if (c && !hint && c->sk == (__u64)sk)
		return c;
	if (c)
		conn_gone(key->tgid, c);
	__u32 zero = 0;
	struct conn_state *init = bpf_map_lookup_elem(&conn_zero, &zero);
	if (!init)
		return 0;
	if (bpf_map_update_elem(&conns, key, init, BPF_ANY)) {
		count(COUNTER_CONN_STATE_FULL);
		return 0;
	}
	c = bpf_map_lookup_elem(&conns, key);
	if (!c)
		return 0;
	c->sk = (__u64)sk;
	fill_addrs(c, sk);
	return c;
}

static __always_inline long wakeup_flag(void)
{
	if (wakeup_bytes == 0)
		return 0;
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									      : BPF_RB_NO_WAKEUP;
}

static __always_inline void emit(struct conn_state *c, struct req_info *r, __u8 kind,
				 __u16 status, __u32 tgid)
{
	if (!sampled(r->trace_flags)) {
		count(COUNTER_UNSAMPLED);
		return;
	}
	count(COUNTER_SAMPLED);
	struct http_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_EVENTS_LOST);
		return;
	}
	e->start_ns = r->start_ns;
	e->end_ns = bpf_ktime_get_ns();
	__builtin_memcpy(e->trace_id, r->trace_id, sizeof(e->trace_id));
	__builtin_memcpy(e->span_id, r->span_id, sizeof(e->span_id));
	__builtin_memcpy(e->parent_id, r->parent_id, sizeof(e->parent_id));
	__builtin_memcpy(e->local_addr, c->local_addr, sizeof(e->local_addr));
	__builtin_memcpy(e->peer_addr, c->peer_addr, sizeof(e->peer_addr));
	e->pid = tgid;
	e->tid = r->tid;
	e->local_port = c->local_port;
	e->peer_port = c->peer_port;
	e->status = status;
	e->kind = kind;
	e->trace_flags = r->trace_flags;
	e->method_len = r->method_len;
	e->path_len = r->path_len;
	e->host_len = r->host_len;
	e->proto_minor = r->proto_minor;
	e->family = c->family;
	e->tls = c->tls;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	__builtin_memcpy(e->method, r->method, sizeof(e->method));
	__builtin_memcpy(e->path, r->path, sizeof(e->path));
	__builtin_memcpy(e->host, r->host, sizeof(e->host));
	bpf_ringbuf_submit(e, wakeup_flag());
}

// Sends the tracestate v of span span_id, just before the span's record.
static __always_inline void emit_tracestate(const __u8 span_id[8], struct tracestate *v)
{
	struct tracestate_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_EVENTS_LOST);
		return;
	}
	__builtin_memcpy(e->span_id, span_id, sizeof(e->span_id));
	__u16 len = v->len;
	e->len = len < TRACESTATE_EVENT_MAX ? len : TRACESTATE_EVENT_MAX;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	__builtin_memcpy(e->data, v->data, sizeof(e->data));
	bpf_ringbuf_submit(e, 0);
}

// Parses the request starting at off into r: request line, then headers.
// Leaves the header offsets in s->st. Returns the offset just past the
// request (headers and a Content-Length body), or 0 if its header block is
// not complete in the buffer.
static __always_inline __u64 parse_request(struct scratch *s, __u64 off, __u64 n, __u32 mlen,
					   struct req_info *r, __u8 want_ts)
{
	const __u8 *buf = s->buf;
	r->method_len = mlen;
#pragma unroll
	for (int k = 0; k < METHOD_MAX; k++)
		r->method[k] = k < mlen ? at(buf, off + k) : 0;

	__u64 p = off + mlen + 1;
	if (p >= n)
		return 0;
	__builtin_memcpy(r->path, buf + (p & BUF_MASK), PATH_MAX_LEN);
	__u64 len = token_len(buf, p, PATH_MAX_LEN / 8);
	if (p + len > n)
		len = n - p;
	r->path_len = len;

	struct w3c_scan *st = &s->st;
	__builtin_memset(st, 0, sizeof(*st));
	st->pos = p + len;
	st->end = n;
	st->len = s->len;
	st->src = s->src;
	st->limit = off + HDR_BLOCK_MAX;
	st->want_ts = want_ts;
	// Without bpf_loop: the request line only, no headers.
	w3c_scan(st, (struct w3c_buf *)s->buf, want_ts ? &s->ts : 0, use_bpf_loop);
	r->proto_minor = st->minor0 ? 0 : 1;
	if (st->host_len) {
		__builtin_memcpy(r->host, st->host, HOST_MAX);
		r->host_len = st->host_len;
	}
	if (st->over_limit)
		count(COUNTER_HEADERS_TOO_LARGE);
	if (!st->header_end || st->base)
		return 0; // incomplete, or the buffer no longer holds its start
	return st->header_end + st->content_length;
}

// Stores the validated tracestate of ts for the SERVER span r, for ctxprop
// to send on and for the span record.
static __always_inline void store_tracestate(struct req_info *r, struct ts_scan *ts)
{
	struct w3c_tracestate *v = ts_result(ts);
	if (!v)
		return;
	__u64 id;
	__builtin_memcpy(&id, r->span_id, sizeof(id));
	if (!bpf_map_update_elem(&tracestates, &id, v, BPF_ANY))
		r->has_ts = 1;
}

// Makes r the context of the thread that read it, or in a tracked Go
// process of the goroutine that read it.
// A global function: keeps its stack out of its callers' frames.
__noinline int set_thread_ctx(__u64 pid_tgid, struct req_info *r)
{
	if (!r)
		return 0;
	struct thread_ctx t = {};
	__builtin_memcpy(t.trace_id, r->trace_id, sizeof(t.trace_id));
	__builtin_memcpy(t.span_id, r->span_id, sizeof(t.span_id));
	t.trace_flags = r->trace_flags;
	bool is_go;
	__u64 id = current_go_id(pid_tgid >> 32, &is_go);
	if (id) {
		struct go_key k = {.tgid = pid_tgid >> 32, .g = id};
		bpf_map_update_elem(&go_ctxs, &k, &t, BPF_ANY);
		r->goroutine = id;
		return 0;
	}
	if (is_go)
		return 0;
	t.inflight = 1;
	struct thread_ctx *old = bpf_map_lookup_elem(&thread_ctxs, &pid_tgid);
	if (old && !old->inherited) {
		if (same_span(old->span_id, r->span_id)) {
			// The same request, its ids updated by a later read.
			t.inflight = old->inflight;
			t.ambiguous = old->ambiguous;
		} else {
			// Another request is still being served on this thread.
			t.inflight = old->inflight < 255 ? old->inflight + 1 : 255;
			t.ambiguous = 1;
		}
	}
	bpf_map_update_elem(&thread_ctxs, &pid_tgid, &t, BPF_ANY);
	return 0;
}


// The carrier maps' key of connection c, seen from this host (carrier.h).
static __always_inline void carrier_key_of(struct carrier_key *k, struct conn_state *c)
{
	__builtin_memset(k, 0, sizeof(*k));
	if (c->family == AF_INET) {
		k->local_addr[10] = 0xff;
		k->local_addr[11] = 0xff;
		k->remote_addr[10] = 0xff;
		k->remote_addr[11] = 0xff;
		__builtin_memcpy(k->local_addr + 12, c->local_addr, 4);
		__builtin_memcpy(k->remote_addr + 12, c->peer_addr, 4);
	} else {
		__builtin_memcpy(k->local_addr, c->local_addr, 16);
		__builtin_memcpy(k->remote_addr, c->peer_addr, 16);
	}
	k->local_port = c->local_port;
	k->remote_port = c->peer_port;
}

// The CLIENT request r, written through a TLS library on c under a context:
// its ids go to the packet carrier, numbered by the connection's request
// count. Called before the bytes reach TCP (at SSL_write, or at
// tcp_sendmsg_locked when the socket was not known at SSL_write).
static __noinline void carrier_fill(struct conn_state *c, struct req_info *r)
{
	struct carrier_key k;
	carrier_key_of(&k, c);
	c->carrier_seq++;
	if (!c->carrier_seq)
		c->carrier_seq = 1;
	struct carrier_ctx v = {.seq = c->carrier_seq, .trace_flags = r->trace_flags};
	__builtin_memcpy(v.trace_id, r->trace_id, sizeof(v.trace_id));
	__builtin_memcpy(v.span_id, r->span_id, sizeof(v.span_id));
	bpf_map_update_elem(&carrier_out, &k, &v, BPF_ANY);
}

// A TLS request r read on c without a traceparent: the context the carrier
// received on the connection becomes its parent if it is newer than the
// last one taken there (each request of a keep-alive connection has its
// own; an entry already used is never reused). Returns true if taken.
static __noinline bool carrier_take(struct conn_state *c, struct req_info *r)
{
	struct carrier_key k;
	carrier_key_of(&k, c);
	struct carrier_ctx *v = bpf_map_lookup_elem(&carrier_in, &k);
	if (!v)
		return false;
	// Equality, not order: the IPv4-option carrier's seq wraps at 2^14.
	// A taken entry is deleted, so any other seq is a new request's.
	if (v->seq == c->carrier_taken)
		return false;
	c->carrier_taken = v->seq;
	__builtin_memcpy(r->trace_id, v->trace_id, sizeof(r->trace_id));
	__builtin_memcpy(r->parent_id, v->span_id, sizeof(r->parent_id));
	r->trace_flags = sample_child(r->trace_id, v->trace_flags);
	bpf_map_delete_elem(&carrier_in, &k);
	return true;
}

// Handles one request at offset off of the data just read on (tgid, fd):
// a SERVER span starts. Returns the offset of the next pipelined request in
// the buffer, or 0. A global function: verified once, whatever its callers.
__noinline int server_request(__u64 pid_tgid, __u32 fd, __u64 off, __u64 n)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &zero);
	if (!s)
		return 0;
	const __u8 *buf = s->buf;
	if (off + 16 > n || n > BUF_SIZE)
		return 0;
	__u8 head[8];
#pragma unroll
	for (int k = 0; k < 8; k++)
		head[k] = at(buf, off + k);
	__u32 mlen = request_method_len(head);
	if (!mlen)
		return 0;
	struct conn_key key = {.tgid = pid_tgid >> 32, .fd = fd};
	struct conn_state *c = conn_get(&key, off == 0, (struct sock *)s->hint);
	if (!c)
		return 0;
	c->tls = s->tls;
	if (c->srv_count >= PIPELINE_DEPTH) {
		count(COUNTER_PIPELINE_FULL);
		return 0;
	}
	struct req_info *r = &c->srv[(c->srv_head + c->srv_count) & (PIPELINE_DEPTH - 1)];
	__builtin_memset(r, 0, sizeof(*r));
	r->start_ns = bpf_ktime_get_ns();
	r->tid = (__u32)pid_tgid;
	random_id(r->span_id, 2);
	__u64 next = parse_request(s, off, n, mlen, r, track_request_headers);
	struct w3c_scan *st = &s->st;
	// A header block cut by the end of the read continues in the next ones.
	c->hdr_pending = use_bpf_loop && !st->header_end && !st->over_limit;
	c->hdr_slot = (c->srv_head + c->srv_count) & (PIPELINE_DEPTH - 1);
	c->hdr_mid_line = st->mid_line;
	c->hdr_in_ts = st->in_ts;
	c->hdr_tp_count = st->tp_count;
	__u64 scanned = st->len - off;
	c->hdr_bytes = scanned < HDR_BLOCK_MAX ? scanned : HDR_BLOCK_MAX;
	c->hdr_ts = 0;
	// Two or more traceparent headers make the context invalid: a new trace.
	bool have_parent = track_request_headers && st->tp_count == 1 && st->tp_valid;
	if (have_parent) {
		__builtin_memcpy(r->trace_id, st->trace_id, sizeof(r->trace_id));
		__builtin_memcpy(r->parent_id, st->parent_id, sizeof(r->parent_id));
		r->trace_flags = sample_child(r->trace_id, st->trace_flags);
	} else if (!(carrier_tls && s->tls && carrier_take(c, r))) {
		random_id(r->trace_id, 4);
		__builtin_memset(r->parent_id, 0, sizeof(r->parent_id));
		r->trace_flags = sample_root(r->trace_id);
	}
	if (st->ts_seen) {
		if (c->hdr_pending) {
			if (!bpf_map_update_elem(&ts_scans, &key, &s->ts, BPF_ANY))
				c->hdr_ts = 1;
		} else if (have_parent && st->header_end) {
			store_tracestate(r, &s->ts);
		}
	}
	c->srv_count++;
	if (c->srv_count == 1)
		set_thread_ctx(pid_tgid, r);
	return next < n ? next : 0;
}

// A later read of a request whose header block the first read did not hold:
// the headers it carries (traceparent, tracestate, Host) still count, and the
// context of the request is updated before the application can act on them.
__noinline int server_headers(__u64 pid_tgid, __u32 fd, __u64 n)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &zero);
	if (!s || n > BUF_SIZE)
		return 0;
	struct conn_key key = {.tgid = pid_tgid >> 32, .fd = fd};
	struct conn_state *c = conn_get(&key, false, (struct sock *)s->hint);
	if (!c || !c->hdr_pending || c->srv_count == 0)
		return 0;
	struct req_info *r = &c->srv[c->hdr_slot & (PIPELINE_DEPTH - 1)];
	struct w3c_scan *st = &s->st;
	__builtin_memset(st, 0, sizeof(*st));
	st->end = n;
	st->len = s->len;
	st->src = s->src;
	__u64 done = c->hdr_bytes;
	st->limit = done < HDR_BLOCK_MAX ? HDR_BLOCK_MAX - done : 0;
	st->line_no = 1;
	st->mid_line = c->hdr_mid_line;
	st->in_ts = c->hdr_in_ts;
	st->tp_count = c->hdr_tp_count;
	st->want_ts = track_request_headers;
	struct ts_scan *saved = 0;
	if (c->hdr_ts) {
		saved = bpf_map_lookup_elem(&ts_scans, &key);
		st->ts_seen = saved != 0;
	}
	if (!saved)
		st->in_ts = 0;
	bool had_parent = c->hdr_tp_count == 1;
	__u64 parent;
	__builtin_memcpy(&parent, r->parent_id, sizeof(parent));
	had_parent = had_parent && parent;
	w3c_scan(st, (struct w3c_buf *)s->buf, saved ? saved : &s->ts, 1);
	if (st->over_limit)
		count(COUNTER_HEADERS_TOO_LARGE);
	if (st->host_len && !r->host_len) {
		__builtin_memcpy(r->host, st->host, HOST_MAX);
		r->host_len = st->host_len;
	}
	bool head = (c->hdr_slot & (PIPELINE_DEPTH - 1)) == (c->srv_head & (PIPELINE_DEPTH - 1));
	bool have_parent = had_parent && st->tp_count == 1;
	if (track_request_headers && !had_parent && st->tp_count == 1 && st->tp_valid) {
		__builtin_memcpy(r->trace_id, st->trace_id, sizeof(r->trace_id));
		__builtin_memcpy(r->parent_id, st->parent_id, sizeof(r->parent_id));
		r->trace_flags = sample_child(r->trace_id, st->trace_flags);
		have_parent = true;
		if (head)
			set_thread_ctx(pid_tgid, r);
	} else if (had_parent && st->tp_count > 1) {
		// A second traceparent: the context is invalid, the trace restarts.
		random_id(r->trace_id, 4);
		__builtin_memset(r->parent_id, 0, sizeof(r->parent_id));
		r->trace_flags = sample_root(r->trace_id);
		if (head)
			set_thread_ctx(pid_tgid, r);
	}
	c->hdr_tp_count = st->tp_count;
	bool finished = st->header_end || st->over_limit;
	if (!finished) {
		c->hdr_mid_line = st->mid_line;
		c->hdr_in_ts = st->in_ts;
		__u64 total = done + st->len;
		c->hdr_bytes = total < HDR_BLOCK_MAX ? total : HDR_BLOCK_MAX;
		if (st->ts_seen && !saved &&
		    !bpf_map_update_elem(&ts_scans, &key, &s->ts, BPF_ANY))
			c->hdr_ts = 1;
		return 0;
	}
	c->hdr_pending = 0;
	if (st->ts_seen && have_parent && st->header_end) {
		if (saved)
			store_tracestate(r, saved);
		else
			store_tracestate(r, &s->ts);
	}
	if (c->hdr_ts) {
		bpf_map_delete_elem(&ts_scans, &key);
		c->hdr_ts = 0;
	}
	return 0;
}

// A response written on (tgid, fd): the oldest pending SERVER span ends.
__noinline int server_response(__u64 pid_tgid, __u32 fd)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &zero);
	if (!s)
		return 0;
	struct conn_key key = {.tgid = pid_tgid >> 32, .fd = fd};
	struct conn_state *c = conn_get(&key, false, (struct sock *)s->hint);
	if (!c || c->srv_count == 0)
		return 0;
	__u16 status = status_at(s->buf, 0);
	if (status >= 100 && status < 200 && status != 101)
		return 0; // interim response (100 Continue): the final one follows
	struct req_info *r = &c->srv[c->srv_head & (PIPELINE_DEPTH - 1)];
	__u64 span;
	__builtin_memcpy(&span, r->span_id, sizeof(span));
	struct tracestate *ts = r->has_ts ? bpf_map_lookup_elem(&tracestates, &span) : 0;
	if (ts)
		emit_tracestate(r->span_id, ts);
	emit(c, r, KIND_SERVER, status, key.tgid);
	if (ts)
		bpf_map_delete_elem(&tracestates, &span);
	// The context was set on the thread that read the request, which is not
	// always the one writing the response (Go moves goroutines between
	// threads): end it there, unless that thread has moved on to another
	// request.
	__u64 reader = (pid_tgid & 0xffffffff00000000ull) | r->tid;
	struct thread_ctx *t = bpf_map_lookup_elem(&thread_ctxs, &reader);
	__u64 go_owner = 0;
	if (r->goroutine) {
		struct go_key k = {.tgid = key.tgid, .g = r->goroutine};
		struct thread_ctx *gt = bpf_map_lookup_elem(&go_ctxs, &k);
		if (gt && same_span(gt->span_id, r->span_id)) {
			bpf_map_delete_elem(&go_ctxs, &k);
			go_owner = r->goroutine;
		}
	}
	c->srv_head = (c->srv_head + 1) & (PIPELINE_DEPTH - 1);
	c->srv_count--;
	// A pipelined request read with this one is served next by the same
	// goroutine (net/http serves a connection's requests in order on its
	// conn goroutine, from bytes already buffered): it takes the context.
	if (go_owner && c->srv_count) {
		struct req_info *nr = &c->srv[c->srv_head & (PIPELINE_DEPTH - 1)];
		struct thread_ctx nt = {};
		__builtin_memcpy(nt.trace_id, nr->trace_id, sizeof(nt.trace_id));
		__builtin_memcpy(nt.span_id, nr->span_id, sizeof(nt.span_id));
		nt.trace_flags = nr->trace_flags;
		struct go_key nk = {.tgid = key.tgid, .g = go_owner};
		bpf_map_update_elem(&go_ctxs, &nk, &nt, BPF_ANY);
		nr->goroutine = go_owner;
	}
	if (t && !go_owner)
		thread_req_done(reader, r, c->srv_count ? &c->srv[c->srv_head & (PIPELINE_DEPTH - 1)] : 0);
	return 0;
}

_Static_assert(CLIENT_IDS_MAX == PIPELINE_DEPTH, "one client_id per pipelined request");
_Static_assert(CLIENT_SEEN == BUF_SIZE - 1, "ctxprop injects only what client_request sees");

// The request at offset off of a write on (tgid, fd), the idx-th of the
// write: a CLIENT span starts, child of the request the thread is serving,
// if any. Returns the offset of the next pipelined request in the buffer, or
// 0. A global function: verified once, whatever its callers.
__noinline int client_request(__u64 pid_tgid, __u32 fd, __u64 off, __u64 n, __u32 idx)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &zero);
	if (!s)
		return 0;
	const __u8 *buf = s->buf;
	if (off + 16 > n || n > BUF_SIZE)
		return 0;
	__u8 head[8];
#pragma unroll
	for (int k = 0; k < 8; k++)
		head[k] = at(buf, off + k);
	__u32 mlen = request_method_len(head);
	if (!mlen)
		return 0;
	struct conn_key key = {.tgid = pid_tgid >> 32, .fd = fd};
	struct conn_state *c = conn_get(&key, off == 0, (struct sock *)s->hint);
	if (!c)
		return 0;
	c->tls = s->tls;
	if (c->cli_count >= PIPELINE_DEPTH) {
		count(COUNTER_PIPELINE_FULL);
		return 0;
	}
	struct req_info *r = &c->cli[(c->cli_head + c->cli_count) & (PIPELINE_DEPTH - 1)];
	__builtin_memset(r, 0, sizeof(*r));
	r->start_ns = bpf_ktime_get_ns();
	r->tid = (__u32)pid_tgid;
	__u64 next = parse_request(s, off, n, mlen, r, 0);
	struct w3c_scan *st = &s->st;
	__u64 g;
	struct thread_ctx *t = current_ctx(pid_tgid, &g);
	if (!t && !g) {
		struct thread_ctx *amb = bpf_map_lookup_elem(&thread_ctxs, &pid_tgid);
		if (amb && amb->ambiguous)
			count(COUNTER_ASSOC_UNCERTAIN);
	}
	struct client_ids *ids = bpf_map_lookup_elem(&client_ids, &pid_tgid);
	struct client_id *injected = ids ? &ids->req[idx & (CLIENT_IDS_MAX - 1)] : 0;
	if (injected && injected->set) {
		// ctxprop injected a traceparent into this request of the write.
		__builtin_memcpy(r->trace_id, injected->trace_id, sizeof(r->trace_id));
		__builtin_memcpy(r->span_id, injected->span_id, sizeof(r->span_id));
		__builtin_memcpy(r->parent_id, injected->parent_id, sizeof(r->parent_id));
		r->trace_flags = injected->trace_flags;
	} else if (st->tp_count == 1 && st->tp_valid) {
		// The application propagates itself: its header names this span.
		__builtin_memcpy(r->trace_id, st->trace_id, sizeof(r->trace_id));
		__builtin_memcpy(r->span_id, st->parent_id, sizeof(r->span_id));
		r->trace_flags = sample_child(st->trace_id, st->trace_flags);
		if (t && same_trace(t->trace_id, st->trace_id))
			__builtin_memcpy(r->parent_id, t->span_id, sizeof(r->parent_id));
	} else if (t) {
		__builtin_memcpy(r->trace_id, t->trace_id, sizeof(r->trace_id));
		__builtin_memcpy(r->parent_id, t->span_id, sizeof(r->parent_id));
		r->trace_flags = t->trace_flags;
		random_id(r->span_id, 2);
		if (t->inherited)
			end_inherited(pid_tgid, g);
		if (carrier_tls && s->tls)
			carrier_fill(c, r);
	} else {
		random_id(r->trace_id, 4);
		random_id(r->span_id, 2);
		r->trace_flags = sample_root(r->trace_id);
	}
	c->cli_count++;
	return next < n ? next : 0;
}

// The response at offset off of a read on (tgid, fd): the oldest pending
// CLIENT span ends. Returns the offset of the next response in the buffer
// (pipelined responses read together), or 0.
__noinline int client_response(__u64 pid_tgid, __u32 fd, __u64 off, __u64 n)
{
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &zero);
	if (!s)
		return 0;
	if (off + 16 > n || n > BUF_SIZE)
		return 0;
	struct conn_key key = {.tgid = pid_tgid >> 32, .fd = fd};
	struct conn_state *c = conn_get(&key, false, (struct sock *)s->hint);
	if (!c || !c->cli_count)
		return 0;
	__u8 head[16];
#pragma unroll
	for (int k = 0; k < 16; k++)
		head[k] = at(s->buf, off + k);
	if (!is_response(head))
		return 0;
	__u16 status = status_at(s->buf, off);
	// The response's length, to find a pipelined one after it.
	struct w3c_scan *st = &s->st;
	__builtin_memset(st, 0, sizeof(*st));
	st->pos = off + 8;
	st->end = n;
	st->len = s->len;
	st->src = s->src;
	st->limit = off + HDR_BLOCK_MAX;
	if (c->cli_count > 1)
		w3c_scan(st, (struct w3c_buf *)s->buf, 0, use_bpf_loop);
	__u64 next = st->header_end && !st->base ? st->header_end + st->content_length : 0;
	if (status >= 100 && status < 200 && status != 101)
		return next < n ? next : 0; // interim response: the final one follows
	struct req_info *r = &c->cli[c->cli_head & (PIPELINE_DEPTH - 1)];
	c->cli_head = (c->cli_head + 1) & (PIPELINE_DEPTH - 1);
	c->cli_count--;
	// The tracestate of the SERVER span this request is a child of goes
	// with the context.
	__u64 parent;
	__builtin_memcpy(&parent, r->parent_id, sizeof(parent));
	struct tracestate *ts = parent ? bpf_map_lookup_elem(&tracestates, &parent) : 0;
	if (ts)
		emit_tracestate(r->span_id, ts);
	emit(c, r, KIND_CLIENT, status, key.tgid);
	return c->cli_count && next < n ? next : 0;
}

// The application's own traceparent, which ctxprop found in a later write
// of a request's header block than the request line: the connection's
// newest pending CLIENT request takes its ids, as if it had been in the
// first write.
static __always_inline void client_app_ids(struct conn_key *key, struct sock *hint,
					   struct client_id *app)
{
	struct conn_state *c = bpf_map_lookup_elem(&conns, key);
	if (!c || (hint && !same_conn(c, hint)) || !c->cli_count)
		return;
	struct req_info *r = &c->cli[(c->cli_head + c->cli_count - 1) & (PIPELINE_DEPTH - 1)];
	__builtin_memcpy(r->trace_id, app->trace_id, sizeof(r->trace_id));
	__builtin_memcpy(r->span_id, app->span_id, sizeof(r->span_id));
	__builtin_memcpy(r->parent_id, app->parent_id, sizeof(r->parent_id));
	r->trace_flags = sample_child(app->trace_id, app->trace_flags);
}

// Resolves the user buffer of a read/write-like syscall and how many bytes of
// it hold data.
static __always_inline __u64 data_buffer(__u64 nr, __u64 arg2, __u64 ret, __u64 *len)
{
	*len = ret;
	if (nr == NR_READ || nr == NR_WRITE || nr == NR_RECVFROM || nr == NR_SENDTO)
		return arg2;
	__u64 iov_ptr = arg2;
	if (nr == NR_RECVMSG || nr == NR_SENDMSG) {
		struct user_msghdr64 msg;
		if (bpf_probe_read_user(&msg, sizeof(msg), (void *)arg2))
			return 0;
		if (msg.iovlen == 0)
			return 0;
		iov_ptr = msg.iov;
	}
	struct user_iovec iov;
	if (bpf_probe_read_user(&iov, sizeof(iov), (void *)iov_ptr))
		return 0;
	if (iov.len < *len)
		*len = iov.len;
	return iov.base;
}

static __always_inline bool is_traced_syscall(__u64 nr)
{
	switch (nr) {
	case NR_READ:
	case NR_WRITE:
	case NR_CLOSE:
	case NR_READV:
	case NR_WRITEV:
	case NR_SENDTO:
	case NR_RECVFROM:
	case NR_SENDMSG:
	case NR_RECVMSG:
		return true;
	}
	return false;
}

// Looks up the state of (tgid, fd) without creating it; with a socket hint,
// only if it was made for that socket.
static __always_inline struct conn_state *conn_peek(struct conn_key *key, struct sock *hint)
{
	struct conn_state *c = bpf_map_lookup_elem(&conns, key);
	if (c && hint && !same_conn(c, hint))
		return 0;
	return c;
}

// A socket read or write of a thread inside a TLS library call (tc): the
// call's SSL object is on this socket, remembered for its later calls.
// Returns true when tc is a write not handled yet, whose plaintext is to be
// handled now, on this socket.
static __noinline bool tls_socket(struct tls_call *tc, __u64 pid_tgid, __u32 fd,
				  struct sock *hint, bool is_read)
{
	struct sock *sk = fd_to_sock(fd);
	if (!sk || (hint && sk != hint))
		return false;
	if (!tc->has_fd || tc->fd != fd) {
		tc->fd = fd;
		tc->sk = (__u64)sk;
		tc->has_fd = 1;
		struct tls_key k = {.ssl = tc->ssl, .tgid = pid_tgid >> 32};
		struct tls_fd v = {.sk = (__u64)sk, .fd = fd, .ports = sk_ports(sk)};
		bpf_map_update_elem(&tls_fds, &k, &v, BPF_ANY);
	}
	return !tc->is_read && !is_read;
}

// A socket read of a process whose TLS library keeps the ciphertext in
// memory (tls_membio): remembered as the thread's last socket read, which
// names the connection of its next SSL_read. Out of line: its stack is not
// on the deepest call chain.
static __noinline int tls_note_read(__u64 pid_tgid, __u32 fd, struct sock *hint)
{
	__u32 tgid = pid_tgid >> 32;
	if (!bpf_map_lookup_elem(&tls_membio, &tgid))
		return 0;
	struct sock *sk = hint ? hint : fd_to_sock(fd);
	if (!sk)
		return 0;
	struct tls_fd v = {.sk = (__u64)sk, .fd = fd, .ports = sk_ports(sk)};
	bpf_map_update_elem(&tls_last_read, &pid_tgid, &v, BPF_ANY);
	return 0;
}

// The work of every entry point, once the process is known to be traced and
// the call is a socket read or write that moved ret > 0 bytes: nr, fd and
// arg2 are the system call's number and first two arguments, hint the socket
// when the hook names it (0 at sys_exit).
static __always_inline int on_io(__u64 pid_tgid, __u64 nr, long ret, __u64 fd, __u64 arg2,
				 struct sock *hint, bool tls)
{
	bool is_read = nr == NR_READ || nr == NR_READV || nr == NR_RECVFROM || nr == NR_RECVMSG;
	struct conn_key key = {.tgid = pid_tgid >> 32, .fd = (__u32)fd};
	__u64 len = 0;
	if (!tls) {
		// Ciphertext moved by a TLS library call: its plaintext is seen at
		// the call (tls_enter, tls_read_return), not here.
		struct tls_call *tc = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
		if (tc) {
			if (!tls_socket(tc, pid_tgid, (__u32)fd, hint, is_read))
				return 0;
			// A write whose socket was not known at its entry: its
			// plaintext is handled now, on this socket.
			ret = tc->len < BUF_SIZE ? (long)tc->len : BUF_SIZE;
			arg2 = tc->buf;
			nr = NR_WRITE;
			is_read = false;
			tls = true;
			tls_call_delete(pid_tgid);
		} else if (is_read) {
			tls_note_read(pid_tgid, key.fd, hint);
		}
	}
	if (!is_read && !tls) {
		struct client_ids *ids = bpf_map_lookup_elem(&client_ids, &pid_tgid);
		if (ids && ids->req[0].set == CLIENT_ID_APP) {
			client_app_ids(&key, hint, &ids->req[0]);
			bpf_map_delete_elem(&client_ids, &pid_tgid);
			return 0;
		}
	}
	if (is_read) {
		struct conn_state *c = conn_peek(&key, hint);
		if (c && c->hdr_pending && c->tls == tls) {
			__u32 zero = 0;
			struct scratch *s = bpf_map_lookup_elem(&scratch_map, &zero);
			__u64 ubuf = data_buffer(nr, arg2, (__u64)ret, &len);
			if (!s || !ubuf || !len)
				return 0;
			__u64 n = len;
			if (n > BUF_SIZE)
				n = BUF_SIZE;
			barrier_var(n);
			if (n > BUF_SIZE || bpf_probe_read_user(s->buf, n, (void *)ubuf))
				return 0;
			s->hint = (__u64)hint;
			s->src = ubuf;
			s->len = len;
			s->tls = tls;
			server_headers(pid_tgid, key.fd, n);
			return 0;
		}
	}
	if (ret == 1 && is_read) {
		// Go's HTTP server reads one byte in the background while a
		// handler runs: it can be the first byte of the next request.
		struct conn_state *c = conn_peek(&key, hint);
		if (!c || c->tls != tls)
			return 0;
		__u64 ubuf = data_buffer(nr, arg2, 1, &len);
		if (ubuf && len == 1 && !bpf_probe_read_user(&c->prefix, 1, (void *)ubuf))
			c->has_prefix = 1;
		return 0;
	}
	if (ret < 15)
		return 0;
	__u64 ubuf = data_buffer(nr, arg2, (__u64)ret, &len);
	if (!ubuf || len < 15)
		return 0;
	__u8 head[16];
	if (bpf_probe_read_user(head, sizeof(head), (void *)ubuf))
		return 0;
	__u32 mlen = request_method_len(head);
	bool resp = !mlen && is_response(head);
	__u8 prefix = 0;
	__u64 shift = 0;
	if (!mlen && !resp) {
		if (tls && is_h2_preface(head)) {
			// HTTP/2 (ALPN h2, Go's default over TLS): frames, not parsed.
			count(COUNTER_TLS_HTTP2);
			return 0;
		}
		if (!is_read)
			return 0;
		struct conn_state *c = conn_peek(&key, hint);
		if (!c || !c->has_prefix || c->tls != tls)
			return 0;
		c->has_prefix = 0;
		prefix = c->prefix;
		__u8 joined[16];
		joined[0] = prefix;
		__builtin_memcpy(joined + 1, head, 15);
		mlen = request_method_len(joined);
		if (!mlen)
			return 0;
		shift = 1;
	} else if (len < 16) {
		return 0;
	}

	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch_map, &zero);
	if (!s)
		return 0;
	s->hint = (__u64)hint;
	if (resp && !is_read) {
		// A response written is known by its status line: the 16 bytes
		// read (responses read are parsed further: several may end).
		__builtin_memcpy(s->buf, head, sizeof(head));
		s->src = ubuf;
		s->len = len;
		s->tls = tls;
		server_response(pid_tgid, key.fd);
		return 0;
	}
	__u64 n = len;
	if (n > BUF_SIZE - 1)
		n = BUF_SIZE - 1;
	barrier_var(n);
	if (n > BUF_SIZE - 1)
		return 0;
	if (bpf_probe_read_user(s->buf + shift, n, (void *)ubuf))
		return 0;
	if (shift) {
		s->buf[0] = prefix;
		n++;
	}
	s->src = ubuf - shift; // buf[i] is the data at src + i
	s->len = len + shift;
	s->tls = tls;

	if (is_read) {
		if (!mlen) {
			__u64 off = 0;
			for (int i = 0; i < PIPELINE_DEPTH; i++) {
				off = client_response(pid_tgid, key.fd, off, n);
				if (!off)
					break;
			}
			return 0;
		}
		__u64 off = 0;
		for (int i = 0; i < PIPELINE_DEPTH; i++) {
			off = server_request(pid_tgid, key.fd, off, n);
			if (!off)
				break;
		}
	} else if (mlen) {
		__u64 off = 0;
		for (int i = 0; i < PIPELINE_DEPTH; i++) {
			off = client_request(pid_tgid, key.fd, off, n, i);
			if (!off)
				break;
		}
		bpf_map_delete_elem(&client_ids, &pid_tgid);
	}
	return 0;
}

// sys_exit: close ends the state of the fd; reads and writes go to on_io.
static __always_inline int on_sys_exit(__u64 pid_tgid, __u64 nr, long ret, __u64 arg1, __u64 arg2)
{
	if (nr == NR_CLOSE) {
		if (ret != 0)
			return 0;
		struct conn_key key = {.tgid = pid_tgid >> 32, .fd = (__u32)arg1};
		struct conn_state *c = bpf_map_lookup_elem(&conns, &key);
		// Another thread may already have been given the same fd number
		// for a new connection, and made its state: keep that one.
		if (c && c->sk != (__u64)fd_to_sock(key.fd)) {
			conn_gone(key.tgid, c);
			bpf_map_delete_elem(&conns, &key);
		}
		return 0;
	}
	return on_io(pid_tgid, nr, ret, arg1, arg2, 0, false);
}

// TLS: the plaintext an application hands to OpenSSL/BoringSSL, seen at
// SSL_read/SSL_write (and the _ex forms) of the selected processes: entry
// uprobes, and a return uprobe on the reads (C code: uretprobes are safe).
// The socket is the one the same thread reads or writes inside the call
// (recorded by tls_socket), or the one the SSL object was last seen on.

// The socket of ssl, if the one recorded still names it.
static __always_inline struct sock *tls_known_sock(__u64 pid_tgid, __u64 ssl, __u32 *fd)
{
	struct tls_key k = {.ssl = ssl, .tgid = pid_tgid >> 32};
	struct tls_fd *v = bpf_map_lookup_elem(&tls_fds, &k);
	if (!v)
		return 0;
	struct sock *sk = fd_to_sock(v->fd);
	// A closed connection's entry: its fd and struct sock may now be
	// another connection's (an accepted one), its SSL object's address
	// another SSL object's.
	if (!sk || (__u64)sk != v->sk || sk_ports(sk) != v->ports)
		return 0;
	*fd = v->fd;
	return sk;
}

// SSL_read/SSL_read_ex/SSL_write/SSL_write_ex(ssl, buf, num[, size_t *]).
// Records a TLS call in progress on the thread (tls_calls). Out of line:
// its stack is not on tls_enter's deepest call chain (through on_io).
static __noinline int tls_record_call(struct pt_regs *ctx, __u64 pid_tgid, __u64 len, bool is_read,
				      bool ex)
{
	struct tls_call c = {.ssl = CALL_ARG1(ctx), .buf = CALL_ARG2(ctx), .len = len, .is_read = is_read};
	c.out = ex && is_read ? CALL_ARG4(ctx) : 0;
	struct tls_call *old = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
	bool was_write = old && !old->is_read;
	if (bpf_map_update_elem(&tls_calls, &pid_tgid, &c, BPF_ANY))
		return 0;
	if (!is_read && !was_write)
		tls_writes_add(1);
	else if (is_read && was_write)
		tls_writes_add(-1);
	return 0;
}

static __always_inline int tls_enter(struct pt_regs *ctx, bool is_read, bool ex)
{
	if (return_at_once)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	if (!bpf_map_lookup_elem(&traced_pids, &tgid))
		return 0;
	__u64 ssl = CALL_ARG1(ctx);
	__u64 buf = CALL_ARG2(ctx);
	__u64 len = CALL_ARG3(ctx);
	if (!ex) {
		int num = (int)len;
		if (num <= 0)
			return 0;
		len = (__u64)num;
	}
	if (!is_read) {
		__u32 fd = 0;
		struct sock *sk = tls_known_sock(pid_tgid, ssl, &fd);
		if (sk) {
			// An earlier call that never reached a socket is over.
			tls_call_delete(pid_tgid);
			long n = len < BUF_SIZE ? (long)len : BUF_SIZE;
			return on_io(pid_tgid, NR_WRITE, n, fd, buf, sk, true);
		}
	}
	return tls_record_call(ctx, pid_tgid, len, is_read, ex);
}

// In a process with a memory BIO, the socket this thread read last (the
// ciphertext SSL_read has just decrypted), now also remembered as ssl's:
// its fd, or -1. A global function: its stack is not its caller's.
__noinline int tls_membio_fd(__u64 pid_tgid, __u64 ssl)
{
	__u32 tgid = pid_tgid >> 32;
	if (!bpf_map_lookup_elem(&tls_membio, &tgid))
		return -1;
	struct tls_fd *last = bpf_map_lookup_elem(&tls_last_read, &pid_tgid);
	if (!last)
		return -1;
	struct tls_fd v = *last;
	struct sock *sk = fd_to_sock(v.fd);
	if (!sk || (__u64)sk != v.sk || sk_ports(sk) != v.ports)
		return -1;
	struct tls_key k = {.ssl = ssl, .tgid = tgid};
	bpf_map_update_elem(&tls_fds, &k, &v, BPF_ANY);
	return (int)v.fd;
}

static __always_inline int tls_read_return(struct pt_regs *ctx)
{
	if (return_at_once)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_call *tc = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
	if (!tc)
		return 0;
	struct tls_call c = *tc;
	tls_call_delete(pid_tgid);
	if (!c.is_read)
		return 0;
	long ret = (long)CALL_RET(ctx);
	long n = 0;
	if (c.out) {
		__u64 got = 0;
		if ((int)ret == 1 && !bpf_probe_read_user(&got, sizeof(got), (void *)c.out))
			n = got < BUF_SIZE ? (long)got : BUF_SIZE;
	} else if ((int)ret > 0) {
		n = (int)ret;
	}
	if (n <= 0)
		return 0;
	__u32 fd = c.fd;
	struct sock *sk = (struct sock *)c.sk;
	if (!c.has_fd && !(sk = tls_known_sock(pid_tgid, c.ssl, &fd))) {
		int last = tls_membio_fd(pid_tgid, c.ssl);
		if (last < 0 || !(sk = fd_to_sock(last)))
			return 0;
		fd = last;
	}
	return on_io(pid_tgid, NR_READ, n, fd, c.buf, sk, true);
}

SEC("uprobe.multi")
int httptrace_ssl_read_multi(struct pt_regs *ctx) { return tls_enter(ctx, true, false); }
SEC("uprobe.multi")
int httptrace_ssl_read_ex_multi(struct pt_regs *ctx) { return tls_enter(ctx, true, true); }
SEC("uprobe.multi")
int httptrace_ssl_write_multi(struct pt_regs *ctx) { return tls_enter(ctx, false, false); }
SEC("uprobe.multi")
int httptrace_ssl_write_ex_multi(struct pt_regs *ctx) { return tls_enter(ctx, false, true); }
SEC("uretprobe.multi")
int httptrace_ssl_read_return_multi(struct pt_regs *ctx) { return tls_read_return(ctx); }

SEC("uprobe")
int httptrace_ssl_read(struct pt_regs *ctx) { return tls_enter(ctx, true, false); }
SEC("uprobe")
int httptrace_ssl_read_ex(struct pt_regs *ctx) { return tls_enter(ctx, true, true); }
SEC("uprobe")
int httptrace_ssl_write(struct pt_regs *ctx) { return tls_enter(ctx, false, false); }
SEC("uprobe")
int httptrace_ssl_write_ex(struct pt_regs *ctx) { return tls_enter(ctx, false, true); }
SEC("uretprobe")
int httptrace_ssl_read_return(struct pt_regs *ctx) { return tls_read_return(ctx); }

// The saved registers of the system call that brought the socket hook here,
// and its number in *nr, if it is a read (is_read) or write of a user
// buffer by a thread that is not an io_uring worker.
static __always_inline struct pt_regs *socket_syscall(bool is_read, __u64 *nr)
{
	struct task_struct *task = bpf_get_current_task_btf();
	if (task->flags & PF_IO_WORKER)
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	if (!regs)
		return 0;
	__u64 n = SYSCALL_NR_BTF(regs);
	bool nr_read = n == NR_READ || n == NR_READV || n == NR_RECVFROM || n == NR_RECVMSG;
	bool nr_write = n == NR_WRITE || n == NR_WRITEV || n == NR_SENDTO || n == NR_SENDMSG;
	if (is_read ? !nr_read : !nr_write)
		return 0;
	*nr = n;
	return regs;
}

// Go's crypto/tls: Go does not use OpenSSL, and its plaintext is seen at
// crypto/tls.(*Conn).Write (entry: the buffer given) and (*Conn).Read
// (entry: the buffer, kept per goroutine; each RET: the bytes read, n in
// the result register). Never a uretprobe: it crashes Go programs. The
// socket comes from the *tls.Conn itself, through its net.Conn (checked to
// be a *net.TCPConn when the symbol table tells its itab) down to
// internal/poll.FD.Sysfd, and must name a TCP socket of the process.
#if defined(__TARGET_ARCH_x86)
// Go's register ABI (ABIInternal): the first integer arguments and results,
// and the current goroutine's g.
#define GO_ARG1(r) ((r)->ax)
#define GO_ARG2(r) ((r)->bx)
#define GO_ARG3(r) ((r)->cx)
#define GO_G(r) ((r)->r14)
#elif defined(__TARGET_ARCH_arm64)
#define GO_ARG1(r) ((r)->regs[0])
#define GO_ARG2(r) ((r)->regs[1])
#define GO_ARG3(r) ((r)->regs[2])
#define GO_G(r) ((r)->regs[28])
#endif

// Go processes whose crypto/tls is probed, tgid -> offsets.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct go_tls_proc);
} go_tls_procs SEC(".maps");

// Reads in progress, (tgid, goid) -> buffer and socket. LRU: a Read that
// never returns (its goroutine panics) leaves its entry behind.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct go_key);
	__type(value, struct go_tls_read);
} go_tls_reads SEC(".maps");

// The socket of the *tls.Conn c, 0 if it is not a TCP socket of the process.
static __noinline __u64 go_tls_sock(struct go_tls_proc *p, __u64 c, __u32 *fd)
{
	__u64 iface[2] = {};
	if (!p || !c || bpf_probe_read_user(iface, sizeof(iface), (void *)(c + p->conn_off)))
		return 0;
	if (p->tcpconn_itab && iface[0] != p->tcpconn_itab)
		return 0;
	__u64 nfd = read_u64(iface[1] + p->fd_off);
	if (!nfd)
		return 0;
	__s64 sysfd = (__s64)read_u64(nfd + p->pfd_off + p->sysfd_off);
	if (sysfd < 0 || sysfd > 0x7fffffff)
		return 0;
	*fd = (__u32)sysfd;
	return (__u64)fd_to_sock((__u32)sysfd);
}

static __always_inline struct go_tls_proc *go_tls_traced(__u64 pid_tgid)
{
	__u32 tgid = pid_tgid >> 32;
	if (!bpf_map_lookup_elem(&traced_pids, &tgid))
		return 0;
	return bpf_map_lookup_elem(&go_tls_procs, &tgid);
}

// (*Conn).Write(c, b []byte): the plaintext goes the way of a socket write.
static __always_inline int go_tls_write(struct pt_regs *ctx)
{
	if (return_at_once)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct go_tls_proc *p = go_tls_traced(pid_tgid);
	if (!p)
		return 0;
	__s64 len = (__s64)GO_ARG3(ctx);
	if (len <= 0)
		return 0;
	__u32 fd = 0;
	struct sock *sk = (struct sock *)go_tls_sock(p, GO_ARG1(ctx), &fd);
	if (!sk) {
		count(COUNTER_GO_TLS_NO_FD);
		return 0;
	}
	long n = len < BUF_SIZE ? (long)len : BUF_SIZE;
	return on_io(pid_tgid, NR_WRITE, n, fd, GO_ARG2(ctx), sk, true);
}

// (*Conn).Read(c, b []byte) entry: the buffer and socket, for the RET.
static __always_inline int go_tls_read(struct pt_regs *ctx)
{
	if (return_at_once)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct go_tls_proc *p = go_tls_traced(pid_tgid);
	if (!p)
		return 0;
	__u64 g = GO_G(ctx);
	if (!g || (__s64)GO_ARG3(ctx) <= 0)
		return 0;
	struct go_tls_read v = {.buf = GO_ARG2(ctx)};
	v.sk = go_tls_sock(p, GO_ARG1(ctx), &v.fd);
	if (!v.sk) {
		count(COUNTER_GO_TLS_NO_FD);
		return 0;
	}
	struct go_key k = {.tgid = pid_tgid >> 32, .g = p->goid_off ? read_u64(g + p->goid_off) : g};
	bpf_map_update_elem(&go_tls_reads, &k, &v, BPF_ANY);
	return 0;
}

// The Read a RET ends, handed from go_tls_take to go_tls_read_ret.
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct go_tls_read);
} go_tls_ret SEC(".maps");

// Takes the Read in progress of the current goroutine, at a RET of
// (*Conn).Read, into go_tls_ret with n, the bytes read (the first result)
// in _pad's place: true when there is one to handle. Out of line: its stack
// is not on the deepest call chain (through on_io).
static __noinline bool go_tls_take(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct go_tls_proc *p = go_tls_traced(pid_tgid);
	if (!p)
		return false;
	__u64 g = GO_G(ctx);
	struct go_key k = {.tgid = pid_tgid >> 32, .g = p->goid_off ? read_u64(g + p->goid_off) : g};
	struct go_tls_read *r = bpf_map_lookup_elem(&go_tls_reads, &k);
	if (!r)
		return false;
	__u32 zero = 0;
	struct go_tls_read *out = bpf_map_lookup_elem(&go_tls_ret, &zero);
	if (!out)
		return false;
	*out = *r;
	bpf_map_delete_elem(&go_tls_reads, &k);
	__s64 n = (__s64)GO_ARG1(ctx);
	if (n <= 0)
		return false;
	out->n = n < BUF_SIZE ? (__u32)n : BUF_SIZE;
	return true;
}

// A RET of (*Conn).Read: n plaintext bytes are in the buffer recorded at
// entry.
static __always_inline int go_tls_read_ret(struct pt_regs *ctx)
{
	if (return_at_once || !go_tls_take(ctx))
		return 0;
	__u32 zero = 0;
	struct go_tls_read *v = bpf_map_lookup_elem(&go_tls_ret, &zero);
	if (!v)
		return 0;
	return on_io(bpf_get_current_pid_tgid(), NR_READ, v->n, v->fd, v->buf, (struct sock *)v->sk, true);
}

SEC("uprobe.multi")
int httptrace_go_tls_write(struct pt_regs *ctx) { return go_tls_write(ctx); }
SEC("uprobe.multi")
int httptrace_go_tls_read(struct pt_regs *ctx) { return go_tls_read(ctx); }
SEC("uprobe.multi")
int httptrace_go_tls_read_ret(struct pt_regs *ctx) { return go_tls_read_ret(ctx); }

// Default variant: the socket tracepoints, (sk, ret, flags), which run only
// when a socket read or write returns. The payload is in the user buffer the
// system call was given, found through its saved registers.
static __always_inline int on_sock(__u64 *ctx, bool is_read)
{
	if (return_at_once)
		return 0;
	long ret = (long)(int)ctx[1];
	if (ret <= 0) // the netpoller's EAGAIN reads among them
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	if (!bpf_map_lookup_elem(&traced_pids, &tgid))
		return 0;
	if (is_read && ((int)ctx[2] & MSG_PEEK))
		return 0;
	__u64 nr;
	struct pt_regs *regs = socket_syscall(is_read, &nr);
	if (!regs)
		return 0; // sendfile, splice, recvmmsg, io_uring: no user buffer here
	struct sock *sk = (struct sock *)ctx[0];
	if (!sk)
		return 0;
	return on_io(pid_tgid, nr, ret, SYSCALL_ARG1_BTF(regs), SYSCALL_ARG2_BTF(regs), sk, false);
}

SEC("tp_btf/sock_recv_length")
int httptrace_sock_recv(__u64 *ctx)
{
	return on_sock(ctx, true);
}

SEC("tp_btf/sock_send_length")
int httptrace_sock_send(__u64 *ctx)
{
	return on_sock(ctx, false);
}

// With the packet carrier on: a TLS write whose socket was not known at
// SSL_write is handled where the ciphertext enters TCP, before it is copied
// and sent (sock_send_length comes after the segments left), so that the
// carrier has the request's context for its first segment. tcp_sendmsg_locked
// runs once per copied chunk: the first one handles the call and ends it.
SEC("tp_btf/tcp_sendmsg_locked")
int httptrace_tcp_sendmsg(__u64 *ctx)
{
	if (return_at_once || !carrier_tls)
		return 0;
	// Every TCP send of the host comes here: with no TLS write waiting
	// anywhere (the common case) one array load ends it, before any helper.
	__u32 zero = 0;
	__s64 *pending = bpf_map_lookup_elem(&tls_writes, &zero);
	if (!pending || !*pending)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct tls_call *tc = bpf_map_lookup_elem(&tls_calls, &pid_tgid);
	if (!tc || tc->is_read)
		return 0;
	__u64 nr;
	struct pt_regs *regs = socket_syscall(false, &nr);
	if (!regs)
		return 0;
	struct sock *sk = (struct sock *)ctx[0];
	if (!sk)
		return 0;
	return on_io(pid_tgid, nr, 1, SYSCALL_ARG1_BTF(regs), SYSCALL_ARG2_BTF(regs), sk, false);
}

// Fallback variant: sys_exit, as a BTF-typed tracepoint: registers are read
// directly, without a helper call per field.
SEC("tp_btf/sys_exit")
int httptrace_sys_exit_btf(__u64 *ctx)
{
	if (return_at_once)
		return 0;
	// Every system call of the host comes here: the number and result are
	// plain loads, so drop the uninteresting ones before any helper call.
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	__u64 nr = SYSCALL_NR_BTF(regs);
	long ret = (long)ctx[1];
	if (!is_traced_syscall(nr) || (ret <= 0 && nr != NR_CLOSE))
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	if (!bpf_map_lookup_elem(&traced_pids, &tgid))
		return 0;
	return on_sys_exit(pid_tgid, nr, ret, SYSCALL_ARG1_BTF(regs), SYSCALL_ARG2_BTF(regs));
}

// Last fallback, for kernels without BTF-typed tracepoints.
SEC("raw_tracepoint/sys_exit")
int httptrace_sys_exit(struct bpf_raw_tracepoint_args *ctx)
{
	if (return_at_once)
		return 0;
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;
	if (!bpf_map_lookup_elem(&traced_pids, &tgid))
		return 0;
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	long ret = (long)ctx->args[1];
	__u64 nr = SYSCALL_NR(regs);
	if (!is_traced_syscall(nr) || (ret <= 0 && nr != NR_CLOSE))
		return 0;
	return on_sys_exit(pid_tgid, nr, ret, SYSCALL_ARG1(regs), SYSCALL_ARG2(regs));
}

// traced_pids value of a process traced only because a traced process
// created it while serving a request (user space's entries are 1).
#define TRACED_INHERITED 2

static __always_inline int on_fork(struct task_struct *child)
{
	if (return_at_once)
		return 0;
	__u64 parent = bpf_get_current_pid_tgid();
	struct thread_ctx *t = bpf_map_lookup_elem(&thread_ctxs, &parent);
	if (!t)
		return 0;
	__u32 tgid = BPF_CORE_READ(child, tgid);
	__u64 key = (__u64)tgid << 32 | (__u32)BPF_CORE_READ(child, pid);
	struct thread_ctx c = *t;
	c.inherited = 1;
	if (tgid != parent >> 32) {
		// A new process (a fork, usually then an exec): traced while it
		// lives, so that its outgoing request is a child span and carries
		// the header.
		__u32 v = TRACED_INHERITED;
		bpf_map_update_elem(&traced_pids, &tgid, &v, BPF_NOEXIST);
	}
	bpf_map_update_elem(&thread_ctxs, &key, &c, BPF_ANY);
	return 0;
}

// A process traced by inheritance stops being traced when it exits.
static __always_inline int on_exit(struct task_struct *task)
{
	if (return_at_once)
		return 0;
	__u32 tgid = BPF_CORE_READ(task, tgid);
	if (tgid != (__u32)BPF_CORE_READ(task, pid))
		return 0; // a thread, not the process
	__u32 *v = bpf_map_lookup_elem(&traced_pids, &tgid);
	if (v && *v == TRACED_INHERITED)
		bpf_map_delete_elem(&traced_pids, &tgid);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int httptrace_exit_btf(__u64 *ctx)
{
	return on_exit((struct task_struct *)ctx[0]);
}

SEC("raw_tracepoint/sched_process_exit")
int httptrace_exit(struct bpf_raw_tracepoint_args *ctx)
{
	return on_exit((struct task_struct *)ctx->args[0]);
}

// A thread or process created while its creator serves a traced request
// inherits the request's context, for its first outgoing request.
SEC("tp_btf/sched_process_fork")
int httptrace_fork_btf(__u64 *ctx)
{
	return on_fork((struct task_struct *)ctx[1]);
}

SEC("raw_tracepoint/sched_process_fork")
int httptrace_fork(struct bpf_raw_tracepoint_args *ctx)
{
	return on_fork((struct task_struct *)ctx->args[1]);
}
