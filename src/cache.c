#include <config.h>
#include "cache.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <utlist.h>
#include "hash.h"
#include "log.h"

struct ck_cache_entry {
	struct ck_cache_key key;
	struct ck_built built;
	bool ready;          /* built; until then holders wait on c->built_cond */
	bool in_table;       /* findable; false once evicted or not worth keeping */
	unsigned holders;
	size_t footprint;    /* what the entry counts against the bound */
	struct ck_cache_entry *prev, *next; /* the idle list: in the table, ready, no holders */
	UT_hash_handle hh;
};

/* One bound for all: bytes (the footprint of the entries in the table,
 * held or idle) + claimed (what builds in progress may hold) <= max_bytes. */
struct ck_cache {
	pthread_mutex_t lock;
	pthread_cond_t built_cond;
	pthread_cond_t room_cond;     /* bytes or claimed went down, or an entry became idle */
	struct ck_cache_entry *table;
	struct ck_cache_entry *idle;  /* least recently used first */
	size_t bytes, max_bytes;
	uint64_t claimed;
	uint64_t builds;
	unsigned claim_wait_s;
};

/* A build's share of the bound. */
struct build_claim {
	struct ck_cache *c;
	uint64_t held;
};

struct ck_cache_key ck_cache_key_of(const struct stat *st, const struct ck_view *v)
{
	struct ck_cache_key k;

	memset(&k, 0, sizeof(k));
	k.dev = st->st_dev;
	k.ino = st->st_ino;
	k.size = (uint64_t)st->st_size;
	k.mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
	k.ctime_ns = (int64_t)st->st_ctim.tv_sec * 1000000000 + st->st_ctim.tv_nsec;
	k.view = v;
	return k;
}

struct ck_cache *ck_cache_new(size_t max_bytes, unsigned claim_wait_s)
{
	struct ck_cache *c = calloc(1, sizeof(*c));
	pthread_condattr_t attr;

	if (!c)
		return NULL;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->built_cond, NULL);
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&c->room_cond, &attr);
	pthread_condattr_destroy(&attr);
	c->max_bytes = max_bytes;
	c->claim_wait_s = claim_wait_s;
	return c;
}

static void entry_free(struct ck_cache_entry *ent)
{
	ck_layout_free(ent->built.layout);
	free(ent);
}

