/* Bulk TCP for the side-by-side bench, the same static binary in the UML and the QEMU guest.
 *
 *   tcpbulk send IP PORT BYTES   connect and write BYTES in 64 KiB writes, then close
 *   tcpbulk recv PORT            accept one connection, read it to EOF in 64 KiB reads,
 *                                print the byte count
 *
 * busybox nc copies 1 KiB per read and write: 16 MiB is 32 768 system calls, and in UML each
 * is a ptrace round trip, so that workload measures UML's system calls more than the NIC.
 * 64 KiB writes (iperf's order of size) let TCP hand the device 64 KiB TSO frames.
 * The stream sent is a 64 KiB block repeated, block[i] = i % 251, for the host to check.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK 65536

static unsigned char buf[CHUNK];

static int die(const char *what)
{
	perror(what);
	return 1;
}

static int do_send(const char *ip, int port, long long bytes)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int s, i;

	if (inet_pton(AF_INET, ip, &a.sin_addr) != 1)
		return die("address");
	for (i = 0; i < CHUNK; i++)
		buf[i] = i % 251;
	s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0)
		return die("connect");
	while (bytes > 0) {
		size_t want = bytes < CHUNK ? (size_t)bytes : CHUNK;
		size_t off = 0;

		while (off < want) {
			ssize_t n = write(s, buf + off, want - off);

			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return die("write");
			off += n;
		}
		bytes -= want;
	}
	close(s);
	return 0;
}

static int do_recv(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	long long total = 0;
	int one = 1, l, s;

	l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0)
		return die("socket");
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0)
		return die("listen");
	s = accept(l, NULL, NULL);
	if (s < 0)
		return die("accept");
	for (;;) {
		ssize_t n = read(s, buf, CHUNK);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return die("read");
		if (n == 0)
			break;
		total += n;
	}
	close(s);
	close(l);
	printf("%lld\n", total);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "send"))
		return do_send(argv[2], atoi(argv[3]), atoll(argv[4]));
	if (argc == 3 && !strcmp(argv[1], "recv"))
		return do_recv(atoi(argv[2]));
	fprintf(stderr, "usage: tcpbulk send IP PORT BYTES | tcpbulk recv PORT\n");
	return 2;
}
