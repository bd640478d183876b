/* The torch.save zip archive. Only the end records, the central directory
 * and data.pkl are read; tensor records are never touched. The view keeps
 * every record but data.pkl byte for byte and shifts them by a multiple of
 * 4096, so each keeps its alignment and view pages line up with source
 * pages: the layout is [records before data.pkl][new data.pkl record]
 * [the rest of the records, from the source][new central directory]. */
#include "torchzip.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>
#include "pickle.h"

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_DESCRIPTOR 0x08074b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOCATOR64 0x07064b50u
#define EXTRA_ZIP64 0x0001u
#define EXTRA_PAD 0x4246u /* "FB": the padding field torch's writer uses */
#define U32_MAX_FIELD 0xFFFFFFFFu
#define SHIFT_UNIT 4096u
#define EOCD_LEN 22u
#define EOCD64_LEN 56u
#define LOCATOR64_LEN 20u
#define CENTRAL_LEN 46u
#define LOCAL_LEN 30u

struct entry {
	const uint8_t *hdr;           /* the 46-byte fixed part in the central directory */
	const uint8_t *name, *extra, *comment;
	uint16_t name_len, extra_len, comment_len;
	uint64_t usize, csize, lho;   /* zip64 values resolved */
};

struct archive {
	const struct ck_src *src;
	uint8_t *cd;                  /* the central directory bytes */
	uint64_t cd_off, cd_size;
	struct entry *ents;
	size_t n;
	uint8_t *comment;             /* the archive comment, kept */
	uint16_t comment_len;
	const char *refusal;          /* what torch's reader refuses in the end records, or NULL */
	uint64_t refusal_at;
	struct ck_err *e;
};

static int bad(struct archive *a, uint64_t off, const char *what)
{
	return ck_err_set(a->e, EIO, "zip offset %llu: %s", (unsigned long long)off, what);
}

/* Notes a rule of torch's reader that the archive breaks: an error only
 * once the archive is known to be a checkpoint (any zip may break them). */
static void refuse(struct archive *a, uint64_t off, const char *what)
{
	if (!a->refusal) {
		a->refusal = what;
		a->refusal_at = off;
	}
}

/* ---- reading ------------------------------------------------------------ */

/* Finds the end of central directory record and, through the zip64 locator
 * when there is one, the central directory's place and size. */
static int read_end(struct archive *a, uint64_t *n_entries)
{
	const struct ck_src *s = a->src;
	uint64_t tail_len = s->size < 0xFFFF + EOCD_LEN + LOCATOR64_LEN ? s->size : 0xFFFF + EOCD_LEN + LOCATOR64_LEN;
	uint64_t tail_off = s->size - tail_len, eocd = UINT64_MAX;
	uint8_t *t = malloc(tail_len ? tail_len : 1);
	int rc = -1;

	if (!t)
		return ck_err_nomem(a->e);
	if (ck_src_read(s, t, tail_len, tail_off, a->e))
		goto out;
	for (uint64_t i = tail_len >= EOCD_LEN ? tail_len - EOCD_LEN + 1 : 0; i-- > 0;) {
		if (ck_le32(t + i) == SIG_EOCD && i + EOCD_LEN + ck_le16(t + i + 20) <= tail_len) {
			eocd = i;
			break;
		}
	}
	if (eocd == UINT64_MAX) {
		rc = bad(a, s->size, "no end of central directory record");
		goto out;
	}
	const uint8_t *r = t + eocd;
	/* What torch's reader (miniz) refuses is refused here too, never
	 * repaired by the rewrite: other disks, entry counts that disagree. */
	uint32_t disk = ck_le16(r + 4), cd_disk = ck_le16(r + 6);
	uint64_t on_disk = ck_le16(r + 8);
	*n_entries = ck_le16(r + 10);
	a->cd_size = ck_le32(r + 12);
	a->cd_off = ck_le32(r + 16);
	a->comment_len = ck_le16(r + 20);
	if (!(a->comment = malloc(a->comment_len + 1u))) {
		rc = ck_err_nomem(a->e);
		goto out;
	}
	memcpy(a->comment, r + EOCD_LEN, a->comment_len);
	uint64_t cd_limit = tail_off + eocd;
	if (eocd >= LOCATOR64_LEN && ck_le32(r - LOCATOR64_LEN) == SIG_LOCATOR64) {
		uint64_t z = ck_le64(r - LOCATOR64_LEN + 8);
		uint8_t z64[EOCD64_LEN];
		if (z > cd_limit - LOCATOR64_LEN || cd_limit - LOCATOR64_LEN - z < EOCD64_LEN) {
			rc = bad(a, cd_limit - LOCATOR64_LEN, "zip64 locator points outside the file");
			goto out;
		}
		if (ck_src_read(s, z64, sizeof(z64), z, a->e))
			goto out;
		if (ck_le32(z64) != SIG_EOCD64) {
			rc = bad(a, z, "zip64 end record signature missing");
			goto out;
		}
		if (ck_le32(r - LOCATOR64_LEN + 16) != 1 || ck_le64(z64 + 4) < EOCD64_LEN - 12)
			refuse(a, z, "zip64 end records of a multi-disk archive or of a wrong size");
		disk = ck_le32(z64 + 16);
		cd_disk = ck_le32(z64 + 20);
		on_disk = ck_le64(z64 + 24);
		*n_entries = ck_le64(z64 + 32);
		a->cd_size = ck_le64(z64 + 40);
		a->cd_off = ck_le64(z64 + 48);
		cd_limit = z;
	}
	if ((disk | cd_disk) != 0 && (disk != 1 || cd_disk != 1))
		refuse(a, tail_off + eocd, "multi-disk archive");
	if (on_disk != *n_entries)
		refuse(a, tail_off + eocd, "entries on this disk differ from the total");
	if (a->cd_off > cd_limit || a->cd_size > cd_limit - a->cd_off) {
		rc = bad(a, a->cd_off, "central directory lies outside the file");
		goto out;
	}
	if (*n_entries > a->cd_size / CENTRAL_LEN) {
		rc = bad(a, a->cd_off, "entry count does not fit the central directory");
		goto out;
	}
	rc = 0;
out:
	free(t);
	return rc;
}

