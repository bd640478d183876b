#include <config.h>
#include "fuseio.h"
#include <fcntl.h>
#include <linux/fuse.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
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

static ssize_t io_read(int fd, void *buf, size_t len, void *userdata)
{
	const struct fuse_in_header *h = buf;
	const struct fuse_init_in *in = (const void *)(h + 1);
	ssize_t n = read(fd, buf, len);

	(void)userdata;
	if (n >= (ssize_t)(sizeof(*h) + sizeof(*in)) && h->opcode == FUSE_INIT) {
		uint64_t flags = in->flags;

		if (flags & FUSE_INIT_EXT)
			flags |= (uint64_t)in->flags2 << 32;
		atomic_store(&conn.init_unique, h->unique);
		atomic_store(&conn.offered, (flags & FUSE_DIRECT_IO_ALLOW_MMAP) != 0);
	}
	return n;
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
		.read = io_read, .writev = io_writev, .splice_receive = io_splice, .splice_send = io_splice,
	};

	atomic_store(&conn.granted, inherited);
	return fuse_session_custom_io(se, &io, fuse_session_fd(se));
}

unsigned ck_fuseio_granted(void)
{
	return atomic_load(&conn.granted);
}
