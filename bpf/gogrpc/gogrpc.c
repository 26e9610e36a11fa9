//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// gogrpc: SERVER and CLIENT spans of Go programs using google.golang.org/grpc,
// from uprobes on the library (gRPC runs over HTTP/2, which the socket-level
// parser does not read). Only entry probes, on the stack check's JBE (the
// kernel emulates it: one trap per hit): uretprobes crash Go programs, and a
// probe on a RET instruction is single-stepped out of line (two traps).
//
//   client: (*http2Client).write entry     -> span starts (stream id, method,
//                                             connection addresses), parent =
//                                             the goroutine's context (go.h)
//           (*clientStream).finish entry   -> span ends, code from the error
//   server: (*Server).handleStream entry   -> span starts; parent = the client
//                                             span recorded for the same
//                                             connection and stream id
//           (*http2Server).writeStatus entry -> span ends with the status code
//
// Joining without writes: nothing can be added to the HTTP/2 headers here
// (bpf_probe_write_user is refused), so the client records its span per
// (connection 4-tuple, stream id) in grpc_joins and a traced server on the
// same host reads it for the reversed tuple and the same stream id.
// Arguments and results follow Go's register ABI (ABIInternal, amd64).

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "maps/traced_pids.h"
#include "maps/thread_ctxs.h"
#include "maps/go.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#if defined(__TARGET_ARCH_x86)
// Integer arguments: RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11; results: RAX, RBX, ...
#define GO_ARG1(r) ((r)->ax)
#define GO_ARG2(r) ((r)->bx)
#define GO_ARG3(r) ((r)->cx)
#define GO_ARG4(r) ((r)->di)
#elif defined(__TARGET_ARCH_arm64)
// X0..X15 (built so the package compiles; the loader probes amd64 only).
#define GO_ARG1(r) ((r)->regs[0])
#define GO_ARG2(r) ((r)->regs[1])
#define GO_ARG3(r) ((r)->regs[2])
#define GO_ARG4(r) ((r)->regs[3])
#endif

#define GRPC_METHOD_MAX 128
#define KIND_SERVER 1
#define KIND_CLIENT 2

// Pending ring buffer bytes that wake the reader; 0 wakes it per record.
volatile const __u64 wakeup_bytes = 0;
// Every program returns at once (benchmark floor).
volatile const __u8 return_at_once = 0;

// What the programs read in one process's grpc structs (internal/goexe,
// from DWARF): tgid -> offsets.
struct grpc_proc {
	__u64 io_eof; // run-time address of the variable io.EOF, 0: unknown
	__u64 status_error_itab; // run-time *status.Error itab, 0: unknown
	__u64 server_transport_itab; // run-time *http2Server ServerTransport itab, 0: unknown
	__u32 stream_method;
	__u32 stream_id;
	__u32 client_stream;
	__u32 client_ct;
	__u32 server_stream;
	__u32 client_local;
	__u32 client_remote;
	__u32 server_peer;
	__u32 peer_addr;
	__u32 peer_local;
	__u32 tcp_ip;
	__u32 tcp_port;
	__u32 status_proto;
	__u32 error_status;
	__u32 proto_code;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct grpc_proc);
} grpc_procs SEC(".maps");

// One stream of one connection, seen from the client: addresses as
// IPv4-mapped IPv6 for IPv4.
struct grpc_join_key {
	__u8 client_ip[16];
	__u8 server_ip[16];
	__u32 stream_id;
	__u16 client_port;
	__u16 server_port;
};

struct grpc_parent {
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 trace_flags;
	__u8 _pad[7];
};

// The CLIENT span of each stream, for a traced server on this host.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct grpc_join_key);
	__type(value, struct grpc_parent);
} grpc_joins SEC(".maps");

// A call in progress.
struct grpc_call {
	__u64 start_ns;
	__u64 stream; // client: the *ClientStream
	__u64 goid; // server: the goroutine whose context the span set
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_id[8];
	__u8 local_ip[16];
	__u8 peer_ip[16];
	__u8 method[GRPC_METHOD_MAX];
	__u32 method_len;
	__u32 stream_id;
	__u16 local_port;
	__u16 peer_port;
	__u8 trace_flags;
	__u8 _pad[3];
};

struct grpc_call_key {
	__u32 tgid;
	__u32 _pad;
	__u64 id; // client: the goid; server: the *ServerStream
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct grpc_call_key);
	__type(value, struct grpc_call);
} grpc_client_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct grpc_call_key);
	__type(value, struct grpc_call);
} grpc_server_calls SEC(".maps");

