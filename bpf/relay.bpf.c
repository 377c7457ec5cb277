// SPDX-License-Identifier: GPL-2.0 OR MIT
//
// turnd's kernel fast path: ChannelData relayed in XDP.
//
// User space is the authority. A worker installs an entry only after its own checks
// (authentication, peer policy, permission, channel binding) and keeps its expiry in step with
// the permission, the channel and the allocation; this program relays only what an entry
// names, only before that expiry, and passes everything else up to the socket path unchanged.
//
// - CHANNELS: ChannelData from a client's 5-tuple on a bound channel leaves as UDP from the
//   allocation's relayed address to the peer.
// - PEERS: UDP from a peer to a relayed address leaves as ChannelData to the client.
// - A channel whose peer is another allocation of this server (a PEERS entry keyed by that
//   relayed address) goes straight to that allocation's client as ChannelData.
//
// Addresses are 16 bytes, IPv4 as IPv4-mapped IPv6; ports and channel numbers in network
// order, as they sit in the packet.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

struct in6_key {
	__u8 addr[16];
};

struct chan_key {
	__u8 client[16];
	__u8 server[16];
	__u16 client_port;
	__u16 server_port;
	__u16 channel;
	__u16 pad;
};

struct chan_val {
	__u8 relay[16];
	__u8 peer[16];
	__u16 relay_port;
	__u16 peer_port;
	__u32 slot;
	__u64 expires;
};

struct peer_key {
	__u8 relay[16];
	__u8 peer[16];
	__u16 relay_port;
	__u16 peer_port;
	__u32 pad;
};

struct peer_val {
	__u8 client[16];
	__u8 server[16];
	__u16 client_port;
	__u16 server_port;
	__u16 channel;
	__u16 pad;
	__u32 slot;
	__u32 pad2;
	__u64 expires;
};

// Per allocation (slot given by user space), per CPU.
struct slot_counters {
	__u64 packets_to_peer;
	__u64 bytes_to_peer;
	__u64 packets_from_peer;
	__u64 bytes_from_peer;
};

// Indexes of STATS: what the program did, per CPU.
enum {
	ST_TO_PEER = 0,     // ChannelData relayed to a peer as UDP
	ST_FROM_PEER = 1,   // UDP relayed to a client as ChannelData
	ST_LOCAL = 2,       // ChannelData relayed to another allocation's client
	ST_PASS_EXPIRED = 3,
	ST_PASS_CHECKSUM = 4,
	ST_PASS_FRAGMENT = 5, // fragments and IPv4 options
	ST_PASS_ROUTE = 6,  // no route, no neighbour yet, another interface, over the MTU
	ST_PASS_MALFORMED = 7,
	ST_PASS_NO_ENTRY = 8, // UDP no entry names (STUN, Send/Data, unknown channels)
	ST_MAX = 9,
};

#define MAX_ENTRIES 65536
#define MAX_SLOTS 65536

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct chan_key);
	__type(value, struct chan_val);
} CHANNELS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct peer_key);
	__type(value, struct peer_val);
} PEERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SLOTS);
	__type(key, __u32);
	__type(value, struct slot_counters);
} SLOTS SEC(".maps");

// The previous hop of each address the program has relayed for: the source MAC of the
// frames that brought its packets. Used to send to it when the kernel's FIB cannot answer
// (forwarding is off on the interface, as on a host that is not a router).
struct neigh {
	__u8 mac[6];
	__u16 pad;
	__u32 ifindex;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 2 * MAX_ENTRIES);
	__type(key, struct in6_key);
	__type(value, struct neigh);
} NEIGH SEC(".maps");

// Each interface the program is attached to, written by user space: its MTU, and whether
// to send with bpf_redirect back to itself rather than XDP_TX. A veth's XDP_TX frames wait
// in its peer's ring until something else wakes the peer, unless the peer runs an XDP
// program too; a redirect flushes them at the end of the poll.
struct iface {
	__u32 mtu;
	__u32 redirect;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct iface);
} IFACES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ST_MAX);
	__type(key, __u32);
	__type(value, __u64);
} STATS SEC(".maps");

