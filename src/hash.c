#include "hash.h"

#include <stdlib.h>

void *ck_hash_malloc(size_t n)
{
	return malloc(n);
}
