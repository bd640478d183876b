/* Unit tests of the view cache: one build per key, LRU eviction, the one
 * memory bound over built views and builds in progress, out of memory.
 * The sources are shard indexes: a build of an n-byte index claims exactly
 * (n + 1) * (1 + CK_JSON_MEMORY_PER_BYTE) bytes, so sizes are chosen. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cache.h"
#include "hash.h"
#include "jsonkeys.h"
#include "tap.h"

/* uthash's allocator (hash.h), failing on demand. */
static atomic_bool hash_oom;

void *ck_hash_malloc(size_t n)
{
	return hash_oom ? NULL : malloc(n);
}

struct file {
	int fd;
	struct ck_cache_key key;
	struct ck_src src;
};

/* An index of exactly n bytes whose plain view renames its one key. */
static void make(struct file *f, size_t n)
{
	static const char head[] = "{\"weight_map\": {\"module.a\": \"m.safetensors\"}, \"pad\": \"";
	char path[] = "/tmp/ckptfs-cache-XXXXXX";
	char *text = malloc(n);
	struct stat st;

	if (!text || n < sizeof(head) + 2)
		exit(99);
	memset(text, 'x', n);
	memcpy(text, head, sizeof(head) - 1);
	memcpy(text + n - 2, "\"}", 2);
	f->fd = mkstemp(path);
	if (f->fd < 0 || unlink(path) || write(f->fd, text, n) != (ssize_t)n || fstat(f->fd, &st))
		exit(99);
	free(text);
	f->key = ck_cache_key_of(&st, &ck_view_plain);
	f->src = (struct ck_src){.fd = f->fd, .size = n, .name = "idx.json"};
}

static uint64_t claim_of(size_t n)
{
	return (n + 1) * (1 + CK_JSON_MEMORY_PER_BYTE);
}

static struct ck_cache_entry *get(struct ck_cache *c, struct file *f)
{
	struct ck_err e = {0};
	struct ck_cache_entry *ent = ck_cache_get(c, &f->key, &f->src, &e);

	if (!ent)
		exit(98);
	return ent;
}

static int code(struct ck_cache_entry *ent)
{
	return ck_cache_built(ent)->err.code;
}

struct getter {
	struct ck_cache *c;
	struct file *f;
	struct ck_cache_entry *ent;
};

static void *get_thread(void *arg)
{
	struct getter *g = arg;

	g->ent = get(g->c, g->f);
	return NULL;
}

static void test_one_build_per_key(void)
{
	struct ck_cache *c = ck_cache_new(64 << 20, 1);
	struct getter g[8];
	pthread_t t[8];
	struct file f;
	bool same = true;

	make(&f, 4096);
	for (int i = 0; i < 8; i++) {
		g[i] = (struct getter){c, &f, NULL};
		pthread_create(&t[i], NULL, get_thread, &g[i]);
	}
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < 8; i++)
		same &= g[i].ent == g[0].ent;
	ok(ck_cache_builds(c) == 1 && same, "8 concurrent requests of one key: one build, one entry");
	ok(code(g[0].ent) == 0 && ck_cache_built(g[0].ent)->layout, "the view is built");
	for (int i = 0; i < 8; i++)
		ck_cache_put(c, g[i].ent);
	ck_cache_free(c);
	close(f.fd);
}

/* Room for the build of d beside one small view, not two. */
static void test_eviction_lru(void)
{
	struct file a, b, d;
	struct ck_cache *c;

	make(&a, 4096);
	make(&b, 4096);
	make(&d, 100000);
	c = ck_cache_new(claim_of(100000) + 6000, 1);
	ck_cache_put(c, get(c, &a));
	ck_cache_put(c, get(c, &b));
	ck_cache_put(c, get(c, &a));
	ok(ck_cache_builds(c) == 2, "idle views are kept for later");
	ck_cache_put(c, get(c, &d));
	ok(ck_cache_builds(c) == 3, "a larger build evicts idle views to make room");
	ck_cache_put(c, get(c, &a));
	ok(ck_cache_builds(c) == 3, "the most recently used view stays");
	ck_cache_put(c, get(c, &b));
	ok(ck_cache_builds(c) == 4, "the least recently used went first");
	ck_cache_free(c);
	close(a.fd);
	close(b.fd);
	close(d.fd);
}