static __always_inline void count(__u32 what)
{
	__u64 *v = bpf_map_lookup_elem(&STATS, &what);
	if (v)
		*v += 1;
}

static __always_inline int pass(__u32 why)
{
	count(why);
	return XDP_PASS;
}

static __always_inline int is_v4(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;
	return w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff);
}

static __always_inline void set_mapped(__u8 *dst, __be32 v4)
{
	__u32 *w = (__u32 *)dst;
	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0xffff);
	w[3] = v4;
}

static __always_inline void copy16(__u8 *dst, const __u8 *src)
{
	__u32 *d = (__u32 *)dst;
	const __u32 *s = (const __u32 *)src;
	d[0] = s[0];
	d[1] = s[1];
	d[2] = s[2];
	d[3] = s[3];
}

static __always_inline __u32 fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u32)sum;
}

// The one's complement sum of the pseudo-header of a UDP datagram of `len` bytes.
static __always_inline __u64 pseudo_sum(const __u8 *src, const __u8 *dst, __u16 len)
{
	if (is_v4(src)) {
		struct {
			__be32 s;
			__be32 d;
			__u8 zero;
			__u8 proto;
			__be16 len;
		} ph = { ((const __u32 *)src)[3], ((const __u32 *)dst)[3], 0, IPPROTO_UDP,
			 bpf_htons(len) };
		return (__u32)bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	}
	struct {
		__u8 s[16];
		__u8 d[16];
		__be32 len;
		__u8 zero[3];
		__u8 next;
	} ph = {};
	copy16(ph.s, src);
	copy16(ph.d, dst);
	ph.len = bpf_htonl(len);
	ph.next = IPPROTO_UDP;
	return (__u32)bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
}

#define MAX_DATA 1472
#define CHUNK 64

// The one's complement sum of `len` bytes at `off` from the frame's start (off even).
// Returns -1 when the bytes are not all inside the frame.
static __always_inline __s64 data_sum(struct xdp_md *ctx, __u32 off, __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u64 sum = 0;
	__u32 done = 0;
	if (len > MAX_DATA)
		return -1;
#pragma clang loop unroll(disable)
	for (int i = 0; i < MAX_DATA / CHUNK; i++) {
		if (done + CHUNK > len)
			break;
		__u32 o = (off + done) & 0xfff;
		__u8 *p = data + o;
		if ((void *)(p + CHUNK) > end)
			return -1;
		sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)p, CHUNK, 0);
		done += CHUNK;
	}
	__u32 rest = len - done;
	__u32 o = (off + done) & 0xfff;
	__u8 *p = data + o;
	// What is left is under 64 bytes: 32, 16, 8 and 4 byte pieces, then 0-3 bytes.
	if (rest & 32) {
		if ((void *)(p + 32) > end)
			return -1;
		sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)p, 32, 0);
		o = (o + 32) & 0xfff;
		p = data + o;
	}
	if (rest & 16) {
		if ((void *)(p + 16) > end)
			return -1;
		sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)p, 16, 0);
		o = (o + 16) & 0xfff;
		p = data + o;
	}
	if (rest & 8) {
		if ((void *)(p + 8) > end)
			return -1;
		sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)p, 8, 0);
		o = (o + 8) & 0xfff;
		p = data + o;
	}
	if (rest & 4) {
		if ((void *)(p + 4) > end)
			return -1;
		sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)p, 4, 0);
		o = (o + 4) & 0xfff;
		p = data + o;
	}
	__u32 tail = rest & 3;
	if (tail) {
		__u8 t[4] = {};
		if ((void *)(p + 1) > end)
			return -1;
		t[0] = p[0];
		if (tail > 1) {
			if ((void *)(p + 2) > end)
				return -1;
			t[1] = p[1];
		}
		if (tail > 2) {
			if ((void *)(p + 3) > end)
				return -1;
			t[2] = p[2];
		}
		sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)t, 4, 0);
	}
	return (__s64)fold(sum);
}

