#include "fdquota.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/resource.h>
#include "hash.h"

struct holder {
	uid_t uid;
	unsigned n;
	UT_hash_handle hh;
};

struct ck_fdquota {
	pthread_mutex_t lock;
	unsigned per_user;
	struct holder *by_uid; /* only uids holding some */
};

unsigned ck_fdquota_raise_limit(void)
{
	struct rlimit rl;
	rlim_t n;

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return CK_FDQUOTA_MIN;
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t was = rl.rlim_cur;
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl))
			rl.rlim_cur = was;
	}
	n = rl.rlim_cur == RLIM_INFINITY ? (rlim_t)1 << 20 : rl.rlim_cur;
	n = n > CK_FDQUOTA_RESERVE ? (n - CK_FDQUOTA_RESERVE) / 4 : 0;
	if (n > (1u << 30))
		n = 1u << 30;
	return n > CK_FDQUOTA_MIN ? (unsigned)n : CK_FDQUOTA_MIN;
}

struct ck_fdquota *ck_fdquota_new(unsigned per_user)
{
	struct ck_fdquota *q = calloc(1, sizeof(*q));

	if (!q)
		return NULL;
	pthread_mutex_init(&q->lock, NULL);
	q->per_user = per_user;
	return q;
}

void ck_fdquota_free(struct ck_fdquota *q)
{
	struct holder *h, *tmp;

	if (!q)
		return;
	HASH_ITER(hh, q->by_uid, h, tmp) {
		HASH_DEL(q->by_uid, h);
		free(h);
	}
	pthread_mutex_destroy(&q->lock);
	free(q);
}

int ck_fdquota_take(struct ck_fdquota *q, uid_t uid)
{
	struct holder *h;
	int rc = 0;

	pthread_mutex_lock(&q->lock);
	HASH_FIND(hh, q->by_uid, &uid, sizeof(uid), h);
	if (!h) {
		if (!(h = calloc(1, sizeof(*h)))) {
			rc = -ENOMEM;
			goto out;
		}
		h->uid = uid;
		HASH_ADD(hh, q->by_uid, uid, sizeof(h->uid), h);
		if (CK_HASH_ADD_FAILED(h)) {
			free(h);
			rc = -ENOMEM;
			goto out;
		}
	}
	if (h->n >= q->per_user)
		rc = -EMFILE;
	else
		h->n++;
out:
	pthread_mutex_unlock(&q->lock);
	return rc;
}

void ck_fdquota_give(struct ck_fdquota *q, uid_t uid)
{
	struct holder *h;

	pthread_mutex_lock(&q->lock);
	HASH_FIND(hh, q->by_uid, &uid, sizeof(uid), h);
	if (h && --h->n == 0) {
		HASH_DEL(q->by_uid, h);
		free(h);
	}
	pthread_mutex_unlock(&q->lock);
}