// Scratch space for a call being built (too large for the stack).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct grpc_call);
} grpc_scratch SEC(".maps");

// One record per finished call, in httptrace's ring buffer (told apart by
// its size).
struct grpc_event {
	__u64 start_ns;
	__u64 end_ns;
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_id[8];
	__u8 local_ip[16];
	__u8 peer_ip[16];
	__u8 method[GRPC_METHOD_MAX];
	__u32 pid;
	__u32 tid;
	__u32 method_len;
	__u32 stream_id;
	__s32 code;
	__u16 local_port;
	__u16 peer_port;
	__u8 kind;
	__u8 trace_flags;
	__u8 joined; // server: the parent came from a traced client's record
	__u8 _pad[5];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

enum grpc_counter {
	GRPC_EVENTS_LOST,
	GRPC_JOINED,   // server spans whose parent is a traced client's span
	GRPC_UNJOINED, // server spans with no client record (own trace)
	GRPC_COUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRPC_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} grpc_counters SEC(".maps");

const struct grpc_event *unused_grpc_event __attribute__((unused));
const struct grpc_proc *unused_grpc_proc __attribute__((unused));

static __always_inline void count(__u32 c)
{
	__u64 *v = bpf_map_lookup_elem(&grpc_counters, &c);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline __u32 read_u32(__u64 addr)
{
	__u32 v = 0;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)addr))
		return 0;
	return v;
}

static __always_inline struct grpc_proc *proc_of(__u64 pid_tgid)
{
	if (return_at_once)
		return 0;
	__u32 tgid = pid_tgid >> 32;
	if (!bpf_map_lookup_elem(&traced_pids, &tgid))
		return 0;
	return bpf_map_lookup_elem(&grpc_procs, &tgid);
}

static __always_inline void random_id(__u8 *b, int words)
{
	for (int i = 0; i < words; i++) {
		__u32 r = bpf_get_prandom_u32();
		__builtin_memcpy(b + 4 * i, &r, 4);
	}
}

// Reads the *net.TCPAddr of a net.Addr interface at iface into ip (IPv4
// mapped) and port.
static __always_inline void read_addr(struct grpc_proc *p, __u64 iface, __u8 ip[16], __u16 *port)
{
	__u64 a = read_u64(iface + 8); // the interface's data word
	if (!a)
		return;
	__u64 ipp = read_u64(a + p->tcp_ip);
	__u64 len = read_u64(a + p->tcp_ip + 8);
	*port = (__u16)read_u64(a + p->tcp_port);
	if (len == 4) {
		__builtin_memset(ip, 0, 10);
		ip[10] = 0xff;
		ip[11] = 0xff;
		bpf_probe_read_user(ip + 12, 4, (void *)ipp);
	} else if (len == 16) {
		bpf_probe_read_user(ip, 16, (void *)ipp);
	}
}

// Reads stream's id and method into c.
static __always_inline void read_stream(struct grpc_proc *p, __u64 stream, struct grpc_call *c)
{
	c->stream_id = read_u32(stream + p->stream_id);
	__u64 m = read_u64(stream + p->stream_method);
	__u64 n = read_u64(stream + p->stream_method + 8);
	if (n > GRPC_METHOD_MAX)
		n = GRPC_METHOD_MAX;
	c->method_len = n;
	n &= GRPC_METHOD_MAX * 2 - 1;
	if (n > 0 && n <= GRPC_METHOD_MAX)
		bpf_probe_read_user(c->method, n, (void *)m);
}

static __always_inline struct grpc_call *scratch(void)
{
	__u32 zero = 0;
	struct grpc_call *c = bpf_map_lookup_elem(&grpc_scratch, &zero);
	if (c)
		__builtin_memset(c, 0, sizeof(*c));
	return c;
}

static __always_inline void emit(struct grpc_call *c, __u8 kind, __s32 code, __u8 joined, __u64 pid_tgid)
{
	if (!(c->trace_flags & 1))
		return; // not sampled
	struct grpc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(GRPC_EVENTS_LOST);
		return;
	}
	e->start_ns = c->start_ns;
	e->end_ns = bpf_ktime_get_ns();
	__builtin_memcpy(e->trace_id, c->trace_id, 16);
	__builtin_memcpy(e->span_id, c->span_id, 8);
	__builtin_memcpy(e->parent_id, c->parent_id, 8);
	__builtin_memcpy(e->local_ip, c->local_ip, 16);
	__builtin_memcpy(e->peer_ip, c->peer_ip, 16);
	__builtin_memcpy(e->method, c->method, GRPC_METHOD_MAX);
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->method_len = c->method_len;
	e->stream_id = c->stream_id;
	e->code = code;
	e->local_port = c->local_port;
	e->peer_port = c->peer_port;
	e->kind = kind;
	e->trace_flags = c->trace_flags;
	e->joined = joined;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	long flags = 0;
	if (wakeup_bytes)
		flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
										 : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