// A parsed datagram: addresses, ports and where its UDP payload is.
struct dgram {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u32 payload; // offset of the UDP payload from the frame's start
	__u32 len;     // UDP payload bytes
	__u16 check;   // the UDP checksum field as received
	__u8 tos;
	__u8 v6;
	__u32 ifindex;
};

// The frame to build: where from, where to, and what goes before the data.
struct out {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u16 channel; // network order; 0: plain UDP
	__u16 pad;
	__u32 slot;
	__u32 data;    // offset of the application data in the received frame
	__u32 len;     // application data bytes
	__s64 dsum;    // the data's one's complement sum when already known, else -1
};

static __always_inline int route(struct xdp_md *ctx, struct out *o, __u16 ip_len,
				 struct bpf_fib_lookup *fib)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = ctx->ingress_ifindex;
	fib->l4_protocol = IPPROTO_UDP;
	fib->sport = o->sport;
	fib->dport = o->dport;
	fib->tot_len = ip_len;
	if (is_v4(o->dst)) {
		fib->family = AF_INET;
		fib->ipv4_src = ((__u32 *)o->src)[3];
		fib->ipv4_dst = ((__u32 *)o->dst)[3];
	} else {
		fib->family = AF_INET6;
		copy16((__u8 *)fib->ipv6_src, o->src);
		copy16((__u8 *)fib->ipv6_dst, o->dst);
	}
	__u32 ifindex = ctx->ingress_ifindex;
	struct iface *ifc = bpf_map_lookup_elem(&IFACES, &ifindex);
	if (!ifc || ip_len > ifc->mtu)
		return -1;
	int action = ifc->redirect ? XDP_REDIRECT : XDP_TX;
	int rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		// Out of the interface it came in on only: XDP_TX needs nothing of another
		// driver.
		if (fib->ifindex != ctx->ingress_ifindex)
			return -1;
		return action;
	}
	if (rc != BPF_FIB_LKUP_RET_FWD_DISABLED)
		return -1;
	// Not a router: send to the hop the destination's own packets came from.
	struct in6_key k;
	copy16(k.addr, o->dst);
	struct neigh *n = bpf_map_lookup_elem(&NEIGH, &k);
	if (!n || n->ifindex != ctx->ingress_ifindex)
		return -1;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return -1;
	__builtin_memcpy(fib->dmac, n->mac, ETH_ALEN);
	__builtin_memcpy(fib->smac, eth->h_dest, ETH_ALEN);
	return action;
}

// Remembers the frame's source MAC as the previous hop of its source address.
static __always_inline void learn(struct xdp_md *ctx, const __u8 *src)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return;
	struct in6_key k;
	copy16(k.addr, src);
	struct neigh *n = bpf_map_lookup_elem(&NEIGH, &k);
	if (n && n->ifindex == ctx->ingress_ifindex && n->mac[0] == eth->h_source[0] &&
	    n->mac[1] == eth->h_source[1] && n->mac[2] == eth->h_source[2] &&
	    n->mac[3] == eth->h_source[3] && n->mac[4] == eth->h_source[4] &&
	    n->mac[5] == eth->h_source[5])
		return;
	struct neigh v = { .ifindex = ctx->ingress_ifindex };
	__builtin_memcpy(v.mac, eth->h_source, ETH_ALEN);
	bpf_map_update_elem(&NEIGH, &k, &v, BPF_ANY);
}

