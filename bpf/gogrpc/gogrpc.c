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

// ---------------------------------------------------------------------------
// HTTP/2 over cleartext (h2c) in Go's own HTTP/2: the standard library's
// bundled copy (net/http.(*http2serverConn)...) and golang.org/x/net/http2
// ((*serverConn)...), told apart by the attach cookie (0 bundled, 1 x/net),
// which picks that copy's offsets. Entry probes only, on the stack check's
// JBE:
//
//   server: (*serverConn).runHandler entry  -> span starts on the handler's
//                                              goroutine; parent = the client
//                                              span recorded for the stream
//           (*responseWriter).handlerDone entry -> span ends, status from the
//                                              responseWriterState
//   client: (*clientStream).encodeAndWriteHeaders entry -> span starts, on
//                                              the request's goroutine (a
//                                              child of the caller's), parent
//                                              = the goroutine's context
//           (*ClientConn).writeHeaders entry -> the stream id is known: the
//                                              client records its span for
//                                              the (4-tuple, stream id)
//           (*clientConnReadLoop).handleResponse entry -> span ends with the
//                                              :status of the response headers
//                                              (1xx responses are skipped)
//
// A server span joins a traced client's trace through grpc_joins, as gRPC's
// do; else it takes the request's traceparent header when the header map
// is a small Go map (up to 8 entries: one group, scanned slot by slot; a
// larger map is hashed, which a BPF program cannot do); else it starts its
// own trace.

#define H2_COPIES 2
#define H2_PATH_MAX 128
#define H2_QUERY_MAX 64
#define H2_HOST_MAX 64
#define H2_METHOD_MAX 16

// One copy's struct offsets.
struct h2_copy {
	__u32 sc_conn; // serverConn.conn (net.Conn)
	__u32 rw_rws; // responseWriter.rws (*responseWriterState)
	__u32 rws_stream; // responseWriterState.stream (*stream)
	__u32 rws_status; // responseWriterState.status (int)
	__u32 stream_id; // stream.id (uint32)
	__u32 cs_cc; // clientStream.cc (*ClientConn)
	__u32 cc_tconn; // ClientConn.tconn (net.Conn)
	__u32 mhf_fields; // MetaHeadersFrame.Fields ([]hpack.HeaderField)
	__u32 hf_value; // hpack.HeaderField.Value (Name is at 0)
	__u32 ok; // offsets known
};

// What the h2 programs read in one process: tgid -> offsets.
struct h2_proc {
	__u64 tcp_conn_itab; // run-time *net.TCPConn net.Conn itab, 0: unknown
	struct h2_copy copies[H2_COPIES];
	__u32 req_method; // net/http.Request.Method (string)
	__u32 req_url; // .URL (*url.URL)
	__u32 req_host; // .Host (string)
	__u32 req_uri; // .RequestURI (string)
	__u32 url_path; // net/url.URL.Path (string)
	__u32 url_query; // .RawQuery (string)
	__u32 url_host; // .Host (string)
	__u32 conn_fd; // net.conn.fd (*netFD; TCPConn embeds conn at 0)
	__u32 fd_laddr; // net.netFD.laddr (net.Addr)
	__u32 fd_raddr; // .raddr
	__u32 tcp_ip; // net.TCPAddr.IP
	__u32 tcp_port; // .Port
	__u32 req_header; // net/http.Request.Header (a map: *maps.Map)
	__u32 map_dir_ptr; // internal/runtime/maps.Map.dirPtr
	__u32 map_dir_len; // .dirLen (0: a small map, dirPtr its one group)
	__u32 map_ok; // the map offsets are known (Go 1.24 maps and later)
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct h2_proc);
} h2_procs SEC(".maps");

// A group of a map[string][]string: 8 control bytes, then 8 slots of key
// (string, 16 bytes) and value ([]string, 24 bytes).
#define H2_GROUP_SLOTS 8
#define H2_SLOT_SIZE 40
#define H2_SLOT_ELEM 16
#define TRACEPARENT_LEN 55

struct h2_call {
	__u64 start_ns;
	__u64 cs; // client: the *clientStream
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_id[8];
	__u8 local_ip[16];
	__u8 peer_ip[16];
	__u8 method[H2_METHOD_MAX];
	__u8 path[H2_PATH_MAX];
	__u8 query[H2_QUERY_MAX];
	__u8 host[H2_HOST_MAX];
	__u32 path_len;
	__u32 query_len;
	__u32 host_len;
	__u32 stream_id;
	__u16 local_port;
	__u16 peer_port;
	__u8 method_len;
	__u8 trace_flags;
	__u8 joined;
	__u8 _pad[1];
};

