// SPDX-License-Identifier: GPL-2.0
/*
 * klab-echo: talk to /dev/klab (recipes/modules/klab).
 *
 *   klab-echo [TEXT]   write TEXT (default "hello") to /dev/klab, read the
 *                      answer back and print it: "klab: HELLO". Exit 0.
 *   klab-echo --oops   issue KLAB_IOCTL_OOPS: the module dereferences NULL,
 *                      the kernel oopses and this process is killed
 *                      (the shell sees it die by SIGKILL, status 137).
 *
 * Build: cc -static -O2 -Wall -Werror -o klab-echo klab-echo.c
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define KLAB_DEV	"/dev/klab"
#define KLAB_IOCTL_OOPS	_IO('k', 1)	/* must match klab.c */

int main(int argc, char **argv)
{
	const char *msg = argc > 1 ? argv[1] : "hello";
	char answer[512];
	size_t len = strlen(msg);
	ssize_t n;
	int fd;

	fd = open(KLAB_DEV, O_RDWR);
	if (fd < 0) {
		fprintf(stderr, "klab-echo: open %s: %s\n", KLAB_DEV, strerror(errno));
		return 1;
	}

	if (strcmp(msg, "--oops") == 0) {
		printf("klab-echo: asking the kernel to oops\n");
		fflush(stdout);
		if (ioctl(fd, KLAB_IOCTL_OOPS) < 0)
			fprintf(stderr, "klab-echo: ioctl KLAB_IOCTL_OOPS: %s\n",
				strerror(errno));
		else
			fprintf(stderr, "klab-echo: ioctl returned: no oops happened\n");
		return 1;
	}

	n = write(fd, msg, len);
	if (n < 0 || (size_t)n != len) {
		fprintf(stderr, "klab-echo: write: %s\n", n < 0 ? strerror(errno) : "short write");
		return 1;
	}
	n = read(fd, answer, sizeof(answer) - 1);
	if (n < 0) {
		fprintf(stderr, "klab-echo: read: %s\n", strerror(errno));
		return 1;
	}
	answer[n] = '\0';
	printf("%s\n", answer);
	close(fd);
	return 0;
}
