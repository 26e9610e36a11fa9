// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// Types shared by tc.c and, through bpf2go -type, its Go loader.
#pragma once

// The IPv4 option that carries a trace context (28 bytes, right after the
// 20-byte base header; IHL becomes 12):
//
//   0     type 0x9e: copied flag set, class 0, number 30 (RFC 4727
//         experiment value), so every fragment keeps it
//   1     length 28
//   2-3   big endian: trace flags bits 0-1 in bits 15-14, request seq
//         modulo 16384 in bits 13-0
//   4-19  trace id
//   20-27 span id (the sender's CLIENT span)
#define IPOPT_CARRIER_TYPE 0x9e
#define IPOPT_CARRIER_LEN 28
#define IPOPT_SEQ_MASK 0x3fff

enum tc_counter {
	TC_WRITTEN = 0,      // packets given the option on egress
	TC_PARSED = 1,       // packets whose option was read on ingress
	TC_NO_ROOM = 2,      // packets that should have carried it but went out unchanged:
	                     // IP options already there, over the MTU, BIG TCP, or the kernel
	                     // refused to grow the packet
	TC_STRIPPED = 3,     // options removed on ingress after reading them
	TC_STRIP_FAILED = 4, // options read but left in the packet (the kernel refused)
	TC_COUNTER_MAX = 5,
};

// What egress last wrote on a connection: the request seq and the TCP
// sequence number of the first segment that carried it (its
// retransmissions carry it again).
struct tc_sent {
	__u32 tcp_seq;
	__u16 seq;
	__u16 _pad;
};