// The code of a *status.Status (OK for nil, or a nil proto).
static __always_inline __s32 status_code(struct grpc_proc *p, __u64 st)
{
	if (!st)
		return 0;
	__u64 proto = read_u64(st + p->status_proto);
	return proto ? (__s32)read_u32(proto + p->proto_code) : 0;
}

// (*http2Client).write(t, s *ClientStream, hdr, data, opts) entry, on the
// caller's goroutine: RBX s, whose id is set. A stream's later writes
// (streaming calls) find their call recorded and return.
static __always_inline int on_client_write(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct grpc_proc *p = proc_of(pid_tgid);
	if (!p)
		return 0;
	__u64 cs = GO_ARG2(ctx);
	if (!cs)
		return 0;
	bool is_go;
	__u64 goid = current_go_id(pid_tgid >> 32, &is_go);
	if (!goid)
		return 0;
	struct grpc_call_key k = {.tgid = pid_tgid >> 32, .id = goid};
	struct grpc_call *old = bpf_map_lookup_elem(&grpc_client_calls, &k);
	if (old && old->stream == cs)
		return 0;
	struct thread_ctx *parent = current_ctx(pid_tgid, &goid);
	struct grpc_call *c = scratch();
	if (!c)
		return 0;
	c->start_ns = bpf_ktime_get_ns();
	c->stream = cs;
	read_stream(p, cs + p->client_stream, c);
	__u64 ct = read_u64(cs + p->client_ct);
	if (ct) {
		read_addr(p, ct + p->client_local, c->local_ip, &c->local_port);
		read_addr(p, ct + p->client_remote, c->peer_ip, &c->peer_port);
	}
	if (parent) {
		__builtin_memcpy(c->trace_id, parent->trace_id, 16);
		__builtin_memcpy(c->parent_id, parent->span_id, 8);
		c->trace_flags = parent->trace_flags;
	} else {
		random_id(c->trace_id, 4);
		c->trace_flags = 0x03; // sampled, random trace id
	}
	random_id(c->span_id, 2);
	struct grpc_join_key jk = {.stream_id = c->stream_id, .client_port = c->local_port, .server_port = c->peer_port};
	__builtin_memcpy(jk.client_ip, c->local_ip, 16);
	__builtin_memcpy(jk.server_ip, c->peer_ip, 16);
	struct grpc_parent jp = {.trace_flags = c->trace_flags};
	__builtin_memcpy(jp.trace_id, c->trace_id, 16);
	__builtin_memcpy(jp.span_id, c->span_id, 8);
	bpf_map_update_elem(&grpc_joins, &jk, &jp, BPF_ANY);
	bpf_map_update_elem(&grpc_client_calls, &k, c, BPF_ANY);
	return 0;
}

// (*clientStream).finish(cs, err error) entry: RAX cs, RBX:RCX err (itab,
// data).
static __always_inline int on_finish(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct grpc_proc *p = proc_of(pid_tgid);
	if (!p)
		return 0;
	bool is_go;
	__u64 goid = current_go_id(pid_tgid >> 32, &is_go);
	struct grpc_call_key k = {.tgid = pid_tgid >> 32, .id = goid};
	struct grpc_call *c = bpf_map_lookup_elem(&grpc_client_calls, &k);
	if (!goid || !c)
		return 0;
	__u64 itab = GO_ARG2(ctx), data = GO_ARG3(ctx);
	__s32 code = 0;
	// io.EOF is an error interface: its data word is the second.
	if (itab && !(p->io_eof && data == read_u64(p->io_eof + 8))) {
		code = 2; // UNKNOWN: not a status error, or its type unknown
		if (p->status_error_itab && itab == p->status_error_itab) {
			__u64 st = read_u64(data + p->error_status);
			if (st)
				code = status_code(p, st);
		}
	}
	emit(c, KIND_CLIENT, code, 0, pid_tgid);
	bpf_map_delete_elem(&grpc_client_calls, &k);
	return 0;
}

