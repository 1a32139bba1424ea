// SPDX-License-Identifier: GPL-2.0
/*
 * klab-hello: call the klab_hello system call added by
 * recipes/patches/0001-kernel-lab-add-klab_hello-syscall.patch.
 *
 * glibc has no wrapper for it, so call it by number with syscall(2).
 * Prints "klab_hello(20) = 41" and exits 0 on a patched kernel; exits 1
 * (with the errno text, e.g. ENOSYS on an unpatched kernel) otherwise.
 *
 * Build: cc -static -O2 -Wall -Werror -o klab-hello klab-hello.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef __NR_klab_hello
#define __NR_klab_hello 463	/* x86_64: next free "common" number after mseal (462) */
#endif

int main(void)
{
	unsigned long arg = 20;
	long expected = (long)(arg * 2 + 1);
	long ret;

	errno = 0;
	ret = syscall(__NR_klab_hello, arg);
	if (ret == -1) {
		int err = errno;

		fprintf(stderr, "klab_hello(%lu) failed: %s (errno %d)%s\n",
			arg, strerror(err), err, err == ENOSYS ?
			": this kernel lacks the klab_hello patch" : "");
		return 1;
	}
	printf("klab_hello(%lu) = %ld\n", arg, ret);
	if (ret != expected) {
		fprintf(stderr, "klab_hello: expected %ld, got %ld\n", expected, ret);
		return 1;
	}
	return 0;
}
