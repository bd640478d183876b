#include "linkpath.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include "buf.h"

static bool is_dotdot(const char *c, size_t n)
{
	return n == 2 && c[0] == '.' && c[1] == '.';
}

/* The next component of [*p, end) but empty and "." ones; false at the end. */
static bool next_in(const char **p, const char *end, const char **c, size_t *n)
{
	for (;;) {
		while (*p < end && **p == '/')
			(*p)++;
		if (*p >= end)
			return false;
		*c = *p;
		while (*p < end && **p != '/')
			(*p)++;
		*n = (size_t)(*p - *c);
		if (!(*n == 1 && **c == '.'))
			return true;
	}
}

static bool next_component(const char **p, const char **c, size_t *n)
{
	return next_in(p, *p + strlen(*p), c, n);
}

static bool has_dotdot(const char *p)
{
	const char *c;
	size_t n;

	while (next_component(&p, &c, &n))
		if (is_dotdot(c, n))
			return true;
	return false;
}

static int append_components(struct ck_buf *b, const char *p)
{
	const char *c;
	size_t n;

	if (has_dotdot(p))
		return -1;
	while (next_component(&p, &c, &n)) {
		ck_buf_u8(b, '/');
		ck_buf_append(b, c, n);
	}
	return 0;
}

char *ck_link_root(const char *path, const char *cwd)
{
	struct ck_buf b = {0};

	if ((path[0] != '/' && append_components(&b, cwd)) || append_components(&b, path)) {
		ck_buf_free(&b);
		errno = EINVAL;
		return NULL;
	}
	ck_buf_u8(&b, 0); /* "/" itself is "": every absolute target continues it with '/' */
	if (b.failed) {
		ck_buf_free(&b);
		errno = ENOMEM;
		return NULL;
	}
	return (char *)b.data;
}

/* Bounded output: `over` once something did not fit. */
struct out {
	char *s;
	size_t size, n;
	bool over;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->over || n >= o->size - o->n) {
		o->over = true;
		return;
	}
	memcpy(o->s + o->n, s, n);
	o->n += n;
	o->s[o->n] = 0;
}

/* The relative path from the directory of `link` to rest, a path beneath
 * the root without "..": up from the link's directory to the last
 * directory they share (each of the link's is a real one: node paths never
 * pass a symlink), then down. */
static void relative(const char *rest, const char *link, struct out *o)
{
	const char *dend = strrchr(link, '/'), *d = link, *r = rest, *rend = rest + strlen(rest), *dc, *rc;
	size_t dn, rn;
	bool any = false;

	if (!dend)
		dend = link;
	for (;;) {
		const char *d0 = d, *r0 = r;
		if (!next_in(&d, dend, &dc, &dn) || !next_in(&r, rend, &rc, &rn) || dn != rn || memcmp(dc, rc, dn)) {
			d = d0;
			r = r0;
			break;
		}
	}
	while (next_in(&d, dend, &dc, &dn))
		put(o, "../", 3);
	while (next_in(&r, rend, &rc, &rn)) {
		if (any)
			put(o, "/", 1);
		put(o, rc, rn);
		any = true;
	}
	if (!any && o->n) /* a directory above: "../.." */
		o->s[--o->n] = 0;
	else if (!any)
		put(o, ".", 1);
	else if (rend[-1] == '/') /* a target that must be a directory stays one */
		put(o, "/", 1);
}

ssize_t ck_link_in_view(const char *target, const char *link, const char *const *roots, size_t nroots, char *out,
			size_t size)
{
	struct out o = {out, size, 0, size == 0};

	if (size)
		out[0] = 0;
	for (size_t i = 0; target[0] == '/' && i < nroots; i++) {
		size_t rl = strlen(roots[i]);
		if (strncmp(target, roots[i], rl) != 0 || (target[rl] != '/' && target[rl] != 0))
			continue;
		if (has_dotdot(target + rl)) /* it may lead out: as written */
			break;
		relative(target + rl, link, &o);
		return o.over ? -1 : (ssize_t)o.n;
	}
	put(&o, target, strlen(target));
	return o.over ? -1 : (ssize_t)o.n;
}
