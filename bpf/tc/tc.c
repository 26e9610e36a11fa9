//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// tc: the IPv4-option carrier of the trace context of TLS requests (issue
// 14). httptrace stores the context of a request being sent on a connection
// in carrier_out; tc_ipopt_out (TC egress) inserts it as a 28-byte IPv4
// option (layout in tc.h) into the first data segment of that request, and
// into retransmissions of that segment. On the receiving host tc_ipopt_in
// (TC ingress) reads the option into carrier_in, keyed from the receiver's
// view, and removes it again unless keep_option is set. Both programs only
// ever return TC_ACT_UNSPEC, which is also TCX_NEXT: the next program of the
// chain (tc filter or tcx link) always runs, and no packet is dropped,
// redirected or delayed. A packet that cannot take the option goes out
// unchanged and is counted.

#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "tc.h"
#include "maps/carrier.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// TC_ACT_UNSPEC for cls_bpf in direct-action mode, TCX_NEXT for tcx links:
// both -1, both "go on with the next program".
#define TC_NEXT (-1)

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

// Set by the loader: leave the option in received packets.
volatile const __u8 keep_option = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TC_COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
} tc_counters SEC(".maps");

// Per connection (sender's view), what egress last wrote.
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct carrier_key);
	__type(value, struct tc_sent);
} tc_sent SEC(".maps");

// The IPv4 header with the option, as written on egress.
struct ipopt_hdr {
	struct iphdr ip;
	__u8 opt[IPOPT_CARRIER_LEN];
};

// Emits the enum into BTF for bpf2go -type.
const enum tc_counter *unused_tc_counter __attribute__((unused));

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&tc_counters, &idx);
	if (v)
		*v += 1;
}

// v4-mapped IPv6, network byte order.
static __always_inline void map_v4(__u8 dst[16], __be32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(&dst[12], &addr, 4);
}

// The IPv4 header checksum of len bytes (a multiple of 4) at hdr, whose
// check field is zero.
static __always_inline __u16 ip_csum(void *hdr, __u32 len)
{
	__s64 s = bpf_csum_diff(0, 0, hdr, len, 0);
	__u64 c = (__u64)s;
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return (__u16)~c;
}

SEC("tc")
int tc_ipopt_out(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_NEXT;
	struct ipopt_hdr h;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &h.ip, sizeof(h.ip)) < 0)
		return TC_NEXT;
	if (h.ip.version != 4 || h.ip.protocol != IPPROTO_TCP ||
	    (h.ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return TC_NEXT;
	__u32 ihl = (__u32)h.ip.ihl * 4;
	if (ihl < sizeof(struct iphdr))
		return TC_NEXT;
	struct tcphdr tcp;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + (ihl & 63), &tcp, sizeof(tcp)) < 0)
		return TC_NEXT;
	__u64 hdrs = ETH_HLEN + ihl + (__u32)tcp.doff * 4;
	if ((__u64)skb->len <= hdrs)
		return TC_NEXT; // no payload: SYN, pure ACK, FIN
	struct carrier_key key = {
		.local_port = bpf_ntohs(tcp.source),
		.remote_port = bpf_ntohs(tcp.dest),
	};
	map_v4(key.local_addr, h.ip.saddr);
	map_v4(key.remote_addr, h.ip.daddr);
	struct carrier_ctx *c = bpf_map_lookup_elem(&carrier_out, &key);
	if (!c)
		return TC_NEXT;
	__u32 tcp_seq = bpf_ntohl(tcp.seq);
	__u16 seq = c->seq;
	struct tc_sent *sent = bpf_map_lookup_elem(&tc_sent, &key);
	if (sent && sent->seq == seq && sent->tcp_seq != tcp_seq)
		return TC_NEXT; // a later segment of a request already carried
	// This segment should carry the context.
	if (ihl == sizeof(h)) {
		__u8 t[2];
		if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(struct iphdr), t, sizeof(t)) == 0 &&
		    t[0] == IPOPT_CARRIER_TYPE && t[1] == IPOPT_CARRIER_LEN)
			return TC_NEXT; // written on an earlier device (a bridge, then its port)
	}
	if (ihl != sizeof(struct iphdr) || h.ip.tot_len == 0) {
		count(TC_NO_ROOM); // options already there, or BIG TCP
		return TC_NEXT;
	}
	if (!skb->gso_size) {
		__u32 mtu_len = 0;
		if (bpf_check_mtu(skb, 0, &mtu_len, IPOPT_CARRIER_LEN, 0) != BPF_MTU_CHK_RET_SUCCESS) {
			count(TC_NO_ROOM);
			return TC_NEXT;
		}
	}
	// GSO packets: the kernel lowers gso_size by the option's length, so
	// every segment still fits the MTU with the option copied into it.
	if (bpf_skb_adjust_room(skb, IPOPT_CARRIER_LEN, BPF_ADJ_ROOM_NET, 0) < 0) {
		count(TC_NO_ROOM);
		return TC_NEXT;
	}
	h.ip.ihl = (sizeof(h)) / 4;
	h.ip.tot_len = bpf_htons(bpf_ntohs(h.ip.tot_len) + IPOPT_CARRIER_LEN);
	h.ip.check = 0;
	h.opt[0] = IPOPT_CARRIER_TYPE;
	h.opt[1] = IPOPT_CARRIER_LEN;
	__u16 fs = (__u16)(((c->trace_flags & 3) << 14) | (seq & IPOPT_SEQ_MASK));
	h.opt[2] = fs >> 8;
	h.opt[3] = fs & 0xff;
	__builtin_memcpy(&h.opt[4], c->trace_id, 16);
	__builtin_memcpy(&h.opt[20], c->span_id, 8);
	h.ip.check = ip_csum(&h, sizeof(h));
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &h, sizeof(h), 0) < 0) {
		// Not reached in practice: the room was just made.
		count(TC_NO_ROOM);
		return TC_NEXT;
	}
	struct tc_sent s = {.tcp_seq = tcp_seq, .seq = seq};
	bpf_map_update_elem(&tc_sent, &key, &s, BPF_ANY);
	count(TC_WRITTEN);
	return TC_NEXT;
}

