#include <config.h>
#include "fuseio.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef FUSE_DIRECT_IO_ALLOW_MMAP
#define FUSE_DIRECT_IO_ALLOW_MMAP (1ULL << 36)
#endif

/* One connection per daemon. The INIT request and its reply pass through
 * one worker before any other request is read. */
static struct {
	atomic_bool offered;      /* the kernel's INIT offered ALLOW_MMAP */
	atomic_uint_fast64_t init_unique;
	atomic_uint granted;
} conn;

/* A restart (SIGHUP) drains the loop before it ends: workers stop reading
 * requests, finish those they read, and only then does libfuse's loop end.
 * Its own end loses requests: it cancels workers that may have just read
 * one, and drops one read once it decided to end; the kernel fails such a
 * request with ECONNABORTED when the worker's descriptor closes (a read of
 * a file read directly, a lookup, an open: the reader sees the error). */
static struct {
	pthread_mutex_t lock;
	pthread_cond_t idle;  /* busy went down to 0 */
	struct fuse_session *se;
	int wake_fd;          /* an eventfd, readable while draining */
	atomic_bool draining;
	unsigned busy;        /* workers reading a request or serving one */
	bool ended;
	pthread_key_t serving; /* non-NULL: this worker counts in busy */
} drain = {.lock = PTHREAD_MUTEX_INITIALIZER, .idle = PTHREAD_COND_INITIALIZER, .wake_fd = -1};

static void on_sighup(int sig)
{
	uint64_t one = 1;
	int saved = errno;

	(void)sig;
	atomic_store(&drain.draining, true);
	(void)!write(drain.wake_fd, &one, sizeof(one));
	errno = saved;
}

/* Under drain.lock: one worker fewer is busy. */
static void one_less_busy(void)
{
	if (--drain.busy == 0)
		pthread_cond_broadcast(&drain.idle);
}

/* The end of a busy worker that leaves libfuse's loop without coming back
 * (an idle one beyond libfuse's limit, or one cancelled). */
static void worker_gone(void *serving)
{
	(void)serving;
	pthread_mutex_lock(&drain.lock);
	one_less_busy();
	pthread_mutex_unlock(&drain.lock);
}

static void unlock(void *m)
{
	pthread_mutex_unlock(m);
}

/* A worker back for its next request: true to read one (counted busy).
 * While draining it waits until no worker is busy; the first to see that
 * ends the loop (false), the others wait for libfuse to cancel them. */
static bool next_request(void)
{
	bool go;

	pthread_mutex_lock(&drain.lock);
	pthread_cleanup_push(unlock, &drain.lock);
	if (pthread_getspecific(drain.serving)) {
		(void)pthread_setspecific(drain.serving, NULL);
		one_less_busy();
	}
	while (atomic_load(&drain.draining) && (drain.busy || drain.ended))
		pthread_cond_wait(&drain.idle, &drain.lock);
	go = !atomic_load(&drain.draining);
	if (go)
		drain.busy++, (void)pthread_setspecific(drain.serving, (void *)1);
	else
		drain.ended = true;
	pthread_cleanup_pop(1);
	return go;
}

/* Waits for a request and reads it, never cancelled in between: the
 * descriptor is non-blocking, and the wait (poll) is where libfuse's
 * cancel may land. 0 with errno EAGAIN: nothing read, ask again. */
static ssize_t read_request(int fd, void *buf, size_t len)
{
	struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = drain.wake_fd, .events = POLLIN}};
	static __thread int nonblocking_fd = -1;
	ssize_t n;
	int old;

	if (nonblocking_fd != fd) {
		int fl = fcntl(fd, F_GETFL);

		if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK))
			return -1;
		nonblocking_fd = fd;
	}
	if (poll(p, 2, -1) < 0 || !(p[0].revents & (POLLIN | POLLERR | POLLHUP)))
		return errno = EAGAIN, 0;
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
	n = read(fd, buf, len);
	pthread_setcancelstate(old, NULL);
	return n < 0 && errno == EAGAIN ? 0 : n;
}

static void note_init(const void *buf, ssize_t n)
{
	const struct fuse_in_header *h = buf;
	const struct fuse_init_in *in = (const void *)(h + 1);

	if (n >= (ssize_t)(sizeof(*h) + sizeof(*in)) && h->opcode == FUSE_INIT) {
		uint64_t flags = in->flags;

		if (flags & FUSE_INIT_EXT)
			flags |= (uint64_t)in->flags2 << 32;
		atomic_store(&conn.init_unique, h->unique);
		atomic_store(&conn.offered, (flags & FUSE_DIRECT_IO_ALLOW_MMAP) != 0);
	}
}

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
	(void)userdata;
	for (;;) {
		ssize_t n;

		if (!next_request()) { /* libfuse's worker reads 0 from an ended session */
			fuse_session_exit(drain.se);
			return 0;
		}
		if ((n = read_request(fd, buf, len)) != 0) {
			note_init(buf, n);
			return n;
		}
	}
}

/* The reply to INIT (libfuse writes header and fuse_init_out as two
 * pieces) asks for what the kernel offered. */
static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	const struct fuse_out_header *h = iov[0].iov_base;

	(void)userdata;
	if (count >= 2 && iov[0].iov_len == sizeof(*h) && h->error == 0 &&
	    iov[1].iov_len >= offsetof(struct fuse_init_out, flags2) + sizeof(uint32_t) &&
	    atomic_load(&conn.offered) && h->unique == atomic_load(&conn.init_unique)) {
		struct fuse_init_out *out = iov[1].iov_base;

		if (out->flags & FUSE_INIT_EXT) {
			out->flags2 |= (uint32_t)(FUSE_DIRECT_IO_ALLOW_MMAP >> 32);
			atomic_fetch_or(&conn.granted, CK_CONN_DIRECT_MMAP);
		}
	}
	return writev(fd, iov, count);
}

static ssize_t io_splice(int fdin, off_t *offin, int fdout, off_t *offout, size_t len,
			 unsigned int flags, void *userdata)
{
	(void)userdata;
	return splice(fdin, offin, fdout, offout, len, flags);
}

int ck_fuseio_attach(struct fuse_session *se, unsigned inherited)
{
	static const struct fuse_custom_io io = {
		.read = io_read, .writev = io_writev, .splice_send = io_splice,
	};
	struct sigaction sa = {.sa_handler = on_sighup};

	atomic_store(&conn.granted, inherited);
	drain.se = se;
	if ((drain.wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0 ||
	    pthread_key_create(&drain.serving, worker_gone))
		return -1;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGHUP, &sa, NULL))
		return -1;
	return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}

bool ck_fuseio_drained(void)
{
	uint64_t n;

	if (!atomic_load(&drain.draining))
		return false;
	(void)!read(drain.wake_fd, &n, sizeof(n));
	drain.busy = 0; /* libfuse joined every worker */
	drain.ended = false;
	atomic_store(&drain.draining, false);
	return true;
}

unsigned ck_fuseio_granted(void)
{
	return atomic_load(&conn.granted);
}
