/*
 * floor: the kernel's floor for installing routes, a minimal batched rtnetlink writer.
 *
 * It reads routes in `ip -batch` syntax (the subset the shared route sets use:
 * `route add [blackhole] PREFIX [table N] [metric N] [via GW dev DEV]
 *  [nexthop via GW dev DEV ...]`), builds every RTM_NEWROUTE message before the clock
 * starts, then writes them with as few sendmsg calls as the socket allows: messages
 * packed up to BATCH bytes per call, NLM_F_ACK only on the last one of each call (the
 * kernel reports errors whether asked or not, and handles a call's messages in order),
 * one recv loop per call for its errors and final ACK. Nothing else: no parsing, no
 * bookkeeping, no mirror while the clock runs. route-mirror's copy writer is judged
 * against this rate (bench/copy.sh, BENCHMARKS.md).
 *
 * Runs in the current network namespace (use `ip netns exec NS`).
 *
 * usage: floor [-t TABLE] [-p PROTO] [-b BATCH_BYTES] [-r] FILE|-
 *   -t TABLE   table for every route, overriding the file's (default: the file's, else main)
 *   -p PROTO   rtm_protocol (default 4, static)
 *   -b BYTES   bytes of messages per sendmsg (default 262144)
 *   -r         NLM_F_REPLACE instead of NLM_F_EXCL
 * Prints one JSON line: routes, errors, seconds, rate, sendmsg calls.
 *
 * Build: cc -O2 -o floor bench/floor.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif

static char *out;
static size_t out_len, out_cap;
static size_t *offs; /* start offset of every message */
static size_t n_msgs, offs_cap;

static void die(const char *m) { perror(m); exit(2); }

static void *room(size_t n)
{
	if (out_len + n > out_cap) {
		out_cap = (out_cap ? out_cap * 2 : 1 << 24);
		while (out_len + n > out_cap)
			out_cap *= 2;
		out = realloc(out, out_cap);
		if (!out)
			die("realloc");
	}
	void *p = out + out_len;
	memset(p, 0, n);
	out_len += n;
	return p;
}

/* Appends an attribute to the message at offset `hoff` (room() may move `out`). */
static void attr(size_t hoff, unsigned short type, const void *data, size_t len)
{
	struct rtattr *a = room(RTA_SPACE(len));
	a->rta_type = type;
	a->rta_len = RTA_LENGTH(len);
	memcpy(RTA_DATA(a), data, len);
	((struct nlmsghdr *)(out + hoff))->nlmsg_len += RTA_SPACE(len);
}

static int parse_addr(const char *s, int *family, unsigned char *buf, int *plen)
{
	char tmp[128];
	snprintf(tmp, sizeof(tmp), "%s", s);
	char *slash = strchr(tmp, '/');
	if (slash) {
		*slash = 0;
		*plen = atoi(slash + 1);
	}
	if (inet_pton(AF_INET, tmp, buf) == 1) {
		*family = AF_INET;
		if (!slash)
			*plen = 32;
		return 4;
	}
	if (inet_pton(AF_INET6, tmp, buf) == 1) {
		*family = AF_INET6;
		if (!slash)
			*plen = 128;
		return 16;
	}
	return -1;
}

static unsigned ifindex(const char *name)
{
	unsigned i = if_nametoindex(name);
	if (!i) {
		fprintf(stderr, "floor: no device %s\n", name);
		exit(2);
	}
	return i;
}

