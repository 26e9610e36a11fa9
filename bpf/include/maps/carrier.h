// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
#pragma once

// Trace context carried in the packets of a connection whose bytes cannot
// take a header (TLS), issue 14. The sender's httptrace decides the CLIENT
// span of a request written through a TLS library and stores it in
// carrier_out; the carrier (TCP option from sockops, or IPv4 option from TC
// egress) writes it on the connection's data segments. On the receiving
// host the carrier parses it into carrier_in, and httptrace takes it as the
// parent of the SERVER span of the next request it parses on that
// connection when the request has no traceparent header of its own.
//
// Both maps are keyed by the connection as seen from the host that holds
// the entry: local and remote address (IPv4 as v4-mapped IPv6, network
// byte order) and ports (host byte order).

struct carrier_key {
	__u8 local_addr[16];
	__u8 remote_addr[16];
	__u16 local_port;
	__u16 remote_port;
	__u32 _pad;
};

struct carrier_ctx {
	__u8 trace_id[16];
	__u8 span_id[8]; // the sender's CLIENT span: the receiver's parent
	__u8 trace_flags;
	__u8 _pad;
	__u16 seq; // the sender's request number on the connection, from 1;
	           // the receiver takes each seq at most once (keep-alive)
	__u32 _pad2;
};

// Outgoing: the context of the request being sent on a connection.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct carrier_key);
	__type(value, struct carrier_ctx);
} carrier_out SEC(".maps");

// Incoming: the newest context received on a connection, not yet taken.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct carrier_key);
	__type(value, struct carrier_ctx);
} carrier_in SEC(".maps");
