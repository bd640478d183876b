/* The shared rename-collision set: names given to keys, the earlier key
 * named on a clash, out of memory an error, never an exit. */
#include <errno.h>
#include <stdlib.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "renames.h"
#include "tap.h"

/* The hash tables' allocator (src/hash.c's is not linked in): fails on demand. */
static int hash_oom;
void *ck_hash_malloc(size_t n)
{
	return hash_oom ? NULL : malloc(n);
}

static void test_clash_names_the_earlier_key(void)
{
	struct ck_renames r;
	struct ck_err e = {0};
	size_t by = 99;

	ok(ck_renames_init(&r, 3, &e) == 0, "room for three names");
	ok(ck_renames_add(&r, "a", 1, 10, &by, &e) == 0, "first name is new");
	ok(ck_renames_add(&r, "ab", 2, 11, &by, &e) == 0, "a longer name with the same start is new");
	ok(ck_renames_add(&r, "abc", 2, 12, &by, &e) == 1 && by == 11,
	   "a name equal over its length clashes and names the earlier key (%zu)", by);
	ok(ck_renames_add(&r, "a", 1, 13, &by, &e) == 1 && by == 10, "the first key's name clashes with it");
	ok(ck_renames_add(&r, "", 0, 14, &by, &e) == 0, "the empty name is a name");
	ok(ck_renames_add(&r, "x", 1, 15, &by, &e) == -1 && e.code == EOVERFLOW,
	   "a name beyond the announced room is an error (%s)", e.msg);
	ck_renames_free(&r);
}

static void test_many_names(void)
{
	enum { N = 20000 };
	static char names[N][12];
	struct ck_renames r;
	struct ck_err e = {0};
	size_t by = 0;
	int bad = 0;

	ok(ck_renames_init(&r, N, &e) == 0, "room for %d names", N);
	for (size_t i = 0; i < N; i++) {
		snprintf(names[i], sizeof(names[i]), "k%zu", i);
		bad += ck_renames_add(&r, names[i], strlen(names[i]), i, &by, &e) != 0;
	}
	ok(bad == 0, "%d distinct names all new", N);
	ok(ck_renames_add(&r, "k12345", 6, N, &by, &e) == 1 && by == 12345, "a clash deep in the set is found");
	ck_renames_free(&r);
}

static void test_out_of_memory(void)
{
	struct ck_renames r;
	struct ck_err e = {0};
	size_t by;

	hash_oom = 1;
	ok(ck_renames_init(&r, 2, &e) == -1 && e.code == ENOMEM,
	   "the table's allocation failing is ENOMEM, not an exit (%s)", e.msg);
	hash_oom = 0;
	ok(ck_renames_init(&r, (size_t)UINT32_MAX, &e) == -1 && e.code == ENOMEM,
	   "room for more names than the table indexes is refused (%s)", e.msg);
	ok(ck_renames_init(&r, 2, &e) == 0 && ck_renames_add(&r, "a", 1, 0, &by, &e) == 0,
	   "a set made after works");
	ck_renames_free(&r);
}

int main(void)
{
	test_clash_names_the_earlier_key();
	test_many_names();
	test_out_of_memory();
	return tap_done();
}