/* Resolves the 0xFFFFFFFF fields of an entry from its zip64 extra. */
static int resolve_zip64(struct archive *a, struct entry *x, uint64_t at)
{
	bool need_u = ck_le32(x->hdr + 24) == U32_MAX_FIELD, need_c = ck_le32(x->hdr + 20) == U32_MAX_FIELD,
	     need_o = ck_le32(x->hdr + 42) == U32_MAX_FIELD;
	size_t p = 0;

	x->usize = ck_le32(x->hdr + 24);
	x->csize = ck_le32(x->hdr + 20);
	x->lho = ck_le32(x->hdr + 42);
	if (!need_u && !need_c && !need_o)
		return 0;
	while (p + 4 <= x->extra_len) {
		uint16_t id = ck_le16(x->extra + p), len = ck_le16(x->extra + p + 2);
		const uint8_t *f = x->extra + p + 4, *end = f + len;
		if (p + 4 + len > x->extra_len)
			break;
		if (id == EXTRA_ZIP64) {
			if (need_u && f + 8 <= end)
				x->usize = ck_le64(f), f += 8;
			if (need_c && f + 8 <= end)
				x->csize = ck_le64(f), f += 8;
			if (need_o && f + 8 <= end)
				x->lho = ck_le64(f), f += 8;
			if ((need_u && x->usize == U32_MAX_FIELD) || (need_c && x->csize == U32_MAX_FIELD) ||
			    (need_o && x->lho == U32_MAX_FIELD))
				break;
			return 0;
		}
		p += 4u + len;
	}
	return bad(a, at, "zip64 extra field missing or short");
}

/* The per-entry checks of torch's reader, so that an archive it refuses
 * is not turned into one it loads. */
static int check_entry(struct archive *a, const struct entry *x, uint64_t at)
{
	uint16_t flags = ck_le16(x->hdr + 8), method = ck_le16(x->hdr + 10);

	if (x->lho > a->cd_off || a->cd_off - x->lho < LOCAL_LEN)
		return bad(a, at, "local header offset lies outside the records");
	if (flags & 0x41)
		return bad(a, at, "encrypted entry");
	if (method == 0 && x->csize != x->usize)
		return bad(a, at, "stored entry with different compressed and real sizes");
	if (x->usize && !x->csize)
		return bad(a, at, "entry with data but no compressed bytes");
	if (x->csize > a->cd_off - x->lho - LOCAL_LEN)
		return bad(a, at, "entry data runs into the central directory");
	return 0;
}

