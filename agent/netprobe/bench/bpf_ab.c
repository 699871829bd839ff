// SPDX-License-Identifier: Apache-2.0
/*
 * A/B harness for the network probe objects (docs/bench/network.md): a loopback
 * connect/accept loop (or, with BULK=1, a bulk transfer of N MiB) run with no object
 * attached ("off") and with each given object attached in turn, the order alternating
 * every round. Reports per object the median process CPU per connection (ratio to the
 * first argument) and the median BPF run time per connection of each of its programs
 * (run_time_ns deltas; run-time stats are enabled with BPF_ENABLE_STATS for the run).
 * The programs are node-wide: other traffic on the machine is included.
 *
 * NOSTATS=1 leaves run-time stats off: CPU ratios without their clock reads, run times 0.
 *
 * Build and run (root; libbpf-dev):
 *   gcc -O2 -Wall -o /tmp/bpf_ab agent/netprobe/bench/bpf_ab.c -lbpf -lpthread
 *   clang-19 -target bpf -D__TARGET_ARCH_x86 -O2 -Iebpf/include \
 *     -I/usr/include/x86_64-linux-gnu -c agent/netprobe/bench/empty.bpf.c -o /tmp/empty.bpf.o
 *   git show <old commit>:ebpf/objects/net.bpf.o > /tmp/old.bpf.o
 *   nice -n -19 /tmp/bpf_ab 12 5000 off /tmp/empty.bpf.o /tmp/old.bpf.o ebpf/objects/net.bpf.o
 * The objects are loaded with libbpf and their default map sizes and tunables.
 */
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAXP 16
#define MAXR 64
#define MAXO 8

static int lfd;
static int nconn;
static int cgfd = -1;

static void *accept_loop(void *a)
{
	(void)a;
	for (int i = 0; i < nconn; i++) {
		int c = accept(lfd, 0, 0);
		if (c >= 0)
			close(c);
	}
	return 0;
}

static void *drain(void *a)
{
	static char buf[1 << 20];
	int c = accept(lfd, 0, 0);
	(void)a;
	while (c >= 0 && read(c, buf, sizeof buf) > 0)
		;
	if (c >= 0)
		close(c);
	return 0;
}

static struct sockaddr_in listen_lo(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
	socklen_t l = sizeof(a);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || bind(lfd, (void *)&a, sizeof(a)) || listen(lfd, 128) ||
	    getsockname(lfd, (void *)&a, &l)) {
		perror("listen");
		exit(1);
	}
	return a;
}

/* n sequential connections: connect, the server accepts and closes, wait for EOF. */
static void connect_loop(int n)
{
	struct sockaddr_in a = listen_lo();
	pthread_t t;
	char b;
	nconn = n;
	pthread_create(&t, 0, accept_loop, 0);
	for (int i = 0; i < n; i++) {
		int s = socket(AF_INET, SOCK_STREAM, 0);
		if (s < 0 || connect(s, (void *)&a, sizeof(a))) {
			perror("connect");
			exit(1);
		}
		if (read(s, &b, 1) < 0)
			perror("read");
		close(s);
	}
	pthread_join(t, 0);
	close(lfd);
}

static void bulk(int mib)
{
	static char buf[1 << 20];
	struct sockaddr_in a = listen_lo();
	pthread_t t;
	pthread_create(&t, 0, drain, 0);
	int s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (void *)&a, sizeof(a))) {
		perror("connect");
		exit(1);
	}
	for (int i = 0; i < mib; i++) {
		size_t o = 0;
		while (o < sizeof buf) {
			ssize_t w = write(s, buf + o, sizeof buf - o);
			if (w <= 0) {
				perror("write");
				exit(1);
			}
			o += (size_t)w;
		}
	}
	close(s);
	pthread_join(t, 0);
	close(lfd);
}

