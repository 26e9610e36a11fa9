// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Types shared by tcpopt.c and, through bpf2go -type, its Go loader.
#pragma once

// The option: RFC 6994 shared experimental kind 253, 28 bytes, the budget
// left by the timestamps option (40 - 12):
//   kind (1) = 253 | length (1) = 28 | ExID (2, big endian) |
//   trace_id (16) | span_id (8)
// The ExID's last bit is the sampled flag: 0x7c00 not sampled, 0x7c01
// sampled (two unregistered ExIDs). No room for a request number: the
// receiver numbers the distinct span ids it sees on a connection.
#define TCPOPT_KIND 253
#define TCPOPT_LEN 28
#define TCPOPT_EXID 0x7c00
#define TCPOPT_EXID_SAMPLED 0x0001

struct tcpopt_carrier {
	__u8 kind;
	__u8 len;
	__u16 exid; // network byte order
	__u8 trace_id[16];
	__u8 span_id[8];
};

enum tcpopt_counter {
	TCPOPT_WRITTEN = 0,  // options written on outgoing segments
	TCPOPT_PARSED = 1,   // options of ours parsed on incoming segments
	TCPOPT_NO_ROOM = 2,  // segments that went out without the option: no space left
	TCPOPT_FOREIGN = 3,  // kind 253 options that were not ours (our ExID, another length)
	TCPOPT_COUNTER_MAX = 4,
};

// What was sent of carrier_out's entry on a connection.
struct tcpopt_tx {
	__u16 seq;  // carrier_out.seq being sent
	__u16 segs; // segments that carried it
	__u32 _pad;
};

// What was received on a connection.
struct tcpopt_rx {
	__u8 span_id[8]; // the newest span id received
	__u16 seq;       // how many distinct span ids were received
	__u8 _pad[6];
};