static int read_central(struct archive *a, uint64_t n_entries)
{
	uint64_t p = 0;

	if (!(a->ents = calloc(n_entries ? n_entries : 1, sizeof(*a->ents))))
		return ck_err_nomem(a->e);
	ck_prefault(a->ents, n_entries * sizeof(*a->ents));
	if (!a->cd) { /* classify did not keep it */
		if (!(a->cd = malloc(a->cd_size ? a->cd_size : 1)))
			return ck_err_nomem(a->e);
		ck_prefault(a->cd, a->cd_size);
		if (ck_src_read(a->src, a->cd, a->cd_size, a->cd_off, a->e))
			return -1;
	}
	for (a->n = 0; a->n < n_entries; a->n++) {
		struct entry *x = &a->ents[a->n];
		uint64_t at = a->cd_off + p;

		if (a->cd_size - p < CENTRAL_LEN || ck_le32(a->cd + p) != SIG_CENTRAL)
			return bad(a, at, "central directory entry signature missing");
		x->hdr = a->cd + p;
		x->name_len = ck_le16(x->hdr + 28);
		x->extra_len = ck_le16(x->hdr + 30);
		x->comment_len = ck_le16(x->hdr + 32);
		if ((uint64_t)CENTRAL_LEN + x->name_len + x->extra_len + x->comment_len > a->cd_size - p)
			return bad(a, at, "central directory entry runs past the directory");
		x->name = x->hdr + CENTRAL_LEN;
		x->extra = x->name + x->name_len;
		x->comment = x->extra + x->extra_len;
		if (resolve_zip64(a, x, at))
			return -1;
		if (check_entry(a, x, at))
			return -1;
		p += CENTRAL_LEN + x->name_len + x->extra_len + x->comment_len;
	}
	return 0;
}

static void archive_free(struct archive *a)
{
	free(a->cd);
	free(a->ents);
	free(a->comment);
}

/* Whether name is <dir>/<rec>; torch's reader (miniz) matches record
 * names case-insensitively. Inline: rec's length is then a constant, and
 * most names are told apart by their length alone. */
static inline bool is_record(const uint8_t *name, size_t nl, const uint8_t *dir, size_t dl, const char *rec)
{
	size_t rl = strlen(rec);

	return nl == dl + 1 + rl && memcmp(name, dir, dl) == 0 && name[dl] == '/' &&
	       strncasecmp((const char *)name + dl + 1, rec, rl) == 0;
}

static const struct entry *find(const struct archive *a, const uint8_t *dir, size_t dl, const char *rec)
{
	for (size_t i = 0; i < a->n; i++)
		if (is_record(a->ents[i].name, a->ents[i].name_len, dir, dl, rec))
			return &a->ents[i];
	return NULL;
}

/* What the names of a zip tell, gathered one entry at a time. */
struct names {
	uint8_t *dir;     /* the first entry's directory */
	size_t dl;
	bool torch_like;  /* every name is in that directory */
	bool constants, version, pkl;
};

static int see_name(struct names *nm, const uint8_t *name, size_t nl, struct ck_err *e)
{
	const uint8_t *slash;

	if (!nm->dir) {
		if (!(slash = memchr(name, '/', nl)))
			return 0;
		nm->dl = (size_t)(slash - name);
		if (!(nm->dir = malloc(nm->dl + 1)))
			return ck_err_nomem(e);
		memcpy(nm->dir, name, nm->dl + 1);
		nm->torch_like = true;
	}
	if (nl <= nm->dl || memcmp(name, nm->dir, nm->dl + 1) != 0)
		nm->torch_like = false; /* torch.load itself refuses such archives */
	nm->constants |= is_record(name, nl, nm->dir, nm->dl, "constants.pkl");
	nm->version |= is_record(name, nl, nm->dir, nm->dl, "version") ||
		       is_record(name, nl, nm->dir, nm->dl, ".data/version");
	nm->pkl |= is_record(name, nl, nm->dir, nm->dl, "data.pkl");
	return 0;
}

#define NAME_WINDOW ((size_t)256 << 10) /* holds any one entry: 46 + 3 * 65535 bytes */
#define CD_KEEP ((uint64_t)4 << 20)       /* a checkpoint's directory up to this is read once, whole */

static uint64_t central_len(const uint8_t *h)
{
	return (uint64_t)CENTRAL_LEN + ck_le16(h + 28) + ck_le16(h + 30) + ck_le16(h + 32);
}

/* Reads the directory bytes after the window [0, *wl) too, so that the
 * window is the whole directory, read once; its size is claimed first. */
