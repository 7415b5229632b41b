/*
 * fpcheck: does the kernel keep each thread's SSE / AVX / AVX-512 registers across context
 * switches?  Built statically by tests/test_uml_fp.py and run inside the UML guest.
 *
 * P processes with T threads each (default 2 x 2) load a pattern of their own into every
 * vector register, make many system calls that let the scheduler switch (sched_yield, and a
 * nanosleep each round), store the registers and compare.  Threads of one process share a host
 * process under UML, so only UML's save and restore of the FP state (PTRACE_GETREGSET /
 * SETREGSET NT_X86_XSTATE) keeps their registers apart: a kernel that saves less than the
 * host's XSAVE area, or nothing, shows here as a mismatch.
 *
 * Usage: fpcheck [processes [threads [rounds]]]
 * Last line: "FPCHECK PASS ..." (exit 0) or "FPCHECK FAIL ..." (exit 1).
 */
#define _GNU_SOURCE
#include <cpuid.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define YIELDS_PER_ROUND 8

static int have_avx, have_avx512;
static int rounds = 200;

static uint64_t xgetbv0(void)
{
	uint32_t lo, hi;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

static void detect(void)
{
	unsigned a, b, c, d;
	__cpuid(1, a, b, c, d);
	int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
	uint64_t xcr0 = osxsave ? xgetbv0() : 0;
	have_avx = avx && (xcr0 & 0x6) == 0x6;
	__cpuid_count(7, 0, a, b, c, d);
	have_avx512 = have_avx && ((b >> 16) & 1) && (xcr0 & 0xe0) == 0xe0;
}

static void fill(unsigned char *p, size_t n, unsigned worker, unsigned round)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(worker * 131 + round * 7 + i * 13 + 1);
}

static const struct timespec nap = { 0, 200000 };	/* 0.2 ms: a real sleep, a timer wakes us */

/* Load, switch many times, store: the registers live across the system calls only. */
static void round_sse(const unsigned char *in, unsigned char *out)
{
	__asm__ volatile(
		"movdqu 0(%0), %%xmm0\n\t movdqu 16(%0), %%xmm1\n\t movdqu 32(%0), %%xmm2\n\t"
		"movdqu 48(%0), %%xmm3\n\t movdqu 64(%0), %%xmm4\n\t movdqu 80(%0), %%xmm5\n\t"
		"movdqu 96(%0), %%xmm6\n\t movdqu 112(%0), %%xmm7\n\t movdqu 128(%0), %%xmm8\n\t"
		"movdqu 144(%0), %%xmm9\n\t movdqu 160(%0), %%xmm10\n\t movdqu 176(%0), %%xmm11\n\t"
		"movdqu 192(%0), %%xmm12\n\t movdqu 208(%0), %%xmm13\n\t movdqu 224(%0), %%xmm14\n\t"
		"movdqu 240(%0), %%xmm15\n\t"
		"mov %3, %%r12\n"
		"1:\n\t mov $24, %%eax\n\t syscall\n\t dec %%r12\n\t jnz 1b\n\t"	/* sched_yield */
		"mov $35, %%eax\n\t mov %2, %%rdi\n\t xor %%esi, %%esi\n\t syscall\n\t"	/* nanosleep */
		"movdqu %%xmm0, 0(%1)\n\t movdqu %%xmm1, 16(%1)\n\t movdqu %%xmm2, 32(%1)\n\t"
		"movdqu %%xmm3, 48(%1)\n\t movdqu %%xmm4, 64(%1)\n\t movdqu %%xmm5, 80(%1)\n\t"
		"movdqu %%xmm6, 96(%1)\n\t movdqu %%xmm7, 112(%1)\n\t movdqu %%xmm8, 128(%1)\n\t"
		"movdqu %%xmm9, 144(%1)\n\t movdqu %%xmm10, 160(%1)\n\t movdqu %%xmm11, 176(%1)\n\t"
		"movdqu %%xmm12, 192(%1)\n\t movdqu %%xmm13, 208(%1)\n\t movdqu %%xmm14, 224(%1)\n\t"
		"movdqu %%xmm15, 240(%1)\n\t"
		:
		: "r"(in), "r"(out), "r"(&nap), "i"(YIELDS_PER_ROUND)
		: "rax", "rcx", "r11", "r12", "rdi", "rsi", "memory", "xmm0", "xmm1", "xmm2", "xmm3",
		  "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
		  "xmm14", "xmm15");
}

