//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// tcpopt: the default packet-level carrier of the trace context of TLS
// requests (issue 14). A sockops program on the cgroup v2 root writes the
// context httptrace stored in carrier_out as a TCP header option on the
// first segments of each request, and parses it on the receiving side into
// carrier_in, where httptrace takes it as the parent of the SERVER span.
//
// Who pays: connections opened by traced processes get the write callbacks
// (set at connect, in the caller's context). Every accepted connection gets
// the parse callback for *unknown* options only (the peer may be a traced
// process on another host; which connection will carry the option is not
// known at accept): a segment without an unknown option costs nothing, and
// an untraced neighbour pays one sockops run per connection.

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "tcpopt.h"
#include "maps/traced_pids.h"
#include "maps/carrier.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10
#define TCPHDR_SYN 0x02

// Knob: data segments that carry one request's context (retransmitted or
// out-of-order first segments are covered by the next ones).
volatile const __u16 max_segments = 4;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TCPOPT_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tcpopt_counters SEC(".maps");

// Sending side: how far carrier_out's entry of a connection was sent.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct carrier_key);
	__type(value, struct tcpopt_tx);
} tcpopt_tx_state SEC(".maps");

// Receiving side: the span ids received on a connection, numbered.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct carrier_key);
	__type(value, struct tcpopt_rx);
} tcpopt_rx_state SEC(".maps");

const enum tcpopt_counter *unused_tcpopt_counter __attribute__((unused));
const struct tcpopt_carrier *unused_tcpopt_carrier __attribute__((unused));

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&tcpopt_counters, &which);
	if (v)
		*v += 1;
}

// The connection's key as carrier.h defines it, from this host's view.
static __always_inline bool key_of(struct bpf_sock_ops *skops, struct carrier_key *k)
{
	__builtin_memset(k, 0, sizeof(*k));
	if (skops->family == AF_INET) {
		__u32 l = skops->local_ip4, r = skops->remote_ip4;
		k->local_addr[10] = k->local_addr[11] = 0xff;
		k->remote_addr[10] = k->remote_addr[11] = 0xff;
		__builtin_memcpy(k->local_addr + 12, &l, 4);
		__builtin_memcpy(k->remote_addr + 12, &r, 4);
	} else if (skops->family == AF_INET6) {
		// One 4-byte load per word: the context allows no wider ones.
#pragma unroll
		for (int i = 0; i < 4; i++) {
			__u32 l = *(volatile __u32 *)&skops->local_ip6[i];
			__u32 r = *(volatile __u32 *)&skops->remote_ip6[i];
			__builtin_memcpy(k->local_addr + 4 * i, &l, 4);
			__builtin_memcpy(k->remote_addr + 4 * i, &r, 4);
		}
	} else {
		return false;
	}
	k->local_port = (__u16)skops->local_port;
	// remote_port: network order, in the upper 16 bits since 5.10 (the
	// lower ones before).
	__u32 rp = skops->remote_port;
	k->remote_port = bpf_ntohs((__u16)(rp >> 16 ? rp >> 16 : rp));
	return true;
}

// The entry of carrier_out still to be written on this connection, if any.
static __always_inline struct carrier_ctx *pending(struct carrier_key *k, struct tcpopt_tx **tx)
{
	struct carrier_ctx *v = bpf_map_lookup_elem(&carrier_out, k);
	if (!v)
		return 0;
	*tx = bpf_map_lookup_elem(&tcpopt_tx_state, k);
	if (*tx && (*tx)->seq == v->seq && (*tx)->segs >= max_segments)
		return 0;
	return v;
}

static __always_inline int hdr_opt_len(struct bpf_sock_ops *skops)
{
	if (skops->skb_tcp_flags & TCPHDR_SYN)
		return 1;
	// A segment without payload (pure ACK, FIN): the context goes with
	// data only. skb_len is the payload here (the header is not pushed
	// yet); no skb at all (flags 0) is the MSS computation.
	if (!skops->skb_len && skops->skb_tcp_flags)
		return 1;
	struct carrier_key k;
	struct tcpopt_tx *tx = 0;
	if (!key_of(skops, &k) || !pending(&k, &tx))
		return 1;
	// Also when the MSS is computed (no skb): segments are sized with
	// the option's room taken.
	if (bpf_reserve_hdr_opt(skops, TCPOPT_LEN, 0) && skops->skb_len)
		count(TCPOPT_NO_ROOM);
	return 1;
}