static int read_rest(struct archive *a, uint8_t **w, uint64_t *wl)
{
	uint8_t *all;

	if (ck_src_claim(a->src, a->cd_size, a->e))
		return -1;
	if (!(all = realloc(*w, a->cd_size)))
		return ck_err_nomem(a->e);
	*w = all;
	ck_prefault(all + *wl, a->cd_size - *wl);
	if (ck_src_read(a->src, all + *wl, a->cd_size - *wl, a->cd_off + *wl, a->e))
		return -1;
	*wl = a->cd_size;
	return 0;
}

/* What kind of zip this is, from the entry names alone, reading the central
 * directory a window at a time: an ordinary zip (a large directory, entries
 * torch would refuse) is classified, never refused. The directory of what
 * looks like a checkpoint, up to CD_KEEP, is read whole instead and kept
 * for the checkpoint's steps. */
static int classify(struct archive *a, uint64_t n_entries, enum ck_format *kind, size_t *dl)
{
	struct names nm = {0};
	uint64_t p = 0, wp = 0, wl = 0, k = 0;
	size_t first = a->cd_size < NAME_WINDOW ? (size_t)a->cd_size : NAME_WINDOW;
	uint8_t *w = malloc(first ? first : 1);
	int rc = -1;

	if (!w)
		return ck_err_nomem(a->e);
	ck_prefault(w, first);
	for (; k < n_entries && (k == 0 || nm.torch_like); k++) {
		uint64_t have = wp + wl - p;
		if ((wl == 0 || have < CENTRAL_LEN || have < central_len(w + (p - wp))) && wp + wl < a->cd_size) {
			if (wp == 0 && wl && nm.torch_like && a->cd_size <= CD_KEEP) {
				if (read_rest(a, &w, &wl))
					goto out;
			} else {
				wp = p;
				wl = a->cd_size - p < NAME_WINDOW ? a->cd_size - p : NAME_WINDOW;
				if (ck_src_read(a->src, w, wl, a->cd_off + wp, a->e))
					goto out;
			}
		}
		const uint8_t *h = w + (p - wp);
		if (wp + wl - p < CENTRAL_LEN || ck_le32(h) != SIG_CENTRAL) {
			rc = bad(a, a->cd_off + p, "central directory entry signature missing");
			goto out;
		}
		uint64_t len = central_len(h);
		if (len > wp + wl - p) {
			rc = bad(a, a->cd_off + p, "central directory entry runs past the directory");
			goto out;
		}
		if (see_name(&nm, h + CENTRAL_LEN, ck_le16(h + 28), a->e))
			goto out;
		if (!nm.dir)
			break; /* the first name has no directory: no torch archive */
		p += len;
	}
	if (!nm.dir || !nm.torch_like)
		*kind = CK_FORMAT_OTHER;
	else if (nm.constants)
		*kind = CK_FORMAT_TORCHSCRIPT;
	else
		*kind = nm.version && nm.pkl ? CK_FORMAT_TORCHZIP : CK_FORMAT_OTHER;
	*dl = nm.dl;
	rc = 0;
out:
	free(nm.dir);
	if (!rc && wp == 0 && wl == a->cd_size)
		a->cd = w; /* all of it: read_central needs it again */
	else
		free(w);
	return rc;
}

/* A checkpoint must pass what torch's reader checks before it gets a view
 * (a rewrite would otherwise repair what torch refuses). */
static int check_checkpoint(struct archive *a, uint64_t n_entries, size_t dl, const struct entry **pkl)
{
	if (a->refusal)
		return bad(a, a->refusal_at, a->refusal);
	if (a->cd_size > CK_ZIP_MAX_CD_BYTES)
		return bad(a, a->cd_off, "checkpoint's central directory larger than the 256 MiB limit");
	if (read_central(a, n_entries))
		return -1;
	if (!(*pkl = find(a, a->ents[0].name, dl, "data.pkl")))
		return bad(a, a->cd_off, "data.pkl missing from the central directory");
	return 0;
}

/* The end of data.pkl's record: the next local header, or the directory. */
static int record_end(const struct archive *a, const struct entry *pkl, uint64_t data_end, uint64_t *end)
{
	*end = a->cd_off;
	for (size_t i = 0; i < a->n; i++) {
		uint64_t o = a->ents[i].lho;
		if (&a->ents[i] == pkl)
			continue;
		if (o >= pkl->lho && o < data_end)
			return ck_err_set(a->e, EIO, "zip offset %llu: entry '%.*s' overlaps data.pkl",
					  (unsigned long long)o, (int)a->ents[i].name_len, a->ents[i].name);
		if (o >= data_end && o < *end)
			*end = o;
	}
	return 0;
}