__attribute__((target("avx")))
static void round_avx(const unsigned char *in, unsigned char *out)
{
	__asm__ volatile(
		"vmovdqu 0(%0), %%ymm0\n\t vmovdqu 32(%0), %%ymm1\n\t vmovdqu 64(%0), %%ymm2\n\t"
		"vmovdqu 96(%0), %%ymm3\n\t vmovdqu 128(%0), %%ymm4\n\t vmovdqu 160(%0), %%ymm5\n\t"
		"vmovdqu 192(%0), %%ymm6\n\t vmovdqu 224(%0), %%ymm7\n\t vmovdqu 256(%0), %%ymm8\n\t"
		"vmovdqu 288(%0), %%ymm9\n\t vmovdqu 320(%0), %%ymm10\n\t vmovdqu 352(%0), %%ymm11\n\t"
		"vmovdqu 384(%0), %%ymm12\n\t vmovdqu 416(%0), %%ymm13\n\t vmovdqu 448(%0), %%ymm14\n\t"
		"vmovdqu 480(%0), %%ymm15\n\t"
		"mov %3, %%r12\n"
		"1:\n\t mov $24, %%eax\n\t syscall\n\t dec %%r12\n\t jnz 1b\n\t"
		"mov $35, %%eax\n\t mov %2, %%rdi\n\t xor %%esi, %%esi\n\t syscall\n\t"
		"vmovdqu %%ymm0, 0(%1)\n\t vmovdqu %%ymm1, 32(%1)\n\t vmovdqu %%ymm2, 64(%1)\n\t"
		"vmovdqu %%ymm3, 96(%1)\n\t vmovdqu %%ymm4, 128(%1)\n\t vmovdqu %%ymm5, 160(%1)\n\t"
		"vmovdqu %%ymm6, 192(%1)\n\t vmovdqu %%ymm7, 224(%1)\n\t vmovdqu %%ymm8, 256(%1)\n\t"
		"vmovdqu %%ymm9, 288(%1)\n\t vmovdqu %%ymm10, 320(%1)\n\t vmovdqu %%ymm11, 352(%1)\n\t"
		"vmovdqu %%ymm12, 384(%1)\n\t vmovdqu %%ymm13, 416(%1)\n\t vmovdqu %%ymm14, 448(%1)\n\t"
		"vmovdqu %%ymm15, 480(%1)\n\t vzeroupper\n\t"
		:
		: "r"(in), "r"(out), "r"(&nap), "i"(YIELDS_PER_ROUND)
		: "rax", "rcx", "r11", "r12", "rdi", "rsi", "memory", "xmm0", "xmm1", "xmm2", "xmm3",
		  "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
		  "xmm14", "xmm15");
}

/* zmm0-31 (64 bytes each) and the opmask registers k1-k7 (8 bytes each, after the zmm). */
#define Z(n) "vmovdqu64 " #n "*64(%0), %%zmm" #n "\n\t"
#define ZS(n) "vmovdqu64 %%zmm" #n ", " #n "*64(%1)\n\t"
#define K(n) "kmovq 2048+" #n "*8(%0), %%k" #n "\n\t"
#define KS(n) "kmovq %%k" #n ", 2048+" #n "*8(%1)\n\t"
__attribute__((target("avx512f,avx512bw")))
static void round_avx512(const unsigned char *in, unsigned char *out)
{
	__asm__ volatile(
		Z(0) Z(1) Z(2) Z(3) Z(4) Z(5) Z(6) Z(7) Z(8) Z(9) Z(10) Z(11) Z(12) Z(13) Z(14) Z(15)
		Z(16) Z(17) Z(18) Z(19) Z(20) Z(21) Z(22) Z(23) Z(24) Z(25) Z(26) Z(27) Z(28) Z(29)
		Z(30) Z(31) K(1) K(2) K(3) K(4) K(5) K(6) K(7)
		"mov %3, %%r12\n"
		"1:\n\t mov $24, %%eax\n\t syscall\n\t dec %%r12\n\t jnz 1b\n\t"
		"mov $35, %%eax\n\t mov %2, %%rdi\n\t xor %%esi, %%esi\n\t syscall\n\t"
		ZS(0) ZS(1) ZS(2) ZS(3) ZS(4) ZS(5) ZS(6) ZS(7) ZS(8) ZS(9) ZS(10) ZS(11) ZS(12) ZS(13)
		ZS(14) ZS(15) ZS(16) ZS(17) ZS(18) ZS(19) ZS(20) ZS(21) ZS(22) ZS(23) ZS(24) ZS(25)
		ZS(26) ZS(27) ZS(28) ZS(29) ZS(30) ZS(31) KS(1) KS(2) KS(3) KS(4) KS(5) KS(6) KS(7)
		"vzeroupper\n\t"
		:
		: "r"(in), "r"(out), "r"(&nap), "i"(YIELDS_PER_ROUND)
		: "rax", "rcx", "r11", "r12", "rdi", "rsi", "memory", "xmm0", "xmm1", "xmm2", "xmm3",
		  "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
		  "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
		  "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31",
		  "k1", "k2", "k3", "k4", "k5", "k6", "k7");
}

