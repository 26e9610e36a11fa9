// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Types shared by httptrace.c and, through bpf2go -type, its Go loader.
#pragma once

#define BUF_SIZE 1024 // request/response prefix copied for parsing
#define BUF_MASK (BUF_SIZE - 1)
#define BUF_PAD 136 // lets fixed-size copies start anywhere in the buffer
#define METHOD_MAX 16
#define PATH_MAX_LEN 128
#define HOST_MAX 64
#define PIPELINE_DEPTH 4 // pipelined requests tracked per connection
#define TRACESTATE_EVENT_MAX 512

enum span_kind {
	KIND_SERVER = 1,
	KIND_CLIENT = 2,
};

enum counter {
	COUNTER_EVENTS_LOST = 0,     // ring buffer full: record dropped
	COUNTER_PIPELINE_FULL = 1,   // more pipelined requests than PIPELINE_DEPTH
	COUNTER_CONN_STATE_FULL = 2, // connection map update failed
	COUNTER_SAMPLED = 3,         // finished span of a sampled context: sent
	COUNTER_UNSAMPLED = 4,       // finished span of an unsampled context: not sent
	COUNTER_HEADERS_TOO_LARGE = 5, // header block over HDR_BLOCK_MAX: rest not scanned
	COUNTER_ASSOC_UNCERTAIN = 6, // outgoing request on a thread serving several requests
	                             // at once: no parent guessed, its own trace
	COUNTER_TLS_HTTP2 = 7,       // HTTP/2 connection preface in TLS plaintext: not parsed
	COUNTER_GO_TLS_NO_FD = 8,    // Go crypto/tls call whose connection is not a *net.TCPConn socket
	COUNTER_MAX = 9,
};

// One finished request, as sent to user space. No implicit padding.
struct http_event {
	__u64 start_ns; // CLOCK_MONOTONIC
	__u64 end_ns;
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_id[8];
	__u8 local_addr[16]; // IPv4 in the first 4 bytes when family is AF_INET
	__u8 peer_addr[16];
	__u32 pid;
	__u32 tid;
	__u16 local_port;
	__u16 peer_port;
	__u16 status;
	__u8 kind;
	__u8 trace_flags;
	__u8 method_len;
	__u8 path_len;
	__u8 host_len;
	__u8 proto_minor;
	__u8 family;
	__u8 tls; // the plaintext of a TLS library call (url.scheme https)
	__u8 _pad[2];
	char method[METHOD_MAX];
	char path[PATH_MAX_LEN];
	char host[HOST_MAX];
};

// The tracestate of a span's context, sent just before the span's
// http_event (told apart by its length). No implicit padding.
struct tracestate_event {
	__u8 span_id[8];
	__u16 len; // bytes in data
	__u8 _pad[6];
	char data[TRACESTATE_EVENT_MAX];
};

struct req_info {
	__u64 start_ns;
	__u64 goroutine; // Go: the goroutine that read the request, else 0
	__u8 trace_id[16];
	__u8 span_id[8];
	__u8 parent_id[8];
	__u32 tid;
	__u8 trace_flags;
	__u8 method_len;
	__u8 path_len;
	__u8 host_len;
	__u8 proto_minor;
	__u8 has_ts; // a tracestate is stored for span_id (tracestates)
	__u8 _pad[6];
	char method[METHOD_MAX];
	char path[PATH_MAX_LEN];
	char host[HOST_MAX];
};

struct conn_key {
	__u32 tgid;
	__u32 fd;
};

struct conn_state {
	__u64 sk; // the struct sock the fd named when the state was made
	__u8 local_addr[16];
	__u8 peer_addr[16];
	__u16 local_port;
	__u16 peer_port;
	__u16 hdr_bytes; // header bytes of srv[hdr_slot] scanned in earlier reads
	__u8 family;
	__u8 srv_head;
	__u8 srv_count;
	__u8 cli_head;
	__u8 cli_count;
	__u8 prefix;       // a 1-byte read (Go's background read) awaiting the rest
	__u8 has_prefix;
	__u8 hdr_pending;  // the header block of srv[hdr_slot] continues in later reads
	__u8 hdr_slot;
	__u8 hdr_mid_line; // the last read ended inside a header line
	__u8 hdr_in_ts;    // ... inside a tracestate line
	__u8 hdr_tp_count; // traceparent headers seen in earlier reads
	__u8 hdr_ts;       // tracestate validation state saved in ts_scans
	__u8 tls;          // seen through TLS library calls: the socket carries ciphertext
	__u16 carrier_seq;   // CLIENT requests given to the packet carrier (carrier_out.seq)
	__u16 carrier_taken; // newest carrier_in.seq taken as a SERVER parent
	struct req_info srv[PIPELINE_DEPTH]; // pending SERVER requests, FIFO
	struct req_info cli[PIPELINE_DEPTH]; // pending CLIENT requests, FIFO
};

// A TLS library call (SSL_read/SSL_write and their _ex forms) in progress
// on a thread, pid_tgid -> call. The socket hooks record the fd the call
// reads or writes; a write whose fd was not known at entry is handled there.
struct tls_call {
	__u64 ssl;  // the SSL *
	__u64 buf;  // plaintext buffer
	__u64 len;  // write: bytes given; read: capacity
	__u64 out;  // SSL_read_ex: size_t *readbytes, else 0
	__u64 sk;   // struct sock of fd, when has_fd
	__u32 fd;
	__u8 has_fd;
	__u8 is_read;
	__u8 _pad[2];
};

// (tgid, SSL *) -> the socket the SSL object was last seen on.
struct tls_key {
	__u64 ssl;
	__u32 tgid;
	__u32 _pad;
};

struct tls_fd {
	// Checked against the fd at use: a stale entry is ignored. The fd
	// number, the struct sock (slab) and the SSL object (malloc) are all
	// reused after a close: the ports tell a new connection from the old.
	__u64 sk;
	__u32 fd;
	__u32 ports; // sk_ports(sk) when recorded
};

// A Go process whose crypto/tls.(*Conn).Read/Write are probed: how to get
// from the *tls.Conn to the socket's fd, and the goroutine's id.
struct go_tls_proc {
	__u64 tcpconn_itab; // run-time address of *net.TCPConn's net.Conn itab, 0: not checked
	__u32 conn_off;     // crypto/tls.Conn.conn (a net.Conn interface)
	__u32 fd_off;       // net.conn.fd (*net.netFD), net.TCPConn embeds net.conn
	__u32 pfd_off;      // net.netFD.pfd (internal/poll.FD)
	__u32 sysfd_off;    // internal/poll.FD.Sysfd
	__u32 goid_off;     // runtime.g.goid
	__u32 _pad;
};

// A crypto/tls.(*Conn).Read in progress, (tgid, goid) -> its buffer and
// socket, until one of its RET instructions.
struct go_tls_read {
	__u64 buf;
	__u64 sk;
	__u32 fd;
	__u32 n; // at the RET (go_tls_ret): the bytes read, at most BUF_SIZE
};
