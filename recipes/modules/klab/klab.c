// SPDX-License-Identifier: GPL-2.0
/*
 * klab: a small misc character device for kernel-lab exercises.
 *
 *   /dev/klab (mode 0666, so an unprivileged user can use it)
 *   write(2): stores up to KLAB_MAX_MSG bytes (a write replaces the message;
 *             bytes beyond KLAB_MAX_MSG are discarded). One message is shared
 *             by all openers, protected by a mutex, so
 *             `echo hello > /dev/klab; cat /dev/klab` works from a shell.
 *   read(2):  returns "klab: " followed by the stored bytes upper-cased,
 *             e.g. write "hello" -> read "klab: HELLO".
 *   ioctl(KLAB_IOCTL_OOPS): writes through a non-canonical pointer on purpose:
 *             a general protection fault, so the kernel prints "Oops: general
 *             protection fault" and kills the caller (for tests of crash
 *             verdicts; a NULL pointer would print "BUG: kernel NULL pointer
 *             dereference" first, which the boot test calls a bug).
 */
#include <linux/ctype.h>
#include <linux/fs.h>
#include <linux/ioctl.h>
#include <linux/kernel.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/sched.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#define KLAB_MAX_MSG	256
#define KLAB_PREFIX	"klab: "
#define KLAB_IOCTL_OOPS	_IO('k', 1)

static DEFINE_MUTEX(klab_lock);
static char klab_msg[KLAB_MAX_MSG];	/* stored upper-cased */
static size_t klab_len;

static ssize_t klab_read(struct file *file, char __user *buf, size_t count,
			 loff_t *ppos)
{
	char answer[sizeof(KLAB_PREFIX) - 1 + KLAB_MAX_MSG];
	size_t len;
	ssize_t ret;

	mutex_lock(&klab_lock);
	len = sizeof(KLAB_PREFIX) - 1;
	memcpy(answer, KLAB_PREFIX, len);
	memcpy(answer + len, klab_msg, klab_len);
	len += klab_len;
	ret = simple_read_from_buffer(buf, count, ppos, answer, len);
	mutex_unlock(&klab_lock);
	return ret;
}

static ssize_t klab_write(struct file *file, const char __user *buf,
			  size_t count, loff_t *ppos)
{
	char tmp[KLAB_MAX_MSG];
	size_t len = min_t(size_t, count, KLAB_MAX_MSG);
	size_t i;

	if (copy_from_user(tmp, buf, len))
		return -EFAULT;
	for (i = 0; i < len; i++)
		tmp[i] = toupper(tmp[i]);

	mutex_lock(&klab_lock);
	memcpy(klab_msg, tmp, len);
	klab_len = len;
	mutex_unlock(&klab_lock);

	/* Report the whole write as consumed: the excess is dropped, not retried. */
	return count;
}

/* noinline: keep klab_oops visible as its own frame in the oops call trace. */
static noinline void klab_oops(void)
{
	/*
	 * Non-canonical (bit 47 and the bits above it disagree), as in the
	 * list poison values; volatile so the compiler keeps the store.
	 */
	int *volatile ptr = (int *)0xdead000000000000UL;

	pr_info("klab: oops requested by pid %d (%s), writing through %px\n",
		task_pid_nr(current), current->comm, ptr);
	*(volatile int *)ptr = 0x6b6c6162;	/* "klab" */
}

static long klab_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	switch (cmd) {
	case KLAB_IOCTL_OOPS:
		klab_oops();
		return 0;	/* not reached: the oops kills the calling task */
	default:
		return -ENOTTY;
	}
}

static const struct file_operations klab_fops = {
	.owner		= THIS_MODULE,
	.read		= klab_read,
	.write		= klab_write,
	.unlocked_ioctl	= klab_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= default_llseek,
};

static struct miscdevice klab_dev = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "klab",
	.fops	= &klab_fops,
	.mode	= 0666,
};

static int __init klab_init(void)
{
	int ret = misc_register(&klab_dev);

	if (ret) {
		pr_err("klab: misc_register failed: %d\n", ret);
		return ret;
	}
	pr_info("klab: loaded, /dev/klab ready\n");
	return 0;
}

static void __exit klab_exit(void)
{
	misc_deregister(&klab_dev);
	pr_info("klab: unloaded\n");
}

module_init(klab_init);
module_exit(klab_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("kernel-lab");
MODULE_DESCRIPTION("kernel-lab exercise: /dev/klab misc device (echo upper-cased, oops on request)");
