#include "source.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

int ck_src_read(const struct ck_src *s, void *buf, size_t n, uint64_t off, struct ck_err *e)
{
	size_t done = 0;

	if (off > s->size || n > s->size - off)
		return ck_err_set(e, EIO, "offset %llu: need %zu bytes, file has %llu",
				  (unsigned long long)off, n, (unsigned long long)s->size);
	while (done < n) {
		ssize_t r = pread(s->fd, (char *)buf + done, n - done, (off_t)(off + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return ck_err_set(e, errno, "offset %llu: read failed: %s",
					  (unsigned long long)(off + done), strerror(errno));
		if (r == 0)
			return ck_err_set(e, EIO, "offset %llu: file shrank while being read",
					  (unsigned long long)(off + done));
		done += (size_t)r;
	}
	return 0;
}

int ck_src_claim(const struct ck_src *s, uint64_t bytes, struct ck_err *e)
{
	return s->claim ? s->claim(s->claim_ctx, bytes, e) : 0;
}