static int inflate_exact(struct archive *a, const uint8_t *in, uint64_t inlen, uint8_t *out, uint64_t outlen,
			 uint64_t at)
{
	z_stream z = {0};
	int r;

	if (inflateInit2(&z, -MAX_WBITS) != Z_OK)
		return ck_err_nomem(a->e);
	z.next_in = (uint8_t *)in;
	z.avail_in = (uInt)inlen;
	z.next_out = out;
	z.avail_out = (uInt)outlen;
	r = inflate(&z, Z_FINISH);
	inflateEnd(&z);
	if (r != Z_STREAM_END || z.total_out != outlen)
		return bad(a, at, "deflated data.pkl does not inflate to its recorded size");
	return 0;
}

/* Reads data.pkl's bytes (inflating a deflated one) and where its data ends. */
static int read_pickle(struct archive *a, const struct entry *x, uint8_t **pkl, uint64_t *data_end)
{
	uint8_t lh[LOCAL_LEN], *raw = NULL;
	uint16_t method = ck_le16(x->hdr + 10);
	uint64_t data;
	int rc = -1;

	/* torch's reader extracts nothing from a directory entry and unpickles
	 * whatever memory it got: refuse rather than guess */
	if (ck_le32(x->hdr + 38) & 0x10)
		return bad(a, x->lho, "data.pkl is marked as a directory (MS-DOS attribute)");
	if (ck_src_read(a->src, lh, sizeof(lh), x->lho, a->e))
		return -1;
	if (ck_le32(lh) != SIG_LOCAL)
		return bad(a, x->lho, "data.pkl local header signature missing");
	data = x->lho + LOCAL_LEN + ck_le16(lh + 26) + ck_le16(lh + 28);
	if (data > a->cd_off || x->csize > a->cd_off - data)
		return bad(a, x->lho, "data.pkl runs into the central directory");
	if (x->usize > CK_ZIP_MAX_PICKLE_BYTES || x->csize > CK_ZIP_MAX_PICKLE_BYTES)
		return bad(a, x->lho, "data.pkl larger than the 1 GiB limit");
	if (method != 0 && method != 8)
		return bad(a, x->lho, "data.pkl compressed with a method other than deflate");
	*data_end = data + x->csize;
	if (ck_src_claim(a->src, x->usize + (method == 8 ? x->csize : 0), a->e))
		return ck_err_context(a->e, "zip offset %llu: data.pkl of %llu bytes: ", (unsigned long long)x->lho,
				      (unsigned long long)x->usize);
	if (!(*pkl = malloc(x->usize ? x->usize : 1)) || (method == 8 && !(raw = malloc(x->csize ? x->csize : 1))))
		goto nomem;
	ck_prefault(*pkl, x->usize);
	ck_prefault(raw, x->csize);
	if (ck_src_read(a->src, method == 8 ? raw : *pkl, x->csize, data, a->e))
		goto out;
	if (method == 8 && inflate_exact(a, raw, x->csize, *pkl, x->usize, data))
		goto out;
	rc = 0;
	goto out;
nomem:
	rc = ck_err_nomem(a->e);
out:
	free(raw);
	return rc;
}

/* ---- writing --------------------------------------------------------------- */

static bool needs64(uint64_t v) { return v >= U32_MAX_FIELD; }
static uint32_t field32(uint64_t v) { return needs64(v) ? U32_MAX_FIELD : (uint32_t)v; }

/* The zip64 extra for the fields that overflow, in the order the spec sets. */
static void put_zip64_extra(struct ck_buf *b, bool sizes, uint64_t usize, uint64_t csize, bool off, uint64_t lho)
{
	if (!sizes && !off)
		return;
	ck_buf_u16le(b, EXTRA_ZIP64);
	ck_buf_u16le(b, (uint16_t)((sizes ? 16 : 0) + (off ? 8 : 0)));
	if (sizes) {
		ck_buf_u64le(b, usize);
		ck_buf_u64le(b, csize);
	}
	if (off)
		ck_buf_u64le(b, lho);
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)v), put16(p + 2, (uint16_t)(v >> 16)); }

/* Appends to b (NULL: only counts) the extras of x that put_central keeps:
 * all but zip64, whose field it writes anew. Returns their length. */
static size_t kept_extras(struct ck_buf *b, const struct entry *x)
{
	size_t p = 0, kept = 0;

	while (p + 4 <= x->extra_len && p + 4u + ck_le16(x->extra + p + 2) <= x->extra_len) {
		size_t flen = 4u + ck_le16(x->extra + p + 2);
		if (ck_le16(x->extra + p) != EXTRA_ZIP64) {
			if (b)
				ck_buf_append(b, x->extra + p, flen);
			kept += flen;
		}
		p += flen;
	}
	return kept;
}