// Server side: makes c, a stream read by a server, the child of the CLIENT
// span a traced client recorded for it (the reversed tuple, the same stream
// id). Returns whether there was one.
static __always_inline bool join(struct grpc_call *c)
{
	struct grpc_join_key jk = {.stream_id = c->stream_id, .client_port = c->peer_port, .server_port = c->local_port};
	__builtin_memcpy(jk.client_ip, c->peer_ip, 16);
	__builtin_memcpy(jk.server_ip, c->local_ip, 16);
	struct grpc_parent *jp = bpf_map_lookup_elem(&grpc_joins, &jk);
	if (!jp)
		return false;
	__builtin_memcpy(c->trace_id, jp->trace_id, 16);
	__builtin_memcpy(c->parent_id, jp->span_id, 8);
	c->trace_flags = jp->trace_flags;
	return true;
}

// (*Server).handleStream(s, t ServerTransport, stream *ServerStream) entry,
// on the stream's goroutine: RAX s, RBX:RCX t, RDI stream.
static __always_inline int on_handle_stream(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct grpc_proc *p = proc_of(pid_tgid);
	if (!p)
		return 0;
	__u64 stream = GO_ARG4(ctx);
	__u64 t = GO_ARG3(ctx);
	if (!stream || !t)
		return 0;
	if (p->server_transport_itab && GO_ARG2(ctx) != p->server_transport_itab)
		return 0; // not an http2Server (ServeHTTP's handler transport)
	bool is_go;
	__u64 goid = current_go_id(pid_tgid >> 32, &is_go);
	struct grpc_call *c = scratch();
	if (!c)
		return 0;
	c->start_ns = bpf_ktime_get_ns();
	c->goid = goid;
	read_stream(p, stream + p->server_stream, c);
	read_addr(p, t + p->server_peer + p->peer_local, c->local_ip, &c->local_port);
	read_addr(p, t + p->server_peer + p->peer_addr, c->peer_ip, &c->peer_port);
	if (!join(c)) {
		random_id(c->trace_id, 4);
		c->trace_flags = 0x03;
	}
	random_id(c->span_id, 2);
	struct grpc_call_key k = {.tgid = pid_tgid >> 32, .id = stream};
	bpf_map_update_elem(&grpc_server_calls, &k, c, BPF_ANY);
	if (goid) {
		// The handler runs on this goroutine: its outgoing calls (and
		// goroutines it starts) are children of this span.
		struct thread_ctx tc = {.trace_flags = c->trace_flags};
		__builtin_memcpy(tc.trace_id, c->trace_id, 16);
		__builtin_memcpy(tc.span_id, c->span_id, 8);
		struct go_key gk = {.tgid = pid_tgid >> 32, .g = goid};
		bpf_map_update_elem(&go_ctxs, &gk, &tc, BPF_ANY);
	}
	return 0;
}

// (*http2Server).writeStatus(t, s *ServerStream, st *status.Status) entry:
// RAX t, RBX s, RCX st.
static __always_inline int on_write_status(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct grpc_proc *p = proc_of(pid_tgid);
	if (!p)
		return 0;
	struct grpc_call_key k = {.tgid = pid_tgid >> 32, .id = GO_ARG2(ctx)};
	struct grpc_call *c = bpf_map_lookup_elem(&grpc_server_calls, &k);
	if (!c)
		return 0;
	__u8 joined = c->parent_id[0] | c->parent_id[1] | c->parent_id[2] | c->parent_id[3] |
		      c->parent_id[4] | c->parent_id[5] | c->parent_id[6] | c->parent_id[7];
	if (!joined) {
		// The client's record may have come after handleStream (its
		// write probe runs just after the headers were queued): the span
		// still joins; what the handler did meanwhile keeps its trace.
		joined = join(c);
	}
	count(joined ? GRPC_JOINED : GRPC_UNJOINED);
	emit(c, KIND_SERVER, status_code(p, GO_ARG3(ctx)), joined != 0, pid_tgid);
	if (c->goid) {
		struct go_key gk = {.tgid = pid_tgid >> 32, .g = c->goid};
		bpf_map_delete_elem(&go_ctxs, &gk);
	}
	bpf_map_delete_elem(&grpc_server_calls, &k);
	return 0;
}

SEC("uprobe.multi")
int gogrpc_client_write(struct pt_regs *ctx) { return on_client_write(ctx); }

SEC("uprobe.multi")
int gogrpc_finish(struct pt_regs *ctx) { return on_finish(ctx); }

SEC("uprobe.multi")
int gogrpc_handle_stream(struct pt_regs *ctx) { return on_handle_stream(ctx); }

SEC("uprobe.multi")
int gogrpc_write_status(struct pt_regs *ctx) { return on_write_status(ctx); }
