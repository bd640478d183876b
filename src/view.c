#include "view.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The wrappers: DataParallel and DistributedDataParallel hold the model as
 * `module`, torch.compile's OptimizedModule as `_orig_mod`. */
const struct ck_view ck_view_plain = {
	.name = "plain", .strip = {"module.", "_orig_mod."}, .nstrip = 2, .clean = true};
const struct ck_view ck_view_ddp = {
	.name = "ddp", .strip = {"module.", "_orig_mod."}, .nstrip = 2, .add = "module.", .clean = true};

/* Wrappers that may wrap any submodule, so their names stand anywhere in a
 * key: FSDP (and its 1.x FlattenParamsWrapper), activation checkpointing,
 * torch.compile. torch's clean_tensor_name and the FQNs of distributed
 * checkpoint drop them; `module` is not among them: inside a key it is a
 * real submodule (DDP wraps only the whole model). */
static bool is_inner_wrapper(const char *c, size_t n)
{
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(c, lit, n) == 0)
	/* every one starts with '_' and is 9 bytes or more: most components are
	 * told apart by their first byte */
	if (n < 9 || c[0] != '_')
		return false;
	return IS("_fsdp_wrapped_module") || IS("_fpw_module") || IS("_checkpoint_wrapped_module") ||
	       IS("_orig_mod");
#undef IS
}

/* Writes the key without its inner wrapper components to s (room for len
 * bytes: it only shrinks) and returns its length. A tensor key's last
 * component is the tensor's own name and stays; a metadata key names
 * modules only, so its last component may go too. */
static size_t clean(const char *key, size_t len, int meta, char *s)
{
	size_t n = 0;
	bool first = true;

	if (!memchr(key, '_', len)) { /* no wrapper in it: most keys */
		memcpy(s, key, len);
		return len;
	}
	for (size_t at = 0; at <= len;) {
		const char *dot = memchr(key + at, '.', len - at);
		size_t cl = dot ? (size_t)(dot - (key + at)) : len - at;

		if (!is_inner_wrapper(key + at, cl) || (!dot && !meta)) {
			if (!first)
				s[n++] = '.';
			first = false;
			memcpy(s + n, key + at, cl);
			n += cl;
		}
		at += cl + 1;
	}
	return n;
}

/* Strips leading wrapper components. In a metadata key a component may also
 * be the whole remaining name ("module" is the wrapped root). */
static size_t strip(const struct ck_view *v, const char *key, size_t len, int meta)
{
	size_t at = 0;
	int again = 1;

	while (again) {
		again = 0;
		for (size_t i = 0; i < v->nstrip; i++) {
			if (at < len && key[at] != v->strip[i][0])
				continue; /* neither below can match */
			size_t pl = strlen(v->strip[i]);
			if (len - at >= pl && memcmp(key + at, v->strip[i], pl) == 0) {
				at += pl;
				again = 1;
			} else if (meta && len - at == pl - 1 && memcmp(key + at, v->strip[i], pl - 1) == 0) {
				return len;
			}
		}
	}
	return at;
}

/* The bytes rename_key may write for a key of len bytes. */
static size_t rename_room(const struct ck_view *v, size_t len)
{
	return (v->add ? strlen(v->add) : 0) + len + 1;
}

/* Writes the new name, NUL-terminated, to s (rename_room bytes) and returns
 * its length. The key is cleaned where the new name will stand, after room
 * for the prefix to add; stripping and adding then move only what stays. */
static size_t rename_key(const struct ck_view *v, const char *key, size_t len, int meta, char *s)
{
	size_t room = v->add ? strlen(v->add) : 0, al = room, kl, at;

	if (v->clean) {
		kl = clean(key, len, meta, s + room);
	} else {
		memcpy(s + room, key, len);
		kl = len;
	}
	at = strip(v, s + room, kl, meta);
	kl -= at;
	/* In metadata the root is "", so adding "module." to it gives "module". */
	if (meta && al && kl == 0)
		al--;
	memmove(s + al, s + room + at, kl);
	memcpy(s, v->add ? v->add : "", al);
	s[al + kl] = 0;
	return al + kl;
}

static char *rename_alloc(const struct ck_view *v, const char *key, size_t len, int meta, size_t *outlen)
{
	char *s = malloc(rename_room(v, len));

	if (s)
		*outlen = rename_key(v, key, len, meta, s);
	return s;
}

char *ck_view_key(const struct ck_view *v, const char *key, size_t len, size_t *outlen)
{
	return rename_alloc(v, key, len, 0, outlen);
}

char *ck_view_meta_key(const struct ck_view *v, const char *key, size_t len, size_t *outlen)
{
	return rename_alloc(v, key, len, 1, outlen);
}

size_t ck_view_rename_into(const struct ck_view *v, const char *key, size_t len, bool meta, struct ck_buf *out)
{
	size_t n;

	if (ck_buf_reserve(out, rename_room(v, len)))
		return 0;
	n = rename_key(v, key, len, meta, (char *)out->data + out->len);
	out->len += n;
	return n;
}

static bool valid_name(const char *s, size_t n)
{
	if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-", s[i]))
			return false;
	return true;
}

int ck_view_parse(const char *spec, struct ck_view *v, struct ck_err *e)
{
	const char *p = strchr(spec, ':');
	size_t nl = p ? (size_t)(p - spec) : strlen(spec);

	memset(v, 0, sizeof(*v));
	if (!valid_name(spec, nl))
		return ck_err_set(e, EINVAL, "view=%s: the name must be letters, digits, '_', '.' or '-'", spec);
	if (!(v->name = strndup(spec, nl)))
		return ck_err_nomem(e);
	while (p) {
		const char *item = p + 1, *val;
		size_t len;

		p = strchr(item, ':');
		len = p ? (size_t)(p - item) : strlen(item);
		bool strip = len > 6 && strncmp(item, "strip=", 6) == 0, add = len > 4 && strncmp(item, "add=", 4) == 0;
		if (!strip && !add)
			goto bad;
		val = item + (strip ? 6 : 4);
		len -= (size_t)(val - item);
		if (val[len - 1] != '.') {
			ck_err_set(e, EINVAL, "view=%s: prefix '%.*s' must end with '.'", spec, (int)len, val);
			goto fail;
		}
		if ((strip && v->nstrip == CK_VIEW_MAX_STRIP) || (add && v->add)) {
			ck_err_set(e, EINVAL, "view=%s: too many %s= items", spec, strip ? "strip" : "add");
			goto fail;
		}
		char *copy = strndup(val, len);
		if (!copy) {
			ck_err_nomem(e);
			goto fail;
		}
		if (strip)
			v->strip[v->nstrip++] = copy;
		else
			v->add = copy;
	}
	if (v->nstrip || v->add)
		return 0;
bad:
	ck_err_set(e, EINVAL, "view=%s: expected NAME:strip=PREFIX[:strip=PREFIX...][:add=PREFIX]", spec);
fail:
	ck_view_clear(v);
	return -1;
}

void ck_view_clear(struct ck_view *v)
{
	free((char *)v->name);
	for (size_t i = 0; i < v->nstrip; i++)
		free((char *)v->strip[i]);
	free((char *)v->add);
	memset(v, 0, sizeof(*v));
}