// Calls in progress: servers by goroutine, clients by goroutine until the
// stream id is known, then by *clientStream (the response is read by the
// connection's read loop goroutine).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct grpc_call_key);
	__type(value, struct h2_call);
} h2_server_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct grpc_call_key);
	__type(value, struct h2_call);
} h2_client_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct h2_call);
} h2_scratch SEC(".maps");

// One record per finished HTTP/2 request, in httptrace's ring buffer (told
// apart by its size).
struct h2_event {
	__u64 start_ns;
	__u64 end_ns;
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_id[8];
	__u8 local_ip[16];
	__u8 peer_ip[16];
	__u8 method[H2_METHOD_MAX];
	__u8 path[H2_PATH_MAX];
	__u8 query[H2_QUERY_MAX];
	__u8 host[H2_HOST_MAX];
	__u32 pid;
	__u32 tid;
	__u32 path_len;
	__u32 query_len;
	__u32 host_len;
	__u32 stream_id;
	__s32 status;
	__u16 local_port;
	__u16 peer_port;
	__u8 method_len;
	__u8 kind;
	__u8 trace_flags;
	__u8 joined;
	__u8 _pad[4];
};

const struct h2_event *unused_h2_event __attribute__((unused));
const struct h2_proc *unused_h2_proc __attribute__((unused));

static __always_inline struct h2_proc *h2_proc_of(__u64 pid_tgid)
{
	if (return_at_once)
		return 0;
	__u32 tgid = pid_tgid >> 32;
	if (!bpf_map_lookup_elem(&traced_pids, &tgid))
		return 0;
	return bpf_map_lookup_elem(&h2_procs, &tgid);
}

static __always_inline struct h2_copy *h2_copy_of(struct h2_proc *p, struct pt_regs *ctx)
{
	__u64 i = bpf_get_attach_cookie(ctx);
	if (i >= H2_COPIES)
		return 0;
	struct h2_copy *c = &p->copies[i];
	return c->ok ? c : 0;
}

// Reads the Go string at addr (pointer, length) into dst of size max;
// returns the length kept.
#define H2_READ_STR(dst, max, addr)                                                                \
	({                                                                                          \
		__u64 _p = read_u64(addr);                                                          \
		__u64 _n = read_u64((addr) + 8);                                                    \
		if (_n > (max))                                                                     \
			_n = (max);                                                                 \
		_n &= (max) * 2 - 1;                                                                \
		if (_p && _n > 0 && _n <= (max))                                                    \
			bpf_probe_read_user(dst, _n, (void *)_p);                                   \
		else                                                                                \
			_n = 0;                                                                     \
		(__u32) _n;                                                                         \
	})

// Reads the addresses of a net.Conn interface at iface (a *net.TCPConn)
// into c: local and peer.
static __always_inline void h2_read_conn(struct h2_proc *p, __u64 iface, struct h2_call *c)
{
	__u64 itab = read_u64(iface);
	if (!itab || (p->tcp_conn_itab && itab != p->tcp_conn_itab))
		return; // not a *net.TCPConn (TLS, a wrapper): no addresses
	__u64 tc = read_u64(iface + 8);
	if (!tc)
		return;
	__u64 fd = read_u64(tc + p->conn_fd);
	if (!fd)
		return;
	struct grpc_proc ap = {.tcp_ip = p->tcp_ip, .tcp_port = p->tcp_port};
	read_addr(&ap, fd + p->fd_laddr, c->local_ip, &c->local_port);
	read_addr(&ap, fd + p->fd_raddr, c->peer_ip, &c->peer_port);
}

static __always_inline struct h2_call *h2_scratch_call(void)
{
	__u32 zero = 0;
	struct h2_call *c = bpf_map_lookup_elem(&h2_scratch, &zero);
	if (c)
		__builtin_memset(c, 0, sizeof(*c));
	return c;
}