static __always_inline int write_hdr_opt(struct bpf_sock_ops *skops)
{
	if (skops->skb_tcp_flags & TCPHDR_SYN)
		return 1;
	struct carrier_key k;
	struct tcpopt_tx *tx = 0;
	if (!key_of(skops, &k))
		return 1;
	struct carrier_ctx *v = pending(&k, &tx);
	if (!v)
		return 1;
	struct tcpopt_carrier opt = {.kind = TCPOPT_KIND, .len = TCPOPT_LEN};
	__u16 exid = TCPOPT_EXID | ((v->trace_flags & 1) ? TCPOPT_EXID_SAMPLED : 0);
	opt.exid = bpf_htons(exid);
	__builtin_memcpy(opt.trace_id, v->trace_id, sizeof(opt.trace_id));
	__builtin_memcpy(opt.span_id, v->span_id, sizeof(opt.span_id));
	__u16 seq = v->seq;
	if (bpf_store_hdr_opt(skops, &opt, sizeof(opt), 0)) {
		count(TCPOPT_NO_ROOM);
		return 1;
	}
	count(TCPOPT_WRITTEN);
	if (tx && tx->seq == seq) {
		tx->segs++;
	} else {
		struct tcpopt_tx n = {.seq = seq, .segs = 1};
		bpf_map_update_elem(&tcpopt_tx_state, &k, &n, BPF_ANY);
	}
	return 1;
}

// bpf_load_hdr_opt finds an option of kind 253 (or 254) by its ExID: the
// search gives kind, 4 (kind, length, ExID) and the ExID.
static __always_inline long load_opt(struct bpf_sock_ops *skops, struct tcpopt_carrier *opt,
				     __u16 exid)
{
	opt->kind = TCPOPT_KIND;
	opt->len = 4;
	opt->exid = bpf_htons(exid);
	return bpf_load_hdr_opt(skops, opt, sizeof(*opt), 0);
}

static __always_inline int parse_hdr_opt(struct bpf_sock_ops *skops)
{
	struct tcpopt_carrier opt = {};
	long n = load_opt(skops, &opt, TCPOPT_EXID | TCPOPT_EXID_SAMPLED);
	if (n < 0)
		n = load_opt(skops, &opt, TCPOPT_EXID);
	if (n < 0)
		return 1; // not ours: another unknown option
	if (n != TCPOPT_LEN || opt.len != TCPOPT_LEN) {
		count(TCPOPT_FOREIGN);
		return 1;
	}
	struct carrier_key k;
	if (!key_of(skops, &k))
		return 1;
	count(TCPOPT_PARSED);
	struct tcpopt_rx *rx = bpf_map_lookup_elem(&tcpopt_rx_state, &k);
	__u16 seq = 1;
	if (rx) {
		__u64 old, now;
		__builtin_memcpy(&old, rx->span_id, sizeof(old));
		__builtin_memcpy(&now, opt.span_id, sizeof(now));
		if (old == now)
			return 1; // a later segment of the same request
		seq = rx->seq + 1;
		if (!seq)
			seq = 1;
		rx->seq = seq;
		__builtin_memcpy(rx->span_id, opt.span_id, sizeof(rx->span_id));
	} else {
		struct tcpopt_rx nrx = {.seq = 1};
		__builtin_memcpy(nrx.span_id, opt.span_id, sizeof(nrx.span_id));
		bpf_map_update_elem(&tcpopt_rx_state, &k, &nrx, BPF_ANY);
	}
	struct carrier_ctx v = {.seq = seq, .trace_flags = (bpf_ntohs(opt.exid) & TCPOPT_EXID_SAMPLED) ? 1 : 0};
	__builtin_memcpy(v.trace_id, opt.trace_id, sizeof(v.trace_id));
	__builtin_memcpy(v.span_id, opt.span_id, sizeof(v.span_id));
	bpf_map_update_elem(&carrier_in, &k, &v, BPF_ANY);
	return 1;
}

SEC("sockops")
int tcpopt_sockops(struct bpf_sock_ops *skops)
{
	struct carrier_key k;
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		// connect() runs in the caller's context: the pid is the owner's.
		__u32 tgid = bpf_get_current_pid_tgid() >> 32;
		if (!bpf_map_lookup_elem(&traced_pids, &tgid))
			return 1;
		// A new connection on a 4-tuple used before: nothing of the
		// old one is sent on it.
		if (key_of(skops, &k)) {
			bpf_map_delete_elem(&carrier_out, &k);
			bpf_map_delete_elem(&tcpopt_tx_state, &k);
		}
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG);
		return 1;
	}
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (key_of(skops, &k)) {
			bpf_map_delete_elem(&carrier_in, &k);
			bpf_map_delete_elem(&tcpopt_rx_state, &k);
		}
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags |
							 BPF_SOCK_OPS_PARSE_UNKNOWN_HDR_OPT_CB_FLAG);
		return 1;
	case BPF_SOCK_OPS_HDR_OPT_LEN_CB:
		return hdr_opt_len(skops);
	case BPF_SOCK_OPS_WRITE_HDR_OPT_CB:
		return write_hdr_opt(skops);
	case BPF_SOCK_OPS_PARSE_HDR_OPT_CB:
		return parse_hdr_opt(skops);
	}
	return 1;
}
