#include "renames.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include "hash.h"

struct ck_renamed {
	const char *s;
	size_t len;
	size_t orig;
};

/* The names are hashed with a seed of the process's own (the kernel's
 * AT_RANDOM bytes), so that a file cannot be made of names that all land
 * in one place of the table. */
static uint64_t seed(void)
{
	const uint8_t *r = (const uint8_t *)getauxval(AT_RANDOM);
	uint64_t s = 0x9E3779B97F4A7C15u;

	if (r)
		memcpy(&s, r, sizeof(s));
	return s | 1;
}

static uint64_t mix(uint64_t h)
{
	h ^= h >> 32;
	h *= 0xD6E8FEB86659FD93u;
	h ^= h >> 32;
	return h;
}

/* Eight bytes a step: a state dict's names are some 20 to 60 bytes. */
static uint64_t hash(const char *s, size_t len, uint64_t k)
{
	uint64_t h = k ^ len, w;

	for (; len >= 8; s += 8, len -= 8) {
		memcpy(&w, s, 8);
		h = mix(h ^ w) + k;
	}
	w = 0;
	memcpy(&w, s, len);
	return mix(h ^ w ^ (k << 1));
}

int ck_renames_init(struct ck_renames *r, size_t cap, struct ck_err *e)
{
	size_t slots = 8;

	*r = (struct ck_renames){.cap = cap};
	if (cap >= UINT32_MAX)
		return ck_err_nomem(e);
	while (slots < cap * 2)
		slots *= 2;
	/* at most half full, so a probe ends soon; sized once: adding never
	 * allocates, and nothing points into what may move */
	if (!(r->all = ck_hash_malloc((cap ? cap : 1) * sizeof(*r->all))) ||
	    !(r->slot = ck_hash_malloc(slots * sizeof(*r->slot)))) {
		ck_renames_free(r);
		return ck_err_nomem(e);
	}
	memset(r->slot, 0, slots * sizeof(*r->slot));
	r->mask = slots - 1;
	r->seed = seed();
	return 0;
}

int ck_renames_add(struct ck_renames *r, const char *name, size_t len, size_t orig, size_t *taken_by,
		   struct ck_err *e)
{
	size_t i = (size_t)hash(name, len, r->seed) & r->mask;

	for (; r->slot[i]; i = (i + 1) & r->mask) {
		const struct ck_renamed *x = &r->all[r->slot[i] - 1];
		if (x->len == len && memcmp(x->s, name, len) == 0) {
			*taken_by = x->orig;
			return 1;
		}
	}
	if (r->n == r->cap)
		return ck_err_set(e, EOVERFLOW, "more than the %zu names announced", r->cap);
	r->all[r->n] = (struct ck_renamed){.s = name, .len = len, .orig = orig};
	r->slot[i] = (uint32_t)++r->n;
	return 0;
}

void ck_renames_free(struct ck_renames *r)
{
	free(r->all);
	free(r->slot);
	*r = (struct ck_renames){0};
}
