/* The pickle rewriter as a whole: tokenize, run a symbolic stack machine
 * that only knows strings, containers, globals and tensor rebuilds, find
 * the state dicts, plan key renames, and emit the pickle again with every
 * memo slot kept where it was (FORMATS.md §2.8). Nothing is ever executed.
 * The passes are in pickle_*.c (pickle_int.h); here are the entry points
 * and the one allocator all their tables grow with. */
#define _GNU_SOURCE /* mremap */
#include "pickle_int.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Arrays from BIG_ARRAY bytes up get a mapping of their own, backed by huge
 * pages where the kernel has them: each fresh 4 KiB page costs a fault
 * (15-30 us on the VMs measured), so faults, not parsing, made the first
 * open of a large view slow. */
#define BIG_ARRAY ((size_t)1 << 20)
#define HUGE_PAGE ((size_t)2 << 20)

static size_t big_len(size_t n)
{
	return (n + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
}

void pk_free(void *p, size_t n)
{
	if (p && n < BIG_ARRAY)
		free(p);
	else if (p)
		munmap(p, big_len(n));
}

/* p (old bytes) resized to n > old bytes, the tail zeroed when `zero` (a
 * mapping's always is). */
static void *big_resize(void *p, size_t old, size_t n, bool zero)
{
	void *q;

	if (n < BIG_ARRAY) {
		if ((q = realloc(p, n)) && zero)
			memset((char *)q + old, 0, n - old);
		return q;
	}
	if (old >= BIG_ARRAY && big_len(n) == big_len(old))
		return p;
	if (old >= BIG_ARRAY) { /* the kernel moves the pages: no copy, no second resident set */
		q = mremap(p, big_len(old), big_len(n), MREMAP_MAYMOVE);
		return q == MAP_FAILED ? NULL : q;
	}
	q = mmap(NULL, big_len(n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (q == MAP_FAILED)
		return NULL;
	madvise(q, big_len(n), MADV_HUGEPAGE);
	if (old)
		memcpy(q, p, old);
	pk_free(p, old);
	return q;
}

int pk_grow(void **v, uint32_t *cap, uint64_t want, size_t sz, bool zero)
{
	uint64_t c = *cap ? *cap : 16;
	void *p;

	if (want <= *cap)
		return 0;
	while (c < want)
		c *= 2;
	if (c > UINT32_MAX)
		c = UINT32_MAX;
	if (want > c || c > SIZE_MAX / sz)
		return -1;
	if (!(p = big_resize(*v, (size_t)*cap * sz, (size_t)c * sz, zero)))
		return -1;
	*v = p;
	*cap = (uint32_t)c;
	return 0;
}

struct ck_str pk_str(const struct machine *m, uint32_t obj)
{
	uint32_t op = m->objs.v[obj].a, hdr;

	switch (OP_BYTE(m, op)) {
	case 0x8c: case 'U': hdr = 2; break; /* SHORT_BINUNICODE, SHORT_BINSTRING */
	case 0x8d: hdr = 9; break;           /* BINUNICODE8 */
	default: hdr = 5;                    /* BINUNICODE, BINSTRING */
	}
	return (struct ck_str){(const char *)m->in + op + hdr, pk_op_len(m, op) - hdr};
}

int pk_fail(const struct machine *m, uint32_t op, const char *what)
{
	return ck_err_set(m->e, EIO, "pickle offset %u: %s", op, what);
}

void pk_machine_free(struct machine *m)
{
	VEC_FREE(m->objs);
	VEC_FREE(m->dicts);
	VEC_FREE(m->items);
	VEC_FREE(m->seqs);
	VEC_FREE(m->kids);
	VEC_FREE(m->refs);
	VEC_FREE(m->stack);
	VEC_FREE(m->marks);
	VEC_FREE(m->memo);
}

size_t ck_pickle_span(const uint8_t *in, size_t n, bool *short_input, struct ck_err *e)
{
	struct machine m = {.in = in, .n = n, .e = e};
	return pk_scan(&m, false, short_input);
}

/* What rewriting takes for a pickle of n bytes and nops opcodes: its
 * tables, and the output (under 2n + CK_PICKLE_GROWTH + the renamed keys:
 * the source's, + 7 bytes an opcode at most) in a buffer grown by doubling. */
static uint64_t rewrite_memory(uint32_t nops, size_t n)
{
	return (uint64_t)nops * CK_PICKLE_OP_MEMORY + 2 * (3 * (uint64_t)n + CK_PICKLE_GROWTH);
}

/* Runs the pickle pk_scan has checked and marks its state dicts. */
static int run(struct machine *m)
{
	if (pk_run(m))
		return -1;
	return pk_find_state_dicts(m, m->stack.v[m->stack.n - 1].obj);
}

static int analyze(struct machine *m)
{
	bool short_input;

	return !pk_scan(m, true, &short_input) || run(m) ? -1 : 0;
}

/* Rewrites the pickle that m has scanned, and frees m. */
static enum ck_pickle_result rewrite(struct machine *m, const struct ck_view *v, struct ck_buf *out)
{
	struct plan p = {.max_out = 2 * (uint64_t)m->n + CK_PICKLE_GROWTH};
	enum ck_pickle_result r = CK_PICKLE_ERROR;

	if (!run(m) && !pk_plan(m, &p, v)) {
		if (!p.ren.n)
			r = CK_PICKLE_UNCHANGED;
		else if (!pk_emit(m, &p, out))
			r = CK_PICKLE_REWRITTEN;
	}
	pk_plan_free(&p);
	pk_machine_free(m);
	return r;
}

enum ck_pickle_result ck_pickle_rewrite(const uint8_t *in, size_t n, const struct ck_view *v,
					struct ck_buf *out, struct ck_err *e)
{
	return ck_pickle_rewrite_src(NULL, in, n, v, out, e);
}

enum ck_pickle_result ck_pickle_rewrite_src(const struct ck_src *src, const uint8_t *in, size_t n,
					    const struct ck_view *v, struct ck_buf *out, struct ck_err *e)
{
	struct machine m = {.in = in, .n = n, .e = e};
	bool short_input;

	if (!pk_scan(&m, true, &short_input) || (src && ck_src_claim(src, rewrite_memory(m.nops, n), e)))
		return CK_PICKLE_ERROR; /* nothing allocated yet */
	return rewrite(&m, v, out);
}

int ck_pickle_describe(const uint8_t *in, size_t n, int *protocol, ck_found_fn fn, void *ctx,
		       struct ck_err *e)
{
	struct machine m = {.in = in, .n = n, .e = e};
	int rc = -1;

	*protocol = n >= 2 && in[0] == 0x80 ? in[1] : 0;
	if (!analyze(&m))
		rc = pk_report_state_dicts(&m, m.stack.v[m.stack.n - 1].obj, fn, ctx);
	pk_machine_free(&m);
	return rc;
}