struct kind {
	const char *name;
	size_t bytes;
	void (*run)(const unsigned char *, unsigned char *);
	int *present;
};

static int always = 1;
static struct kind kinds[] = {
	{ "sse", 16 * 16, round_sse, &always },
	{ "avx", 16 * 32, round_avx, &have_avx },
	{ "avx512", 32 * 64 + 8 * 8, round_avx512, &have_avx512 },
};
#define NKINDS (sizeof(kinds) / sizeof(kinds[0]))

struct worker {
	pthread_t thread;
	unsigned id;
	unsigned long checked[NKINDS];
	unsigned long bad;
	char first[200];
};

static void *work(void *arg)
{
	struct worker *w = arg;
	static __thread unsigned char in[2048 + 64], out[2048 + 64];

	for (int r = 0; r < rounds; r++) {
		for (unsigned k = 0; k < NKINDS; k++) {
			if (!*kinds[k].present)
				continue;
			size_t n = kinds[k].bytes;
			fill(in, n, w->id, r);
			memset(out, 0, n);
			kinds[k].run(in, out);
			for (size_t i = 0; i < n; i++) {
				/* k0 is neither loaded nor stored (EVEX's "no mask"): skip its slot */
				if (kinds[k].run == round_avx512 && i >= 2048 && i < 2048 + 8)
					continue;
				if (in[i] == out[i])
					continue;
				if (!w->bad)
					snprintf(w->first, sizeof(w->first),
						 "worker %u round %d %s byte %zu: wrote %02x read %02x",
						 w->id, r, kinds[k].name, i, in[i], out[i]);
				w->bad++;
				break;
			}
			w->checked[k]++;
		}
	}
	return NULL;
}

static int run_process(unsigned pindex, unsigned threads)
{
	struct worker *ws = calloc(threads, sizeof(*ws));
	unsigned long bad = 0;

	for (unsigned t = 0; t < threads; t++) {
		ws[t].id = pindex * threads + t;
		if (pthread_create(&ws[t].thread, NULL, work, &ws[t])) {
			perror("fpcheck: pthread_create");
			return 2;
		}
	}
	for (unsigned t = 0; t < threads; t++) {
		pthread_join(ws[t].thread, NULL);
		bad += ws[t].bad;
		if (ws[t].bad)
			printf("fpcheck: mismatch: %s (%lu bad rounds)\n", ws[t].first, ws[t].bad);
	}
	printf("fpcheck: process %u: %u threads, %d rounds, %lu bad\n", pindex, threads, rounds,
	       bad);
	fflush(stdout);
	return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
	unsigned procs = argc > 1 ? (unsigned)atoi(argv[1]) : 2;
	unsigned threads = argc > 2 ? (unsigned)atoi(argv[2]) : 2;
	rounds = argc > 3 ? atoi(argv[3]) : rounds;
	int failed = 0;

	if (procs < 1 || threads < 1 || rounds < 1) {
		fprintf(stderr, "usage: fpcheck [processes [threads [rounds]]]\n");
		return 2;
	}
	detect();
	printf("fpcheck: registers checked: sse%s%s\n", have_avx ? " avx" : "",
	       have_avx512 ? " avx512 (zmm0-31, k1-7)" : "");
	fflush(stdout);
	for (unsigned p = 0; p < procs; p++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("fpcheck: fork");
			return 2;
		}
		if (pid == 0)
			_exit(run_process(p, threads));
	}
	for (unsigned p = 0; p < procs; p++) {
		int st;
		if (wait(&st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
			failed = 1;
	}
	printf("FPCHECK %s: %u processes x %u threads x %d rounds, kinds sse%s%s\n",
	       failed ? "FAIL" : "PASS", procs, threads, rounds, have_avx ? "+avx" : "",
	       have_avx512 ? "+avx512" : "");
	return failed;
}
