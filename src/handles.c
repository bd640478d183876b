#include <config.h>
#include "handles.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

#define HASH_NONFATAL_OOM 1
#include <uthash.h>

struct entry {
	uint64_t fh;
	void *obj;
	UT_hash_handle hh;
};

struct ck_handles {
	pthread_mutex_t lock;
	struct entry *table;
	uint64_t epoch;
	uint32_t next;
};

struct ck_handles *ck_handles_new(uint32_t epoch)
{
	struct ck_handles *h = calloc(1, sizeof(*h));

	if (!h)
		return NULL;
	pthread_mutex_init(&h->lock, NULL);
	h->epoch = (uint64_t)epoch << 32;
	return h;
}

void ck_handles_free(struct ck_handles *h, void (*drop)(void *obj))
{
	struct entry *e, *tmp;

	if (!h)
		return;
	HASH_ITER(hh, h->table, e, tmp) {
		HASH_DEL(h->table, e);
		if (drop)
			drop(e->obj);
		free(e);
	}
	pthread_mutex_destroy(&h->lock);
	free(h);
}

/* Called with the lock held. */
static struct entry *find(struct ck_handles *h, uint64_t fh)
{
	struct entry *e;

	HASH_FIND(hh, h->table, &fh, sizeof(fh), e);
	return e;
}

/* Called with the lock held; false when out of memory. */
static bool insert(struct ck_handles *h, uint64_t fh, void *obj)
{
	struct entry *e = calloc(1, sizeof(*e));

	if (!e)
		return false;
	e->fh = fh;
	e->obj = obj;
	HASH_ADD(hh, h->table, fh, sizeof(e->fh), e);
	if (!e->hh.tbl) {
		free(e);
		return false;
	}
	return true;
}

/* Numbers wrap after 2^32 opens; one still in use is skipped. */
uint64_t ck_handles_add(struct ck_handles *h, void *obj)
{
	uint64_t fh;

	pthread_mutex_lock(&h->lock);
	do
		fh = h->epoch | ++h->next;
	while (fh == 0 || find(h, fh));
	if (!insert(h, fh, obj))
		fh = 0;
	pthread_mutex_unlock(&h->lock);
	return fh;
}

void *ck_handles_get(struct ck_handles *h, uint64_t fh)
{
	struct entry *e;

	pthread_mutex_lock(&h->lock);
	e = find(h, fh);
	pthread_mutex_unlock(&h->lock);
	return e ? e->obj : NULL;
}

void *ck_handles_adopt(struct ck_handles *h, uint64_t fh, void *obj)
{
	struct entry *e;

	pthread_mutex_lock(&h->lock);
	e = find(h, fh);
	if (e)
		obj = e->obj;
	else if (!insert(h, fh, obj))
		obj = NULL;
	pthread_mutex_unlock(&h->lock);
	return obj;
}

void *ck_handles_take(struct ck_handles *h, uint64_t fh)
{
	struct entry *e;
	void *obj = NULL;

	pthread_mutex_lock(&h->lock);
	e = find(h, fh);
	if (e) {
		obj = e->obj;
		HASH_DEL(h->table, e);
		free(e);
	}
	pthread_mutex_unlock(&h->lock);
	return obj;
}