static __always_inline void h2_emit(struct h2_call *c, __u8 kind, __s32 status, __u64 pid_tgid)
{
	if (!(c->trace_flags & 1))
		return; // not sampled
	struct h2_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
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
	__builtin_memcpy(e->method, c->method, H2_METHOD_MAX);
	__builtin_memcpy(e->path, c->path, H2_PATH_MAX);
	__builtin_memcpy(e->query, c->query, H2_QUERY_MAX);
	__builtin_memcpy(e->host, c->host, H2_HOST_MAX);
	e->pid = pid_tgid >> 32;
	e->tid = (__u32)pid_tgid;
	e->path_len = c->path_len;
	e->query_len = c->query_len;
	e->host_len = c->host_len;
	e->stream_id = c->stream_id;
	e->status = status;
	e->local_port = c->local_port;
	e->peer_port = c->peer_port;
	e->method_len = c->method_len;
	e->kind = kind;
	e->trace_flags = c->trace_flags;
	e->joined = c->joined;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	long flags = 0;
	if (wakeup_bytes)
		flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
										 : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

// The CLIENT span a traced client recorded for c's stream (the reversed
// tuple, the same stream id), as gRPC's join.
static __always_inline bool h2_join(struct h2_call *c)
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

static __always_inline int hex_val(__u8 ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

// Takes the request's traceparent ("00-<trace id>-<span id>-<flags>") into
// c as its parent, if the header map at hdr is a small map holding one.
static __always_inline bool h2_traceparent(struct h2_proc *p, __u64 hdr, struct h2_call *c)
{
	if (!p->map_ok || !hdr || read_u64(hdr + p->map_dir_len) != 0)
		return false;
	__u64 g = read_u64(hdr + p->map_dir_ptr);
	if (!g)
		return false;
	__u64 ctrl = read_u64(g);
	__u64 val = 0;
	for (int i = 0; i < H2_GROUP_SLOTS; i++) {
		if ((ctrl >> (8 * i)) & 0x80)
			continue; // empty or deleted
		__u64 slot = g + 8 + i * H2_SLOT_SIZE;
		if (read_u64(slot + 8) != 11)
			continue;
		char k[16] = {};
		if (bpf_probe_read_user(k, 11, (void *)read_u64(slot)))
			continue;
		// "Traceparent", the canonical key, as two little-endian words.
		__u64 w0 = *(__u64 *)k, w1 = *(__u64 *)(k + 8);
		if (w0 == 0x7261706563617254ULL && w1 == 0x746e65ULL) {
			val = slot + H2_SLOT_ELEM;
			break;
		}
	}
	if (!val || read_u64(val + 8) < 1)
		return false;
	__u64 sp = read_u64(val); // the first value
	if (read_u64(sp + 8) != TRACEPARENT_LEN)
		return false;
	__u8 b[TRACEPARENT_LEN + 1] = {};
	if (bpf_probe_read_user(b, TRACEPARENT_LEN, (void *)read_u64(sp)))
		return false;
	if (b[0] != '0' || b[1] != '0' || b[2] != '-' || b[35] != '-' || b[52] != '-')
		return false;
	__u8 ids[25];
	__u8 nz_trace = 0, nz_span = 0;
	for (int i = 0; i < 25; i++) {
		int pos = i < 16 ? 3 + 2 * i : (i < 24 ? 36 + 2 * (i - 16) : 53);
		int hi = hex_val(b[pos & 63]), lo = hex_val(b[(pos + 1) & 63]);
		if (hi < 0 || lo < 0)
			return false;
		ids[i] = (__u8)(hi << 4 | lo);
		if (i < 16)
			nz_trace |= ids[i];
		else if (i < 24)
			nz_span |= ids[i];
	}
	if (!nz_trace || !nz_span)
		return false;
	__builtin_memcpy(c->trace_id, ids, 16);
	__builtin_memcpy(c->parent_id, ids + 16, 8);
	c->trace_flags = ids[24] & 0x01;
	return true;
}

// (*serverConn).runHandler(sc, rw *responseWriter, req *Request, handler)
// entry, on the handler's goroutine: RAX sc, RBX rw, RCX req.
static __always_inline int on_h2_run_handler(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct h2_proc *p = h2_proc_of(pid_tgid);
	if (!p)
		return 0;
	struct h2_copy *cp = h2_copy_of(p, ctx);
	if (!cp)
		return 0;
	__u64 sc = GO_ARG1(ctx), rw = GO_ARG2(ctx), req = GO_ARG3(ctx);
	if (!sc || !rw || !req)
		return 0;
	bool is_go;
	__u64 goid = current_go_id(pid_tgid >> 32, &is_go);
	if (!goid)
		return 0;
	struct h2_call *c = h2_scratch_call();
	if (!c)
		return 0;
	c->start_ns = bpf_ktime_get_ns();
	__u64 rws = read_u64(rw + cp->rw_rws);
	__u64 st = rws ? read_u64(rws + cp->rws_stream) : 0;
	if (st)
		c->stream_id = read_u32(st + cp->stream_id);
	c->method_len = H2_READ_STR(c->method, H2_METHOD_MAX, req + p->req_method);
	c->path_len = H2_READ_STR(c->path, H2_PATH_MAX, req + p->req_uri);
	c->host_len = H2_READ_STR(c->host, H2_HOST_MAX, req + p->req_host);
	h2_read_conn(p, sc + cp->sc_conn, c);
	if (h2_join(c)) {
		c->joined = 1;
		count(GRPC_JOINED);
	} else if (h2_traceparent(p, read_u64(req + p->req_header), c)) {
		count(GRPC_UNJOINED);
	} else {
		random_id(c->trace_id, 4);
		c->trace_flags = 0x03; // sampled, random trace id
		count(GRPC_UNJOINED);
	}
	random_id(c->span_id, 2);
	struct grpc_call_key k = {.tgid = pid_tgid >> 32, .id = goid};
	bpf_map_update_elem(&h2_server_calls, &k, c, BPF_ANY);
	// The handler runs on this goroutine: its outgoing requests (and the
	// goroutines it starts) are children of this span.
	struct thread_ctx tc = {.trace_flags = c->trace_flags};
	__builtin_memcpy(tc.trace_id, c->trace_id, 16);
	__builtin_memcpy(tc.span_id, c->span_id, 8);
	struct go_key gk = {.tgid = pid_tgid >> 32, .g = goid};
	bpf_map_update_elem(&go_ctxs, &gk, &tc, BPF_ANY);
	return 0;
}

// (*responseWriter).handlerDone(w) entry, on the handler's goroutine
// (runHandler's deferred function): RAX w. A handler that wrote nothing
// gets 200 from the Flush that follows.
static __always_inline int on_h2_handler_done(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct h2_proc *p = h2_proc_of(pid_tgid);
	if (!p)
		return 0;
	struct h2_copy *cp = h2_copy_of(p, ctx);
	if (!cp)
		return 0;
	bool is_go;
	__u64 goid = current_go_id(pid_tgid >> 32, &is_go);
	if (!goid)
		return 0;
	struct grpc_call_key k = {.tgid = pid_tgid >> 32, .id = goid};
	struct h2_call *c = bpf_map_lookup_elem(&h2_server_calls, &k);
	if (!c)
		return 0;
	__u64 w = GO_ARG1(ctx);
	__u64 rws = w ? read_u64(w + cp->rw_rws) : 0;
	__s32 status = rws ? (__s32)read_u64(rws + cp->rws_status) : 0;
	if (status == 0)
		status = 200;
	h2_emit(c, KIND_SERVER, status, pid_tgid);
	struct go_key gk = {.tgid = pid_tgid >> 32, .g = goid};
	bpf_map_delete_elem(&go_ctxs, &gk);
	bpf_map_delete_elem(&h2_server_calls, &k);
	return 0;
}

// (*clientStream).encodeAndWriteHeaders(cs, req *Request) entry, on the
// request's goroutine (started by RoundTrip): RAX cs, RBX req. The stream
// has no id yet (it is assigned under the connection's lock, later).
static __always_inline int on_h2_encode_headers(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct h2_proc *p = h2_proc_of(pid_tgid);
	if (!p)
		return 0;
	struct h2_copy *cp = h2_copy_of(p, ctx);
	if (!cp)
		return 0;
	__u64 cs = GO_ARG1(ctx), req = GO_ARG2(ctx);
	if (!cs || !req)
		return 0;
	__u64 goid = 0;
	struct thread_ctx *parent = current_ctx(pid_tgid, &goid);
	if (!goid)
		return 0;
	struct h2_call *c = h2_scratch_call();
	if (!c)
		return 0;
	c->start_ns = bpf_ktime_get_ns();
	c->cs = cs;
	c->method_len = H2_READ_STR(c->method, H2_METHOD_MAX, req + p->req_method);
	c->host_len = H2_READ_STR(c->host, H2_HOST_MAX, req + p->req_host);
	__u64 u = read_u64(req + p->req_url);
	if (u) {
		c->path_len = H2_READ_STR(c->path, H2_PATH_MAX, u + p->url_path);
		c->query_len = H2_READ_STR(c->query, H2_QUERY_MAX, u + p->url_query);
		if (!c->host_len)
			c->host_len = H2_READ_STR(c->host, H2_HOST_MAX, u + p->url_host);
	}
	__u64 cc = read_u64(cs + cp->cs_cc);
	if (cc)
		h2_read_conn(p, cc + cp->cc_tconn, c);
	if (parent) {
		__builtin_memcpy(c->trace_id, parent->trace_id, 16);
		__builtin_memcpy(c->parent_id, parent->span_id, 8);
		c->trace_flags = parent->trace_flags;
	} else {
		random_id(c->trace_id, 4);
		c->trace_flags = 0x03;
	}
	random_id(c->span_id, 2);
	struct grpc_call_key k = {.tgid = pid_tgid >> 32, .id = goid};
	bpf_map_update_elem(&h2_client_calls, &k, c, BPF_ANY);
	return 0;
}

// (*ClientConn).writeHeaders(cc, streamID uint32, ...) entry, called by
// encodeAndWriteHeaders on the same goroutine: RBX streamID. The span is
// recorded for the stream (before its HEADERS frame is written) and moves
// to its *clientStream key.
static __always_inline int on_h2_write_headers(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct h2_proc *p = h2_proc_of(pid_tgid);
	if (!p)
		return 0;
	bool is_go;
	__u64 goid = current_go_id(pid_tgid >> 32, &is_go);
	if (!goid)
		return 0;
	struct grpc_call_key k = {.tgid = pid_tgid >> 32, .id = goid};
	struct h2_call *c = bpf_map_lookup_elem(&h2_client_calls, &k);
	if (!c || !c->cs)
		return 0; // also: trailers' HEADERS of a stream already moved
	c->stream_id = (__u32)GO_ARG2(ctx);
	struct grpc_join_key jk = {.stream_id = c->stream_id, .client_port = c->local_port, .server_port = c->peer_port};
	__builtin_memcpy(jk.client_ip, c->local_ip, 16);
	__builtin_memcpy(jk.server_ip, c->peer_ip, 16);
	struct grpc_parent jp = {.trace_flags = c->trace_flags};
	__builtin_memcpy(jp.trace_id, c->trace_id, 16);
	__builtin_memcpy(jp.span_id, c->span_id, 8);
	bpf_map_update_elem(&grpc_joins, &jk, &jp, BPF_ANY);
	struct grpc_call_key ck = {.tgid = pid_tgid >> 32, .id = c->cs};
	bpf_map_update_elem(&h2_client_calls, &ck, c, BPF_ANY);
	bpf_map_delete_elem(&h2_client_calls, &k);
	return 0;
}

// (*clientConnReadLoop).handleResponse(rl, cs *clientStream, f
// *MetaHeadersFrame) entry, on the connection's read loop: RBX cs, RCX f.
// The status is the value of the :status pseudo-header, which comes first.
static __always_inline int on_h2_handle_response(struct pt_regs *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct h2_proc *p = h2_proc_of(pid_tgid);
	if (!p)
		return 0;
	struct h2_copy *cp = h2_copy_of(p, ctx);
	if (!cp)
		return 0;
	__u64 cs = GO_ARG2(ctx), f = GO_ARG3(ctx);
	struct grpc_call_key k = {.tgid = pid_tgid >> 32, .id = cs};
	struct h2_call *c = bpf_map_lookup_elem(&h2_client_calls, &k);
	if (!cs || !f || !c)
		return 0;
	__s32 status = 0;
	__u64 fields = read_u64(f + cp->mhf_fields);
	__u64 n = read_u64(f + cp->mhf_fields + 8);
	if (fields && n > 0) {
		__u64 name = read_u64(fields);
		__u64 nlen = read_u64(fields + 8);
		char nb[8] = {};
		char vb[4] = {};
		if (nlen == 7 && !bpf_probe_read_user(nb, 7, (void *)name) && nb[0] == ':' && nb[1] == 's' &&
		    nb[2] == 't' && nb[6] == 's' && read_u64(fields + cp->hf_value + 8) == 3 &&
		    !bpf_probe_read_user(vb, 3, (void *)read_u64(fields + cp->hf_value))) {
			for (int i = 0; i < 3; i++) {
				if (vb[i] < '0' || vb[i] > '9') {
					status = 0;
					break;
				}
				status = status * 10 + (vb[i] - '0');
			}
		}
	}
	if (status >= 100 && status < 200)
		return 0; // an interim response: the final one follows
	h2_emit(c, KIND_CLIENT, status, pid_tgid);
	bpf_map_delete_elem(&h2_client_calls, &k);
	return 0;
}

SEC("uprobe.multi")
int goh2_run_handler(struct pt_regs *ctx) { return on_h2_run_handler(ctx); }

SEC("uprobe.multi")
int goh2_handler_done(struct pt_regs *ctx) { return on_h2_handler_done(ctx); }

SEC("uprobe.multi")
int goh2_encode_headers(struct pt_regs *ctx) { return on_h2_encode_headers(ctx); }

SEC("uprobe.multi")
int goh2_write_headers(struct pt_regs *ctx) { return on_h2_write_headers(ctx); }

SEC("uprobe.multi")
int goh2_handle_response(struct pt_regs *ctx) { return on_h2_handle_response(ctx); }
