// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Types shared by ctxprop.c and, through bpf2go -type, its Go loader.
#pragma once

#define SCAN_SIZE 16384 // header block bytes searched for its end, over all writes
#define SCAN_MASK (SCAN_SIZE - 1)
#define SCAN_PAD 64
#define SCAN_LOOPS 8192 // bpf_loop iterations: one per line or per 64 bytes of a line
#define TP_HEADER_LEN 70 // "traceparent: 00-<32>-<16>-<2>\r\n"
#define TS_PREFIX_LEN 12 // "tracestate: "
#define HDR_MAX 640      // traceparent + "tracestate: <512>\r\n", rounded up
#define NAME_LEN 12      // bytes of a header line compared with the names

enum prop_counter {
	PROP_INJECTED = 0,         // traceparent headers injected
	PROP_APP_HEADER = 1,       // request already had a traceparent: left alone
	PROP_HEADERS_TOO_LONG = 2, // no header block end within SCAN_SIZE: not injected
	PROP_PUSH_FAILED = 3,      // the kernel refused to grow the message
	PROP_TRACESTATE = 4,       // tracestate headers injected with a traceparent
	PROP_SPLIT = 5,            // injected into a header block written in several writes
	PROP_UNMERGED = 6,         // injected, but the message could not be made one piece again
	PROP_PIPELINED_SKIPPED = 7, // a request after another in one write left untouched (see
	                            // next_request)
	PROP_COUNTER_MAX = 8,
};

// Per-connection state of an outgoing request whose header block is being
// written (socket local storage).
struct prop_conn {
	__u8 trace_id[16];
	__u8 span_id[8];   // the CLIENT span id decided at the request line
	__u64 server_span; // the SERVER span served: key of tracestates
	__u64 hdr_bytes;   // bytes of the block seen in earlier writes
	__u8 carry[16];    // start of a header line cut by the end of a write
	__u8 in_headers;   // between a request line and the end of its block
	__u8 mid_line;     // the last write ended inside a line
	__u8 carry_len;    // bytes in carry while the line's name is undecided
	__u8 carry_open;   // carry holds a line start shorter than NAME_LEN
	__u8 app_tp;       // the block has the application's own traceparent
	__u8 app_ts;       // ... its own tracestate
	__u8 trace_flags;
	__u8 _pad[1];
};
