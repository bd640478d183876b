/* Open-file handles (the fh the kernel keeps for every open file and
 * directory) as numbers, not pointers: a daemon that took over the FUSE
 * connection from its predecessor (ckptfs restart) gets requests carrying
 * the predecessor's handles, and must recognise them as foreign instead of
 * following them.
 *
 * A handle is (epoch << 32 | n): each daemon of a mount uses a higher epoch
 * than the one before it, so its own handles never equal inherited ones. */
#ifndef CKPTFS_HANDLES_H
#define CKPTFS_HANDLES_H

#include <stdint.h>

struct ck_handles;

struct ck_handles *ck_handles_new(uint32_t epoch);
/* Frees the table, and each object still in it with drop (if not NULL). */
void ck_handles_free(struct ck_handles *h, void (*drop)(void *obj));

/* A new handle for obj; 0 when out of memory (0 is never a handle). */
uint64_t ck_handles_add(struct ck_handles *h, void *obj);
/* The object of a handle; NULL when the handle is unknown (foreign). */
void *ck_handles_get(struct ck_handles *h, uint64_t fh);
/* Registers obj under a foreign handle. Returns the object now registered:
 * obj, or the one another thread adopted first (then obj was not taken);
 * NULL when out of memory. */
void *ck_handles_adopt(struct ck_handles *h, uint64_t fh, void *obj);
/* Forgets a handle; returns its object (NULL if unknown). */
void *ck_handles_take(struct ck_handles *h, uint64_t fh);

#endif