void ck_cache_free(struct ck_cache *c)
{
	struct ck_cache_entry *ent, *tmp;

	if (!c)
		return;
	HASH_ITER(hh, c->table, ent, tmp) {
		HASH_DEL(c->table, ent);
		entry_free(ent);
	}
	pthread_cond_destroy(&c->built_cond);
	pthread_cond_destroy(&c->room_cond);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

/* Called with the lock held. */
static void unlink_entry(struct ck_cache *c, struct ck_cache_entry *ent)
{
	HASH_DEL(c->table, ent);
	ent->in_table = false;
	c->bytes -= ent->footprint;
	pthread_cond_broadcast(&c->room_cond);
}

/* Called with the lock held. */
static void evict_oldest(struct ck_cache *c)
{
	struct ck_cache_entry *oldest = c->idle;

	DL_DELETE(c->idle, oldest);
	unlink_entry(c, oldest);
	entry_free(oldest);
}

/* Called with the lock held. Entries someone holds are never evicted: they
 * count against the bound until let go, and builds wait for them. */
static void evict_over_bound(struct ck_cache *c)
{
	while (c->bytes + c->claimed > c->max_bytes && c->idle)
		evict_oldest(c);
}

/* Called with the lock held: whether n more bytes fit, once idle entries
 * are evicted for them. */
static bool make_room(struct ck_cache *c, uint64_t n)
{
	while (c->bytes + c->claimed + n > c->max_bytes && c->idle)
		evict_oldest(c);
	return c->bytes + c->claimed + n <= c->max_bytes;
}

#define MIB(x) ((unsigned long long)(((x) + (1u << 20) - 1) >> 20))

/* The src->claim of a build: a file whose build alone needs more than the
 * bound fails for good; otherwise the build waits, up to claim_wait_s, for
 * other builds to end and held views to be let go, then fails this time. */
static int claim(void *ctx, uint64_t n, struct ck_err *e)
{
	struct build_claim *bc = ctx;
	struct ck_cache *c = bc->c;
	struct timespec deadline;
	int rc = 0;

	if (n > c->max_bytes - bc->held)
		return ck_err_set(e, EFBIG, "building its view needs %llu MiB of memory or more, over the "
				  "cache_mb bound (%llu MiB)", MIB(bc->held + n), MIB(c->max_bytes));
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += c->claim_wait_s;
	pthread_mutex_lock(&c->lock);
	while (!make_room(c, n) && rc == 0)
		if (pthread_cond_timedwait(&c->room_cond, &c->lock, &deadline) == ETIMEDOUT && !make_room(c, n))
			rc = ck_err_set(e, ENOMEM, "no memory to build its view within %u s: %llu MiB asked, the "
					"cache_mb bound (%llu MiB) held by other views and builds",
					c->claim_wait_s, MIB(n), MIB(c->max_bytes));
	if (rc == 0) {
		c->claimed += n;
		bc->held += n;
	}
	pthread_mutex_unlock(&c->lock);
	return rc;
}

/* Out of memory says nothing about the file, nor does a file that changed
 * while it was read: the next request tries again. */
static bool worth_keeping(const struct ck_built *b)
{
	return b->err.code != ENOMEM && b->err.code != EAGAIN;
}

/* A view is built from what the file held throughout: a write changes
 * ctime before it changes bytes, so the same key after the build means
 * the bytes read were of that version. (An unsettled key names no version:
 * its file is expected to change.) */
static bool changed_since(const struct ck_cache_key *key, int fd)
{
	struct ck_cache_key now;
	struct stat st;

	if (key->unsettled)
		return false;
	if (fstat(fd, &st))
		return true;
	now = ck_cache_key_of(&st, key->view);
	return memcmp(&now, key, sizeof(now)) != 0;
}

/* Runs unlocked; the claims it made stay in c->claimed for the caller to
 * give back with the lock held. */
static void build(struct ck_cache_entry *ent, const struct ck_src *src, struct build_claim *bc)
{
	struct ck_built *b = &ent->built;
	struct ck_src bounded = *src;
	int ret;

	bounded.claim = claim;
	bounded.claim_ctx = bc;
	ret = ck_view_layout(&bounded, ent->key.view, &b->layout, &b->format, &b->records, &b->err);

	if (changed_since(&ent->key, src->fd)) {
		ck_layout_free(b->layout);
		b->layout = NULL;
		ret = ck_err_set(&b->err, EAGAIN, "changed while its view was built");
	}
	if (ret == 0)
		b->err.code = 0;
	else
		(void)ck_log_err(src->name, &b->err);
	ent->footprint = sizeof(*ent) + (b->layout ? ck_layout_footprint(b->layout) : 0);
}

/* Called with the lock held. */
static struct ck_cache_entry *wait_for(struct ck_cache *c, struct ck_cache_entry *ent)
{
	if (ent->holders++ == 0 && ent->ready)
		DL_DELETE(c->idle, ent);
	while (!ent->ready)
		pthread_cond_wait(&c->built_cond, &c->lock);
	return ent;
}

/* Called with the lock held; returns with it held. The build itself runs
 * unlocked: it reads the file, and other keys must not wait for it. */
static struct ck_cache_entry *build_new(struct ck_cache *c, const struct ck_cache_key *key,
					const struct ck_src *src, struct ck_err *e)
{
	struct ck_cache_entry *ent = calloc(1, sizeof(*ent));

	if (!ent) {
		ck_err_nomem(e);
		return NULL;
	}
	ent->key = *key;
	ent->holders = 1;
	HASH_ADD(hh, c->table, key, sizeof(ent->key), ent);
	if (CK_HASH_ADD_FAILED(ent)) {
		free(ent);
		ck_err_nomem(e);
		return NULL;
	}
	ent->in_table = true;
	c->builds++;
	pthread_mutex_unlock(&c->lock);

	struct build_claim bc = {.c = c};
	build(ent, src, &bc);

	pthread_mutex_lock(&c->lock);
	ent->ready = true;
	c->claimed -= bc.held;
	c->bytes += ent->footprint;
	pthread_cond_broadcast(&c->room_cond);
	if (!worth_keeping(&ent->built))
		unlink_entry(c, ent);
	evict_over_bound(c);
	pthread_cond_broadcast(&c->built_cond);
	return ent;
}

struct ck_cache_entry *ck_cache_get(struct ck_cache *c, const struct ck_cache_key *key,
				    const struct ck_src *src, struct ck_err *e)
{
	struct ck_cache_entry *ent;

	pthread_mutex_lock(&c->lock);
	HASH_FIND(hh, c->table, key, sizeof(*key), ent);
	ent = ent ? wait_for(c, ent) : build_new(c, key, src, e);
	pthread_mutex_unlock(&c->lock);
	return ent;
}

struct ck_cache_entry *ck_cache_find(struct ck_cache *c, const struct ck_cache_key *key)
{
	struct ck_cache_entry *ent;

	pthread_mutex_lock(&c->lock);
	HASH_FIND(hh, c->table, key, sizeof(*key), ent);
	if (ent)
		ent = wait_for(c, ent);
	pthread_mutex_unlock(&c->lock);
	return ent;
}

void ck_cache_put(struct ck_cache *c, struct ck_cache_entry *ent)
{
	pthread_mutex_lock(&c->lock);
	if (--ent->holders == 0) {
		if (ent->in_table) {
			DL_APPEND(c->idle, ent);
			evict_over_bound(c);
			pthread_cond_broadcast(&c->room_cond); /* evictable now */
		} else {
			entry_free(ent);
		}
	}
	pthread_mutex_unlock(&c->lock);
}

const struct ck_built *ck_cache_built(const struct ck_cache_entry *ent)
{
	return &ent->built;
}

const struct ck_cache_key *ck_cache_entry_key(const struct ck_cache_entry *ent)
{
	return &ent->key;
}

uint64_t ck_cache_builds(struct ck_cache *c)
{
	uint64_t n;

	pthread_mutex_lock(&c->lock);
	n = c->builds;
	pthread_mutex_unlock(&c->lock);
	return n;
}