/* One central directory entry, from the source's with new values; extras
 * other than zip64 are kept. The fixed part is put together in place: the
 * directory of a 20,000-tensor checkpoint is 20,000 of them. */
static void put_central(struct ck_buf *b, const struct entry *x, uint16_t needed, uint16_t flags, uint16_t method,
			uint32_t crc, uint64_t usize, uint64_t csize, uint64_t lho)
{
	bool sizes = needs64(usize) || needs64(csize), off = needs64(lho);
	size_t zlen = sizes || off ? 4u + (sizes ? 16u : 0u) + (off ? 8u : 0u) : 0;
	size_t extra_len = zlen + kept_extras(NULL, x);
	uint8_t h[CENTRAL_LEN];

	memcpy(h, x->hdr, 6);                  /* signature, made by */
	put16(h + 6, needed);
	put16(h + 8, flags);
	put16(h + 10, method);
	memcpy(h + 12, x->hdr + 12, 4);        /* time, date */
	put32(h + 16, crc);
	put32(h + 20, sizes ? U32_MAX_FIELD : (uint32_t)csize);
	put32(h + 24, sizes ? U32_MAX_FIELD : (uint32_t)usize);
	put16(h + 28, x->name_len);
	put16(h + 30, (uint16_t)(extra_len <= 0xFFFF ? extra_len : 0));
	put16(h + 32, x->comment_len);
	memcpy(h + 34, x->hdr + 34, 8);        /* disk, internal and external attributes */
	put32(h + 42, field32(lho));
	ck_buf_append(b, h, sizeof(h));
	ck_buf_append(b, x->name, x->name_len);
	if (extra_len <= 0xFFFF) {
		put_zip64_extra(b, sizes, usize, csize, off, lho);
		kept_extras(b, x);
	}
	ck_buf_append(b, x->comment, x->comment_len);
}

/* The zip version a stored record needs: 4.5 with zip64 fields. */
static uint16_t pickle_needed(bool z64) { return z64 ? 45 : 0; }

/* The most bytes put_pickle_head writes for entry x. */
static size_t pickle_head_max(const struct entry *x)
{
	return LOCAL_LEN + x->name_len + (4u + 16u + 8u) /* the largest zip64 extra */ + 4u + SHIFT_UNIT - 1u;
}

/* data.pkl's new record as torch's writer lays it out (stored, descriptor,
 * FB padding), with a pad that makes the record end at `end_mod` modulo
 * SHIFT_UNIT so that every later record keeps its page offset. The head
 * is all that precedes the pickle's len bytes, the tail the descriptor. */
static void put_pickle_head(struct ck_buf *b, const struct entry *x, uint64_t lho, uint64_t len, uint64_t end_mod)
{
	bool sizes = needs64(len), off = needs64(lho), z64 = sizes || off;
	uint64_t zlen = z64 ? 4u + (sizes ? 16u : 0u) + (off ? 8u : 0u) : 0;
	uint64_t desc = z64 ? 24 : 16;
	uint64_t before_pad = lho + LOCAL_LEN + x->name_len + zlen + 4;
	uint16_t pad = (uint16_t)((end_mod + SHIFT_UNIT - (before_pad + len + desc) % SHIFT_UNIT) % SHIFT_UNIT);

	ck_buf_u32le(b, SIG_LOCAL);
	ck_buf_u16le(b, pickle_needed(z64));
	ck_buf_u16le(b, 0x0808);               /* sizes in the descriptor, UTF-8 name */
	ck_buf_u16le(b, 0);                    /* stored */
	ck_buf_append(b, x->hdr + 12, 4);      /* the entry's time and date, which readers compare */
	ck_buf_fill(b, 0, 4 + 4 + 4);          /* crc and sizes follow the data */
	ck_buf_u16le(b, x->name_len);
	ck_buf_u16le(b, (uint16_t)(zlen + 4 + pad));
	ck_buf_append(b, x->name, x->name_len);
	/* locally, a zip64 size pair has a zero compressed size, as torch writes it */
	put_zip64_extra(b, sizes, len, 0, off, lho);
	ck_buf_u16le(b, EXTRA_PAD);
	ck_buf_u16le(b, pad);
	ck_buf_fill(b, 'Z', pad);
}