static void test_oversize_build_fails_for_good(void)
{
	struct ck_cache *c = ck_cache_new(1 << 20, 1);
	struct ck_cache_entry *ent;
	struct file f;

	make(&f, 20000); /* claims about 1.9 MiB */
	ent = get(c, &f);
	ok(code(ent) == EFBIG, "a build that alone needs more than the bound fails (%d)", code(ent));
	ok(strstr(ck_cache_built(ent)->err.msg, "cache_mb") != NULL, "its error names cache_mb: %s",
	   ck_cache_built(ent)->err.msg);
	ck_cache_put(c, ent);
	ck_cache_put(c, get(c, &f));
	ok(ck_cache_builds(c) == 1, "that failure is kept: the file is not parsed at each request");
	ck_cache_free(c);
	close(f.fd);
}

struct later_put {
	struct ck_cache *c;
	struct ck_cache_entry *ent;
};

static void *put_later(void *arg)
{
	struct later_put *p = arg;

	usleep(200000);
	ck_cache_put(p->c, p->ent);
	return NULL;
}

/* A held view counts against the bound: a build that needs its room waits
 * for it to be let go, or fails this time when it is not. */
static void test_held_views_block_builds(void)
{
	const size_t max = 20 << 20;
	size_t nb = (max - 50000) / (1 + CK_JSON_MEMORY_PER_BYTE) - 1; /* fits alone, not beside a */
	struct ck_cache *c = ck_cache_new(max, 1);
	struct ck_cache_entry *held, *ent;
	struct later_put lp;
	struct file a, b;
	pthread_t t;

	make(&a, 100000);
	make(&b, nb);
	held = get(c, &a);
	ent = get(c, &b);
	ok(code(ent) == ENOMEM, "a build whose memory a held view takes fails after the wait (%d)", code(ent));
	ok(strstr(ck_cache_built(ent)->err.msg, "cache_mb") != NULL, "its error names cache_mb: %s",
	   ck_cache_built(ent)->err.msg);
	ck_cache_put(c, ent);
	ck_cache_put(c, held);
	ck_cache_free(c);

	/* the same with a wait long enough for a to be let go meanwhile */
	c = ck_cache_new(max, 60);
	held = get(c, &a);
	lp = (struct later_put){c, held};
	pthread_create(&t, NULL, put_later, &lp);
	ent = get(c, &b);
	pthread_join(t, NULL);
	ok(code(ent) == 0, "the build waits for the held view to be let go, then evicts it (%d)", code(ent));
	ck_cache_put(c, ent);
	ck_cache_put(c, get(c, &a));
	ok(ck_cache_builds(c) == 3, "a was evicted for b and built again");
	ck_cache_free(c);
	close(a.fd);
	close(b.fd);
}

/* A failed build is not kept: the next request tries again. */
static void test_wait_failure_is_not_kept(void)
{
	const size_t max = 20 << 20;
	size_t nb = (max - 50000) / (1 + CK_JSON_MEMORY_PER_BYTE) - 1;
	struct ck_cache *c = ck_cache_new(max, 1);
	struct ck_cache_entry *held, *ent;
	struct file a, b;

	make(&a, 100000);
	make(&b, nb);
	held = get(c, &a);
	ck_cache_put(c, get(c, &b));
	ck_cache_put(c, held);
	ent = get(c, &b);
	ok(code(ent) == 0 && ck_cache_builds(c) == 3, "after an out-of-memory failure the file is built again");
	ck_cache_put(c, ent);
	ck_cache_free(c);
	close(a.fd);
	close(b.fd);
}

static void test_hash_out_of_memory(void)
{
	struct ck_cache *c = ck_cache_new(64 << 20, 1);
	struct ck_err e = {0};
	struct file f;

	make(&f, 4096);
	hash_oom = true;
	ok(ck_cache_get(c, &f.key, &f.src, &e) == NULL && e.code == ENOMEM,
	   "out of memory in the table: ENOMEM for that request (%d)", e.code);
	hash_oom = false;
	ck_cache_put(c, get(c, &f));
	ok(ck_cache_builds(c) == 1, "then the file is built as usual");
	ck_cache_free(c);
	close(f.fd);
}

int main(void)
{
	test_one_build_per_key();
	test_eviction_lru();
	test_oversize_build_fails_for_good();
	test_held_views_block_builds();
	test_wait_failure_is_not_kept();
	test_hash_out_of_memory();
	return tap_done();
}