SEC("tc")
int tc_ipopt_in(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_NEXT;
	struct ipopt_hdr h;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &h, sizeof(h)) < 0)
		return TC_NEXT;
	if (h.ip.version != 4 || h.ip.ihl < sizeof(h) / 4 || h.ip.protocol != IPPROTO_TCP ||
	    h.opt[0] != IPOPT_CARRIER_TYPE || h.opt[1] != IPOPT_CARRIER_LEN)
		return TC_NEXT;
	__u32 ihl = (__u32)h.ip.ihl * 4;
	__be16 ports[2];
	if (bpf_skb_load_bytes(skb, ETH_HLEN + (ihl & 63), ports, sizeof(ports)) < 0)
		return TC_NEXT;
	// The receiver's view: the packet's destination is local.
	struct carrier_key key = {
		.local_port = bpf_ntohs(ports[1]),
		.remote_port = bpf_ntohs(ports[0]),
	};
	map_v4(key.local_addr, h.ip.daddr);
	map_v4(key.remote_addr, h.ip.saddr);
	__u16 fs = ((__u16)h.opt[2] << 8) | h.opt[3];
	struct carrier_ctx c = {
		.trace_flags = (__u8)(fs >> 14),
		.seq = fs & IPOPT_SEQ_MASK,
	};
	__builtin_memcpy(c.trace_id, &h.opt[4], 16);
	__builtin_memcpy(c.span_id, &h.opt[20], 8);
	struct carrier_ctx *old = bpf_map_lookup_elem(&carrier_in, &key);
	// Retransmissions and every segment of a GSO packet repeat it: write
	// a context once.
	__u64 old_span = 0, new_span = 0;
	__builtin_memcpy(&new_span, c.span_id, 8);
	if (old)
		__builtin_memcpy(&old_span, old->span_id, 8);
	if (!old || old->seq != c.seq || old_span != new_span)
		bpf_map_update_elem(&carrier_in, &key, &c, BPF_ANY);
	count(TC_PARSED);
	if (keep_option || ihl != sizeof(h))
		return TC_NEXT;
	if (bpf_skb_adjust_room(skb, -IPOPT_CARRIER_LEN, BPF_ADJ_ROOM_NET, 0) < 0) {
		count(TC_STRIP_FAILED);
		return TC_NEXT;
	}
	h.ip.ihl = sizeof(struct iphdr) / 4;
	if (h.ip.tot_len)
		h.ip.tot_len = bpf_htons(bpf_ntohs(h.ip.tot_len) - IPOPT_CARRIER_LEN);
	h.ip.check = 0;
	h.ip.check = ip_csum(&h.ip, sizeof(h.ip));
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &h.ip, sizeof(h.ip), BPF_F_RECOMPUTE_CSUM) < 0) {
		count(TC_STRIP_FAILED);
		return TC_NEXT;
	}
	count(TC_STRIPPED);
	return TC_NEXT;
}