// Rewrites the frame into `o` (headers built anew in front of the data) and sends it back
// out of the interface it came in on.
static __always_inline int emit(struct xdp_md *ctx, struct dgram *d, struct out *o)
{
	int out_v4 = is_v4(o->dst);
	__u32 ip_hlen = out_v4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	__u32 chan_len = o->channel ? 4 : 0;
	__u32 udp_len = sizeof(struct udphdr) + chan_len + o->len;
	__u32 hdr = sizeof(struct ethhdr) + ip_hlen + sizeof(struct udphdr) + chan_len;

	struct bpf_fib_lookup fib;
	int action = route(ctx, o, ip_hlen + udp_len, &fib);
	if (action < 0)
		return pass(ST_PASS_ROUTE);

	// The checksum of the new datagram: pseudo-header, UDP header, channel header, data.
	__s64 ds = o->dsum >= 0 ? o->dsum : data_sum(ctx, o->data, o->len);
	if (ds < 0)
		return pass(ST_PASS_MALFORMED);
	__u64 sum = pseudo_sum(o->src, o->dst, udp_len) + (__u64)ds;
	// UDP header words (ports, length; the checksum counts as 0) in memory order.
	{
		struct udphdr u = { o->sport, o->dport, bpf_htons(udp_len), 0 };
		sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)&u, sizeof(u), 0);
	}
	if (o->channel) {
		__u16 ch[2] = { o->channel, bpf_htons(o->len) };
		sum += (__u32)bpf_csum_diff(0, 0, (__be32 *)ch, sizeof(ch), 0);
	}
	__u16 check = ~fold(sum) & 0xffff;
	if (check == 0)
		check = 0xffff;

	// Move the frame's start so the new headers end where the data begins, and cut
	// anything after the data (ChannelData padding, Ethernet padding).
	int delta = (int)o->data - (int)hdr;
	if (bpf_xdp_adjust_head(ctx, delta))
		return pass(ST_PASS_MALFORMED);
	{
		void *data = (void *)(long)ctx->data;
		void *end = (void *)(long)ctx->data_end;
		__u32 want = hdr + o->len;
		__u32 have = end - data;
		if (have > want && bpf_xdp_adjust_tail(ctx, -(int)(have - want)))
			return XDP_DROP; // the head already moved: the frame is no longer whole
	}
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	struct udphdr *udp;
	if (out_v4) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return XDP_DROP;
		eth->h_proto = bpf_htons(ETH_P_IP);
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = d->tos;
		ip->tot_len = bpf_htons(sizeof(struct iphdr) + udp_len);
		ip->id = 0;
		ip->frag_off = bpf_htons(0x4000); // DF, as Linux sets on UDP by default
		ip->ttl = 64;
		ip->protocol = IPPROTO_UDP;
		ip->check = 0;
		ip->saddr = ((__u32 *)o->src)[3];
		ip->daddr = ((__u32 *)o->dst)[3];
		__u64 s = (__u32)bpf_csum_diff(0, 0, (__be32 *)ip, sizeof(*ip), 0);
		ip->check = ~fold(s) & 0xffff;
		udp = (void *)(ip + 1);
	} else {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return XDP_DROP;
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		ip6->version = 6;
		ip6->priority = d->tos >> 4;
		ip6->flow_lbl[0] = (d->tos & 0xf) << 4;
		ip6->flow_lbl[1] = 0;
		ip6->flow_lbl[2] = 0;
		ip6->payload_len = bpf_htons(udp_len);
		ip6->nexthdr = IPPROTO_UDP;
		ip6->hop_limit = 64;
		copy16((__u8 *)&ip6->saddr, o->src);
		copy16((__u8 *)&ip6->daddr, o->dst);
		udp = (void *)(ip6 + 1);
	}
	if ((void *)(udp + 1) > end)
		return XDP_DROP;
	udp->source = o->sport;
	udp->dest = o->dport;
	udp->len = bpf_htons(udp_len);
	udp->check = check;
	if (o->channel) {
		__u16 *ch = (void *)(udp + 1);
		if ((void *)(ch + 2) > end)
			return XDP_DROP;
		ch[0] = o->channel;
		ch[1] = bpf_htons(o->len);
	}
	if (action == XDP_REDIRECT)
		return bpf_redirect(ctx->ingress_ifindex, 0);
	return XDP_TX;
}