static void put_pickle_tail(struct ck_buf *b, uint64_t lho, uint64_t len, uint32_t crc)
{
	ck_buf_u32le(b, SIG_DESCRIPTOR);
	ck_buf_u32le(b, crc);
	if (needs64(len) || needs64(lho)) {
		ck_buf_u64le(b, len);
		ck_buf_u64le(b, len);
	} else {
		ck_buf_u32le(b, (uint32_t)len);
		ck_buf_u32le(b, (uint32_t)len);
	}
}

static void put_end_records(struct ck_buf *b, uint64_t n, uint64_t cd_off, uint64_t cd_size,
			    const uint8_t *comment, uint16_t comment_len)
{
	uint64_t z = cd_off + cd_size;

	ck_buf_u32le(b, SIG_EOCD64);
	ck_buf_u64le(b, EOCD64_LEN - 12);
	ck_buf_u16le(b, 0x031E);
	ck_buf_u16le(b, 0x002D);
	ck_buf_u32le(b, 0);
	ck_buf_u32le(b, 0);
	ck_buf_u64le(b, n);
	ck_buf_u64le(b, n);
	ck_buf_u64le(b, cd_size);
	ck_buf_u64le(b, cd_off);
	ck_buf_u32le(b, SIG_LOCATOR64);
	ck_buf_u32le(b, 0);
	ck_buf_u64le(b, z);
	ck_buf_u32le(b, 1);
	ck_buf_u32le(b, SIG_EOCD);
	ck_buf_u32le(b, 0);
	ck_buf_u16le(b, (uint16_t)(n < 0xFFFF ? n : 0xFFFF));
	ck_buf_u16le(b, (uint16_t)(n < 0xFFFF ? n : 0xFFFF));
	ck_buf_u32le(b, field32(cd_size));
	ck_buf_u32le(b, field32(cd_off));
	ck_buf_u16le(b, comment_len);
	ck_buf_append(b, comment, comment_len);
}

/* Lays the view out around the new pickle, which the rewriter wrote into
 * lb's memory at `room`, after pickle_head_max(pkl_ent) bytes left for its
 * record's head: the head goes right before it, then the descriptor and
 * the new central directory follow, and nothing is copied. */
static int relayout(struct archive *a, const struct entry *pkl_ent, struct ck_layout_builder *lb, size_t room,
		    uint64_t old_end, struct ck_layout **out)
{
	struct ck_buf head = {0};
	struct ck_buf *mem = &lb->mem;
	uint64_t len = mem->len - room, cd_off, cd_at, rec_len, rec_at;
	uint32_t crc = (uint32_t)crc32(0L, Z_NULL, 0);
	int64_t shift;

	for (size_t done = 0; done < len;) { /* crc32's length is an uInt */
		size_t k = len - done < (1u << 30) ? len - done : (1u << 30);
		crc = (uint32_t)crc32(crc, mem->data + room + done, (uInt)k);
		done += k;
	}
	put_pickle_head(&head, pkl_ent, pkl_ent->lho, len, old_end % SHIFT_UNIT);
	if (head.failed)
		return ck_err_nomem(a->e);
	rec_at = room - head.len;
	memcpy(mem->data + rec_at, head.data, head.len);
	ck_buf_free(&head);
	put_pickle_tail(mem, pkl_ent->lho, len, crc);
	rec_len = mem->len - rec_at;
	shift = (int64_t)(pkl_ent->lho + rec_len - old_end);
	cd_off = a->cd_off + (uint64_t)shift;
	cd_at = mem->len;
	/* about the source's directory, a bit more where zip64 fields appear */
	ck_buf_reserve(mem, a->cd_size + a->cd_size / 8 + EOCD64_LEN + LOCATOR64_LEN + EOCD_LEN + a->comment_len);
	for (size_t i = 0; i < a->n; i++) {
		const struct entry *x = &a->ents[i];
		if (x == pkl_ent)
			put_central(mem, x, pickle_needed(needs64(len) || needs64(x->lho)), 0x0808, 0, crc, len, len,
				    x->lho);
		else
			put_central(mem, x, ck_le16(x->hdr + 6), ck_le16(x->hdr + 8), ck_le16(x->hdr + 10),
				    ck_le32(x->hdr + 16), x->usize, x->csize,
				    x->lho > pkl_ent->lho ? x->lho + (uint64_t)shift : x->lho);
	}
	put_end_records(mem, a->n, cd_off, mem->len - cd_at, a->comment, a->comment_len);
	ck_layout_add_src(lb, 0, pkl_ent->lho);
	ck_layout_add_mem_at(lb, rec_at, rec_len);
	ck_layout_add_src(lb, old_end, a->cd_off - old_end);
	ck_layout_add_mem_at(lb, cd_at, mem->len - cd_at);
	*out = ck_layout_finish(lb, a->e);
	return *out ? 0 : -1;
}