static double cpu_secs(void)
{
	struct rusage r;
	getrusage(RUSAGE_SELF, &r);
	return r.ru_utime.tv_sec + r.ru_utime.tv_usec / 1e6 + r.ru_stime.tv_sec +
	       r.ru_stime.tv_usec / 1e6;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
	qsort(v, n, sizeof(double), cmp);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* run_time_ns of every program of `o`, in object order; returns the count. */
static int snap(struct bpf_object *o, __u64 *rt, char names[][32])
{
	struct bpf_program *p;
	int i = 0;
	if (!o)
		return 0;
	bpf_object__for_each_program(p, o)
	{
		struct bpf_prog_info in;
		__u32 len = sizeof(in);
		if (i == MAXP)
			break;
		memset(&in, 0, sizeof(in));
		bpf_obj_get_info_by_fd(bpf_program__fd(p), &in, &len);
		rt[i] = in.run_time_ns;
		snprintf(names[i], 32, "%s", bpf_program__name(p));
		i++;
	}
	return i;
}

static double cpu_per[MAXO][MAXR], bpf_per[MAXO][MAXR], prog_per[MAXO][MAXP][MAXR];
static char pname[MAXO][MAXP][32];
static int nprog[MAXO];

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s ROUNDS N off|OBJ... (BULK=1: N MiB bulk instead of N connects)\n",
			argv[0]);
		return 2;
	}
	int rounds = atoi(argv[1]), n = atoi(argv[2]), nobj = argc - 3;
	int is_bulk = getenv("BULK") != NULL;
	if (rounds < 1 || rounds > MAXR || n < 1 || nobj > MAXO) {
		fprintf(stderr, "rounds 1..%d, n >= 1, at most %d objects\n", MAXR, MAXO);
		return 2;
	}
	libbpf_set_print(NULL);
	/* NOSTATS=1: no run-time stats (they add two clock reads per program run and
	 * inflate the CPU ratios); the BPF run times then read 0. */
	if (!getenv("NOSTATS") && bpf_enable_stats(BPF_STATS_RUN_TIME) < 0)
		fprintf(stderr, "BPF_ENABLE_STATS failed: run times will read 0\n");
	connect_loop(2000); /* warm-up */
	for (int r = 0; r < rounds; r++) {
		for (int k0 = 0; k0 < nobj; k0++) {
			int k = (r % 2) ? nobj - 1 - k0 : k0;
			struct bpf_object *o = 0;
			struct bpf_link *links[MAXP];
			struct bpf_program *p;
			int nl = 0;
			__u64 rt0[MAXP] = {0}, rt1[MAXP] = {0};
			if (strcmp(argv[3 + k], "off")) {
				o = bpf_object__open_file(argv[3 + k], 0);
				if (!o || bpf_object__load(o)) {
					fprintf(stderr, "loading %s failed\n", argv[3 + k]);
					return 1;
				}
				bpf_object__for_each_program(p, o)
				{
					enum bpf_prog_type t = bpf_program__type(p);
					if (nl < MAXP && (t == BPF_PROG_TYPE_CGROUP_SKB ||
							  t == BPF_PROG_TYPE_CGROUP_SOCK ||
							  t == BPF_PROG_TYPE_SOCK_OPS)) {
						/* Cgroup programs: on the cgroup2 root (CGROUP=... to
						 * override), like the agent attaches them. */
						if (cgfd < 0)
							cgfd = open(getenv("CGROUP") ? getenv("CGROUP")
										     : "/sys/fs/cgroup/unified",
								    O_RDONLY);
						links[nl] = bpf_program__attach_cgroup(p, cgfd);
						if (!links[nl]) {
							fprintf(stderr, "attaching %s to the cgroup failed\n",
								bpf_program__name(p));
							return 1;
						}
						nl++;
						continue;
					}
					if (nl == MAXP || !(links[nl] = bpf_program__attach(p))) {
						fprintf(stderr, "attaching %s failed\n", bpf_program__name(p));
						return 1;
					}
					nl++;
				}
			}
			connect_loop(300);
			nprog[k] = snap(o, rt0, pname[k]);
			double c0 = cpu_secs();
			if (is_bulk)
				bulk(n);
			else
				connect_loop(n);
			double c1 = cpu_secs();
			snap(o, rt1, pname[k]);
			cpu_per[k][r] = (c1 - c0) / n * 1e9;
			bpf_per[k][r] = 0;
			for (int i = 0; i < nprog[k]; i++) {
				prog_per[k][i][r] = (double)(rt1[i] - rt0[i]) / n;
				bpf_per[k][r] += prog_per[k][i][r];
			}
			for (int i = 0; i < nl; i++)
				bpf_link__destroy(links[i]);
			bpf_object__close(o);
		}
	}
	const char *unit = is_bulk ? "MiB" : "connection";
	double base = 0;
	for (int k = 0; k < nobj; k++) {
		double m = median(cpu_per[k], rounds);
		if (k == 0)
			base = m;
		printf("%-28s CPU/%s median %8.0f ns (ratio to first %.4f)  BPF run time/%s median %6.0f ns\n",
		       argv[3 + k], unit, m, m / base, unit, median(bpf_per[k], rounds));
		for (int i = 0; i < nprog[k]; i++) {
			double pm = median(prog_per[k][i], rounds);
			if (pm >= 0.5)
				printf("    %-20s %6.0f ns/%s\n", pname[k][i], pm, unit);
		}
	}
	return 0;
}