static __always_inline void add_to_peer(__u32 slot, __u32 bytes)
{
	struct slot_counters *c = bpf_map_lookup_elem(&SLOTS, &slot);
	if (c) {
		c->packets_to_peer += 1;
		c->bytes_to_peer += bytes;
	}
}

static __always_inline void add_from_peer(__u32 slot, __u32 bytes)
{
	struct slot_counters *c = bpf_map_lookup_elem(&SLOTS, &slot);
	if (c) {
		c->packets_from_peer += 1;
		c->bytes_from_peer += bytes;
	}
}

// Parses Ethernet, IPv4 without options or IPv6 without extension headers, and UDP.
// 1: a UDP datagram in `d`; 0: not one (pass uncounted); <0: pass with that reason.
static __always_inline int parse(struct xdp_md *ctx, struct dgram *d)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return 0;
	struct udphdr *udp;
	__u32 ip_payload;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end)
			return 0;
		if (ip->protocol != IPPROTO_UDP)
			return 0;
		if (ip->ihl != 5 || (ip->frag_off & bpf_htons(0x3fff)))
			return -ST_PASS_FRAGMENT;
		__u32 tot = bpf_ntohs(ip->tot_len);
		if (tot < sizeof(*ip) + sizeof(*udp) || (void *)ip + tot > end)
			return -ST_PASS_MALFORMED;
		ip_payload = tot - sizeof(*ip);
		set_mapped(d->src, ip->saddr);
		set_mapped(d->dst, ip->daddr);
		d->tos = ip->tos;
		d->v6 = 0;
		udp = (void *)(ip + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return 0;
		if (ip6->nexthdr != IPPROTO_UDP)
			return 0; // extension headers (fragments among them) go up
		ip_payload = bpf_ntohs(ip6->payload_len);
		if (ip_payload < sizeof(*udp) || (void *)(ip6 + 1) + ip_payload > end)
			return -ST_PASS_MALFORMED;
		copy16(d->src, (__u8 *)&ip6->saddr);
		copy16(d->dst, (__u8 *)&ip6->daddr);
		d->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
		d->v6 = 1;
		udp = (void *)(ip6 + 1);
	} else {
		return 0;
	}
	if ((void *)(udp + 1) > end)
		return -ST_PASS_MALFORMED;
	__u32 ulen = bpf_ntohs(udp->len);
	if (ulen != ip_payload)
		return -ST_PASS_MALFORMED;
	d->sport = udp->source;
	d->dport = udp->dest;
	d->check = udp->check;
	d->payload = (void *)(udp + 1) - data;
	d->len = ulen - sizeof(*udp);
	return 1;
}

// Whether the received datagram's UDP checksum is right (IPv4 may carry none), given the
// sum of its payload from `head` bytes in (`rest`; the first `head` bytes, even in number,
// are summed here). The payload is summed once: what is relayed reuses `rest`.
static __always_inline int checksum_ok(struct xdp_md *ctx, struct dgram *d, __u32 head,
				       __s64 rest)
{
	if (d->check == 0)
		return !d->v6;
	if (rest < 0)
		return 0;
	__s64 h = data_sum(ctx, d->payload - sizeof(struct udphdr), sizeof(struct udphdr) + head);
	if (h < 0)
		return 0;
	__u64 sum = pseudo_sum(d->src, d->dst, d->len + sizeof(struct udphdr)) + (__u64)h +
		    (__u64)rest;
	return fold(sum) == 0xffff;
}