/* One `route add ...` line into one RTM_NEWROUTE message. */
static void build(char *line, int table_override, int proto, int replace, uint32_t seq)
{
	char *tok[64];
	int n = 0;
	for (char *t = strtok(line, " \t\n"); t && n < 64; t = strtok(NULL, " \t\n"))
		tok[n++] = t;
	int i = 0;
	if (i < n && !strcmp(tok[i], "route"))
		i++;
	if (i < n && !strcmp(tok[i], "add"))
		i++;
	if (i >= n)
		return;
	if (n_msgs == offs_cap) {
		offs_cap = offs_cap ? offs_cap * 2 : 1 << 20;
		offs = realloc(offs, offs_cap * sizeof(*offs));
		if (!offs)
			die("realloc");
	}
	offs[n_msgs++] = out_len;
	struct nlmsghdr *h = room(NLMSG_SPACE(sizeof(struct rtmsg)));
	h->nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
	h->nlmsg_type = RTM_NEWROUTE;
	h->nlmsg_flags = NLM_F_REQUEST | NLM_F_CREATE | (replace ? NLM_F_REPLACE : NLM_F_EXCL);
	h->nlmsg_seq = seq;
	size_t hoff = (char *)h - out;
#define H ((struct nlmsghdr *)(out + hoff))
#define R ((struct rtmsg *)NLMSG_DATA(H))
	R->rtm_protocol = proto;
	R->rtm_scope = RT_SCOPE_UNIVERSE;
	R->rtm_type = RTN_UNICAST;
	if (!strcmp(tok[i], "blackhole")) {
		R->rtm_type = RTN_BLACKHOLE;
		i++;
	}
	unsigned char a[16];
	int fam, plen, alen = parse_addr(tok[i++], &fam, a, &plen);
	if (alen < 0) {
		fprintf(stderr, "floor: bad prefix\n");
		exit(2);
	}
	R->rtm_family = fam;
	R->rtm_dst_len = plen;
	attr(hoff, RTA_DST, a, alen);
	uint32_t table = RT_TABLE_MAIN, metric = 0;
	int have_metric = 0;
	const char *gw = NULL, *dev = NULL;
	const char *hop_gw[16], *hop_dev[16];
	int hops = 0;
	for (; i < n; i++) {
		if (!strcmp(tok[i], "table") && i + 1 < n)
			table = strtoul(tok[++i], NULL, 10);
		else if (!strcmp(tok[i], "metric") && i + 1 < n)
			metric = strtoul(tok[++i], NULL, 10), have_metric = 1;
		else if (!strcmp(tok[i], "via") && i + 1 < n) {
			if (hops)
				hop_gw[hops - 1] = tok[++i];
			else
				gw = tok[++i];
		} else if (!strcmp(tok[i], "dev") && i + 1 < n) {
			if (hops)
				hop_dev[hops - 1] = tok[++i];
			else
				dev = tok[++i];
		} else if (!strcmp(tok[i], "nexthop") && hops < 16) {
			hop_gw[hops] = hop_dev[hops] = NULL;
			hops++;
		}
	}
	if (table_override >= 0)
		table = table_override;
	R->rtm_table = table < 256 ? table : RT_TABLE_UNSPEC;
	attr(hoff, RTA_TABLE, &table, 4);
	if (have_metric)
		attr(hoff, RTA_PRIORITY, &metric, 4);
	int gfam;
	unsigned char g[16];
	int dummy;
	if (gw) {
		int gl = parse_addr(gw, &gfam, g, &dummy);
		attr(hoff, RTA_GATEWAY, g, gl);
	}
	if (dev) {
		uint32_t oif = ifindex(dev);
		attr(hoff, RTA_OIF, &oif, 4);
	}
	if (hops) {
		unsigned char mp[16 * (sizeof(struct rtnexthop) + RTA_SPACE(16))];
		size_t ml = 0;
		for (int k = 0; k < hops; k++) {
			struct rtnexthop *nh = (struct rtnexthop *)(mp + ml);
			memset(nh, 0, sizeof(*nh));
			nh->rtnh_ifindex = hop_dev[k] ? ifindex(hop_dev[k]) : 0;
			size_t l = sizeof(*nh);
			if (hop_gw[k]) {
				struct rtattr *ra = (struct rtattr *)(mp + ml + l);
				int gl = parse_addr(hop_gw[k], &gfam, g, &dummy);
				ra->rta_type = RTA_GATEWAY;
				ra->rta_len = RTA_LENGTH(gl);
				memcpy(RTA_DATA(ra), g, gl);
				l += RTA_SPACE(gl);
			}
			nh->rtnh_len = l;
			ml += RTNH_ALIGN(l);
		}
		attr(hoff, RTA_MULTIPATH, mp, ml);
	}
#undef H
#undef R
}

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	int table = -1, proto = RTPROT_STATIC, replace = 0, opt;
	size_t batch = 256 * 1024;
	while ((opt = getopt(argc, argv, "t:p:b:r")) != -1) {
		switch (opt) {
		case 't': table = atoi(optarg); break;
		case 'p': proto = atoi(optarg); break;
		case 'b': batch = strtoul(optarg, NULL, 10); break;
		case 'r': replace = 1; break;
		default:
			fprintf(stderr, "usage: floor [-t TABLE] [-p PROTO] [-b BYTES] [-r] FILE|-\n");
			return 2;
		}
	}
	if (optind >= argc) {
		fprintf(stderr, "usage: floor [-t TABLE] [-p PROTO] [-b BYTES] [-r] FILE|-\n");
		return 2;
	}
	FILE *f = strcmp(argv[optind], "-") ? fopen(argv[optind], "r") : stdin;
	if (!f)
		die("open");
	char line[4096];
	uint32_t seq = 1;
	while (fgets(line, sizeof(line), f))
		build(line, table, proto, replace, seq++);

	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		die("socket");
	int big = 64 << 20, one = 1;
	setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &big, sizeof(big));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
	setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
	struct sockaddr_nl sa = { .nl_family = AF_NETLINK };
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("bind");

	static char rbuf[1 << 20];
	size_t errors = 0, calls = 0, m = 0;
	double t0 = now();
	while (m < n_msgs) {
		/* Whole messages up to `batch` bytes (at least one). */
		size_t first = m, start = offs[m];
		while (m < n_msgs) {
			size_t end = m + 1 < n_msgs ? offs[m + 1] : out_len;
			if (m > first && end - start > batch)
				break;
			m++;
		}
		size_t end = m < n_msgs ? offs[m] : out_len;
		struct nlmsghdr *last = (struct nlmsghdr *)(out + offs[m - 1]);
		last->nlmsg_flags |= NLM_F_ACK;
		if (send(fd, out + start, end - start, 0) < 0)
			die("send");
		calls++;
		for (int done = 0; !done;) {
			ssize_t r = recv(fd, rbuf, sizeof(rbuf), 0);
			if (r < 0)
				die("recv");
			for (struct nlmsghdr *h = (struct nlmsghdr *)rbuf; NLMSG_OK(h, r);
			     h = NLMSG_NEXT(h, r)) {
				if (h->nlmsg_type != NLMSG_ERROR)
					continue;
				struct nlmsgerr *e = NLMSG_DATA(h);
				if (e->error)
					errors++;
				if (e->msg.nlmsg_seq == last->nlmsg_seq)
					done = 1;
			}
		}
	}
	double secs = now() - t0;
	printf("{\"routes\": %zu, \"errors\": %zu, \"seconds\": %.3f, \"rate\": %.0f, "
	       "\"sendmsg\": %zu, \"batch_bytes\": %zu}\n",
	       n_msgs, errors, secs, n_msgs / secs, calls, batch);
	return errors ? 1 : 0;
}
