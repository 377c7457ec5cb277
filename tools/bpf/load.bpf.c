// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// turnd-load's kernel load (`turnd-load --kernel-load IFACE`, `bench/offload.sh
// --kernel-load`): the echo peers and the clients' receiving side of a benchmark, in XDP on
// the tool's interface, so that the load costs a small fraction of what the relay under test
// costs and the machine's CPU is left to the server. (The tool sends the clients' frames
// itself, through a packet socket.)
//
// Relayed UDP to an echo peer (the tool's payload) goes back where it came from with its
// addresses and ports swapped (the UDP checksum does not change); ChannelData to a client
// with the tool's payload is counted, its round-trip time recorded, and dropped. Everything
// else (STUN responses, ARP, IPv6) goes up to the tool's sockets.
//
// IPv4 only: the benchmark's runs are.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// The tool's payload: send time (8 bytes, CLOCK_MONOTONIC ns, native order here), MAGIC
// ("TLD1"), flow id (4 bytes, network order), filler.
#define MAGIC_AT 8
#define MIN_PAYLOAD 16

#define C_RECEIVED 0
#define C_ECHOED 1
#define C_MAX_NS 2
#define C_N 3

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_N);
	__type(key, __u32);
	__type(value, __u64);
} COUNTS SEC(".maps");

// Round-trip times in nanoseconds, log-linear: 32 sub-buckets per power of two, the layout
// of turnd-load's own histogram (hist.rs).
#define SUB_BITS 5
#define BUCKETS ((64 - SUB_BITS) * 32 + 32)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
} HIST SEC(".maps");

static __always_inline void count(__u32 which, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&COUNTS, &which);
	if (c)
		*c += n;
}

static __always_inline __u32 msb(__u64 v)
{
	__u32 r = 0;
	if (v >> 32) {
		v >>= 32;
		r += 32;
	}
	if (v >> 16) {
		v >>= 16;
		r += 16;
	}
	if (v >> 8) {
		v >>= 8;
		r += 8;
	}
	if (v >> 4) {
		v >>= 4;
		r += 4;
	}
	if (v >> 2) {
		v >>= 2;
		r += 2;
	}
	if (v >> 1)
		r += 1;
	return r;
}

static __always_inline __u32 bucket(__u64 v)
{
	if (v < 64)
		return (__u32)v;
	__u32 shift = msb(v) - SUB_BITS;
	__u32 i = (shift << SUB_BITS) + (__u32)(v >> shift);
	return i < BUCKETS ? i : BUCKETS - 1;
}

static __always_inline int magic_at(const __u8 *p)
{
	return p[0] == 'T' && p[1] == 'L' && p[2] == 'D' && p[3] == '1';
}

SEC("xdp")
int turnd_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl != 5 || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *p = (__u8 *)(udp + 1);
	if ((void *)(p + 4 + MIN_PAYLOAD) > end)
		return XDP_PASS;
	// ChannelData to a client: the round trip is over.
	if (p[0] >= 0x40 && p[0] < 0x80 && magic_at(p + 4 + MAGIC_AT)) {
		__u64 sent;
		__builtin_memcpy(&sent, p + 4, 8);
		__u64 now = bpf_ktime_get_ns();
		__u64 rtt = now > sent ? now - sent : 0;
		__u32 b = bucket(rtt);
		__u64 *h = bpf_map_lookup_elem(&HIST, &b);
		if (h)
			*h += 1;
		__u32 k = C_MAX_NS;
		__u64 *max = bpf_map_lookup_elem(&COUNTS, &k);
		if (max && rtt > *max)
			*max = rtt;
		count(C_RECEIVED, 1);
		return XDP_DROP;
	}
	// The relayed payload to an echo peer: back to the relayed address it came from.
	if (magic_at(p + MAGIC_AT)) {
		__u8 mac[ETH_ALEN];
		__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
		__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
		__be32 a = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = a;
		__be16 port = udp->source;
		udp->source = udp->dest;
		udp->dest = port;
		count(C_ECHOED, 1);
		return bpf_redirect(ctx->ingress_ifindex, 0);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