/* ---- the steps of format.h ---------------------------------------------- */

/* What classifying read, kept for the checkpoint's own steps. */
struct zip_state {
	struct archive a;
	uint64_t n_entries;
	size_t dl;
};

bool ck_torchzip_detect(const uint8_t *head, size_t n, uint64_t size)
{
	return n >= 4 && memcmp(head, "PK\3\4", 4) == 0;
}

int ck_torchzip_classify(const struct ck_src *src, void **st, enum ck_format *fmt, struct ck_err *e)
{
	struct zip_state *z = calloc(1, sizeof(*z));

	*st = NULL;
	*fmt = CK_FORMAT_OTHER;
	if (!z)
		return ck_err_nomem(e);
	z->a = (struct archive){.src = src, .e = e};
	if (read_end(&z->a, &z->n_entries) || classify(&z->a, z->n_entries, fmt, &z->dl)) {
		ck_torchzip_release(z);
		return -1;
	}
	*st = z;
	return 0;
}

uint64_t ck_torchzip_records(void *st)
{
	return ((const struct zip_state *)st)->n_entries;
}

void ck_torchzip_release(void *st)
{
	struct zip_state *z = st;

	if (z)
		archive_free(&z->a);
	free(z);
}

/* Checks a checkpoint by torch's rules and reads data.pkl's bytes (*orig,
 * owned by the caller) and where its data ends. */
static int load_checkpoint(struct zip_state *z, struct ck_err *e, const struct entry **pkl_ent, uint8_t **orig,
			   uint64_t *data_end)
{
	z->a.e = e;
	if (check_checkpoint(&z->a, z->n_entries, z->dl, pkl_ent))
		return -1;
	return read_pickle(&z->a, *pkl_ent, orig, data_end);
}

/* Names the record whose pickle the error was found in. */
static void pickle_context(struct archive *a, const struct entry *pkl_ent, uint64_t data_end)
{
	ck_err_context(a->e, "%.*s (data at file offset %llu%s): ", (int)pkl_ent->name_len, pkl_ent->name,
		       (unsigned long long)(data_end - pkl_ent->csize), ck_le16(pkl_ent->hdr + 10) ? ", deflated" : "");
}

int ck_torchzip_layout(const struct ck_src *src, void *st, const struct ck_view *v, struct ck_layout **out,
		       struct ck_err *e)
{
	struct zip_state *z = st;
	struct archive *a = &z->a;
	const struct entry *pkl_ent = NULL;
	struct ck_layout_builder lb = {0};
	uint8_t *orig = NULL;
	uint64_t data_end = 0, old_end = 0;
	size_t room;
	int rc = -1;

	*out = NULL;
	if (load_checkpoint(z, e, &pkl_ent, &orig, &data_end) || record_end(a, pkl_ent, data_end, &old_end))
		goto out;
	/* The pickle is written where the view's memory holds it, after room
	 * for its record's head. */
	room = pickle_head_max(pkl_ent);
	ck_buf_fill(&lb.mem, 0, room);
	if (lb.mem.failed)
		goto nomem;
	switch (ck_pickle_rewrite_src(src, orig, pkl_ent->usize, v, &lb.mem, e)) {
	case CK_PICKLE_ERROR:
		pickle_context(a, pkl_ent, data_end);
		goto out;
	case CK_PICKLE_UNCHANGED:
		rc = 0;
		goto out;
	case CK_PICKLE_REWRITTEN:
		rc = relayout(a, pkl_ent, &lb, room, old_end, out);
	}
	goto out;
nomem:
	rc = ck_err_nomem(e);
out:
	free(orig);
	ck_layout_builder_free(&lb);
	return rc;
}

int ck_torchzip_describe(const struct ck_src *src, void *st, int *protocol, ck_found_fn fn, void *ctx,
			 struct ck_err *e)
{
	struct zip_state *z = st;
	const struct entry *pkl_ent = NULL;
	uint8_t *orig = NULL;
	uint64_t data_end = 0;
	int rc = load_checkpoint(z, e, &pkl_ent, &orig, &data_end);

	if (!rc && (rc = ck_pickle_describe(orig, pkl_ent->usize, protocol, fn, ctx, e)))
		pickle_context(&z->a, pkl_ent, data_end);
	free(orig);
	return rc;
}