SEC("xdp")
int turnd_relay(struct xdp_md *ctx)
{
	struct dgram d = {};
	int r = parse(ctx, &d);
	if (r == 0)
		return XDP_PASS;
	if (r < 0)
		return pass(-r);
	__u64 now = bpf_ktime_get_ns();
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct out o = {};

	// ChannelData from a client: 0x4000-0x4FFF (RFC 8656 §12) and, as turnd grants them
	// unless server.strict-channel-numbers, RFC 5766's 0x4000-0x7FFF (coturn's uclient
	// picks from all of it). Only numbers user space bound are in the map anyway.
	if (d.len >= 4) {
		__u8 *p = data + (d.payload & 0xfff);
		if ((void *)(p + 4) > end)
			return pass(ST_PASS_MALFORMED);
		if ((p[0] & 0xc0) == 0x40) {
			struct chan_key k = {};
			copy16(k.client, d.src);
			copy16(k.server, d.dst);
			k.client_port = d.sport;
			k.server_port = d.dport;
			k.channel = *(__u16 *)p;
			struct chan_val *c = bpf_map_lookup_elem(&CHANNELS, &k);
			if (c) {
				__u32 n = ((__u32)p[2] << 8) | p[3];
				// Over UDP the data may be followed by up to 3 bytes of padding.
				if (n == 0 || n + 4 > d.len || d.len - 4 - n > 3)
					return pass(ST_PASS_MALFORMED);
				if (now >= c->expires)
					return pass(ST_PASS_EXPIRED);
				__u32 pad = d.len - 4 - n;
				__s64 rest = data_sum(ctx, d.payload + 4, n + pad);
				if (!checksum_ok(ctx, &d, 4, rest))
					return pass(ST_PASS_CHECKSUM);
				learn(ctx, d.src);
				o.data = d.payload + 4;
				o.len = n;
				o.dsum = pad ? -1 : rest;
				// The peer may be another allocation of this server.
				struct peer_key pk = {};
				copy16(pk.relay, c->peer);
				copy16(pk.peer, c->relay);
				pk.relay_port = c->peer_port;
				pk.peer_port = c->relay_port;
				struct peer_val *pv = bpf_map_lookup_elem(&PEERS, &pk);
				if (pv && now < pv->expires) {
					copy16(o.src, pv->server);
					copy16(o.dst, pv->client);
					o.sport = pv->server_port;
					o.dport = pv->client_port;
					o.channel = pv->channel;
					__u32 from_slot = c->slot, to_slot = pv->slot;
					int act = emit(ctx, &d, &o);
					if (act == XDP_TX || act == XDP_REDIRECT) {
						add_to_peer(from_slot, n);
						add_from_peer(to_slot, n);
						count(ST_LOCAL);
					}
					return act;
				}
				copy16(o.src, c->relay);
				copy16(o.dst, c->peer);
				o.sport = c->relay_port;
				o.dport = c->peer_port;
				o.channel = 0;
				__u32 slot = c->slot;
				int act = emit(ctx, &d, &o);
				if (act == XDP_TX || act == XDP_REDIRECT) {
					add_to_peer(slot, n);
					count(ST_TO_PEER);
				}
				return act;
			}
		}
	}

	// UDP from a peer to a relayed address.
	struct peer_key pk = {};
	copy16(pk.relay, d.dst);
	copy16(pk.peer, d.src);
	pk.relay_port = d.dport;
	pk.peer_port = d.sport;
	struct peer_val *pv = bpf_map_lookup_elem(&PEERS, &pk);
	if (!pv)
		return pass(ST_PASS_NO_ENTRY);
	if (d.len == 0)
		return pass(ST_PASS_MALFORMED);
	if (now >= pv->expires)
		return pass(ST_PASS_EXPIRED);
	__s64 rest = data_sum(ctx, d.payload, d.len);
	if (!checksum_ok(ctx, &d, 0, rest))
		return pass(ST_PASS_CHECKSUM);
	learn(ctx, d.src);
	copy16(o.src, pv->server);
	copy16(o.dst, pv->client);
	o.sport = pv->server_port;
	o.dport = pv->client_port;
	o.channel = pv->channel;
	o.data = d.payload;
	o.len = d.len;
	o.dsum = rest;
	__u32 slot = pv->slot;
	int act = emit(ctx, &d, &o);
	if (act == XDP_TX || act == XDP_REDIRECT) {
		add_from_peer(slot, d.len);
		count(ST_FROM_PEER);
	}
	return act;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
