/* Unit tests of the torch zip relayout. Views are checked by libzip, an
 * independent reader: consistency, CRCs, names and contents. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>
#include "buf.h"
#include "format.h"
#include "pickle.h"
#include "tap.h"
#include "torchzip.h"

#ifndef TEST_DATA
#define TEST_DATA "tests/data"
#endif

static char tmpdir[] = "/tmp/ckptfs-test-XXXXXX";

struct file {
	uint8_t *data;
	size_t len;
};

static struct file slurp(const char *path)
{
	struct file f = {0};
	struct stat st;
	int fd = open(path, O_RDONLY);

	if (fd < 0 || fstat(fd, &st) || !(f.data = malloc((size_t)st.st_size + 1)) ||
	    read(fd, f.data, (size_t)st.st_size) != st.st_size) {
		fprintf(stderr, "# cannot read %s: %s\n", path, strerror(errno));
		exit(99);
	}
	f.len = (size_t)st.st_size;
	close(fd);
	return f;
}

static void spit(const char *path, const void *p, size_t n)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, p, n) != (ssize_t)n) {
		fprintf(stderr, "# cannot write %s\n", path);
		exit(99);
	}
	close(fd);
}

/* Lays out the view of a file and writes it next to it; NULL layout means
 * the view is the source. Returns the layout result. */
static int view_of(const char *path, const struct ck_view *v, const char *out, enum ck_format *kind,
		   struct ck_err *e, int *identity)
{
	struct stat st;
	struct ck_layout *l = NULL;
	int fd = open(path, O_RDONLY), rc;

	memset(e, 0, sizeof(*e));
	fstat(fd, &st);
	struct ck_src s = {fd, (uint64_t)st.st_size, path};
	rc = ck_format_layout_as(CK_FORMAT_TORCHZIP, &s, v, &l, kind, e);
	*identity = rc == 0 && !l;
	if (l) {
		uint8_t *buf = malloc(l->size);
		ssize_t r = ck_layout_pread(l, fd, buf, l->size, 0);
		if (r != (ssize_t)l->size)
			rc = -2;
		else
			spit(out, buf, l->size);
		free(buf);
		ck_layout_free(l);
	}
	close(fd);
	return rc;
}

/* Every entry of a, read through libzip (which checks each CRC), equals
 * the same-named entry of b except data.pkl. */
static int same_records(const char *a, const char *b, char *why, size_t whylen)
{
	int err = 0;
	zip_t *za = zip_open(a, ZIP_RDONLY | ZIP_CHECKCONS, &err), *zb = za ? zip_open(b, ZIP_RDONLY | ZIP_CHECKCONS, &err) : NULL;
	int rc = 0;

	if (!za || !zb) {
		snprintf(why, whylen, "libzip refuses the archive (error %d)", err);
		rc = -1;
		goto out;
	}
	if (zip_get_num_entries(za, 0) != zip_get_num_entries(zb, 0)) {
		snprintf(why, whylen, "entry counts differ");
		rc = -1;
		goto out;
	}
	for (zip_int64_t i = 0; i < zip_get_num_entries(za, 0) && !rc; i++) {
		const char *na = zip_get_name(za, (zip_uint64_t)i, 0), *nb = zip_get_name(zb, (zip_uint64_t)i, 0);
		zip_stat_t sa, sb;
		if (!na || !nb || strcmp(na, nb)) {
			snprintf(why, whylen, "entry %lld named differently", (long long)i);
			rc = -1;
			break;
		}
		zip_stat_index(za, (zip_uint64_t)i, 0, &sa);
		zip_stat_index(zb, (zip_uint64_t)i, 0, &sb);
		char *ba = malloc(sa.size + 1), *bb = malloc(sb.size + 1);
		zip_file_t *fa = zip_fopen_index(za, (zip_uint64_t)i, 0), *fb = zip_fopen_index(zb, (zip_uint64_t)i, 0);
		zip_int64_t ra = fa ? zip_fread(fa, ba, sa.size) : -1, rb = fb ? zip_fread(fb, bb, sb.size) : -1;
		/* a wrong CRC surfaces when the stream is closed */
		if (ra < 0 || rb < 0 || (fa && zip_fclose(fa)) || (fb && zip_fclose(fb))) {
			snprintf(why, whylen, "%s: unreadable or bad CRC", na);
			rc = -1;
		} else if (!strstr(na, "data.pkl") && (ra != rb || memcmp(ba, bb, (size_t)ra))) {
			snprintf(why, whylen, "%s: contents differ", na);
			rc = -1;
		}
		free(ba);
		free(bb);
	}
out:
	if (za)
		zip_discard(za);
	if (zb)
		zip_discard(zb);
	return rc;
}

/* Data offset of every record, from its local header. */
static size_t data_offsets(const char *path, uint64_t *offs, char (*names)[128], size_t max)
{
	int err = 0;
	zip_t *z = zip_open(path, ZIP_RDONLY, &err);
	struct file f = slurp(path);
	size_t n = 0;

	for (zip_int64_t i = 0; z && i < zip_get_num_entries(z, 0) && n < max; i++) {
		/* the local header offset: scan for the record by name after PK\3\4 */
		const char *name = zip_get_name(z, (zip_uint64_t)i, 0);
		for (size_t p = 0; p + 30 <= f.len; p++) {
			if (memcmp(f.data + p, "PK\3\4", 4) == 0 && ck_le16(f.data + p + 26) == strlen(name) &&
			    memcmp(f.data + p + 30, name, strlen(name)) == 0) {
				offs[n] = p + 30 + ck_le16(f.data + p + 26) + ck_le16(f.data + p + 28);
				snprintf(names[n++], 128, "%s", name);
				break;
			}
		}
	}
	if (z)
		zip_discard(z);
	free(f.data);
	return n;
}

static void test_view(const char *src, const struct ck_view *v, int expect_identity)
{
	char out[256], why[256] = "";
	struct ck_err e;
	enum ck_format kind;
	int identity, rc;

	snprintf(out, sizeof(out), "%s/%s.view", tmpdir, v->name);
	rc = view_of(src, v, out, &kind, &e, &identity);
	ok(rc == 0 && kind == CK_FORMAT_TORCHZIP, "%s through %s: a checkpoint, laid out (%s)", src, v->name, e.msg);
	ok(identity == expect_identity, "%s through %s: %s", src, v->name,
	   expect_identity ? "nothing to change, the view is the source" : "rewritten");
	if (identity)
		return;
	ok(same_records(out, src, why, sizeof(why)) == 0,
	   "%s through %s: libzip reads every record, CRCs right, tensors unchanged (%s)", src, v->name, why);

	uint64_t so[64], vo[64];
	char sn[64][128], vn[64][128];
	size_t ns = data_offsets(src, so, sn, 64), nv = data_offsets(out, vo, vn, 64), bad = 0;
	for (size_t i = 0; i < ns && i < nv; i++)
		if (!strstr(sn[i], "data.pkl") && ((vo[i] - so[i]) % 4096 || vo[i] % 64))
			bad++;
	ok(ns == nv && ns > 2 && bad == 0,
	   "%s through %s: every tensor record keeps its page offset and 64-byte alignment (%zu of %zu off)", src,
	   v->name, bad, ns);
}

/* An archive written by libzip, not torch: no padding, no descriptors,
 * data.pkl deflated. The view must still be right. */
static void test_foreign_writer(const struct file *pkl)
{
	char path[256], out[256], why[256] = "";
	int err = 0, identity;
	struct ck_err e;
	enum ck_format kind;
	zip_t *z;

	snprintf(path, sizeof(path), "%s/foreign.pth", tmpdir);
	z = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &err);
	zip_int64_t i = zip_file_add(z, "foreign/data.pkl", zip_source_buffer(z, pkl->data, pkl->len, 0), 0);
	zip_set_file_compression(z, (zip_uint64_t)i, ZIP_CM_DEFLATE, 9);
	for (int k = 0; k < 9; k++) {
		char name[64];
		static const char tensor[256] = {1, 2, 3};
		snprintf(name, sizeof(name), "foreign/data/%d", k);
		i = zip_file_add(z, name, zip_source_buffer(z, tensor, sizeof(tensor), 0), 0);
		zip_set_file_compression(z, (zip_uint64_t)i, ZIP_CM_STORE, 0);
	}
	zip_file_add(z, "foreign/version", zip_source_buffer(z, "3\n", 2, 0), 0);
	ok(zip_close(z) == 0, "libzip wrote a torch-like archive");

	snprintf(out, sizeof(out), "%s/foreign.view", tmpdir);
	ok(view_of(path, &ck_view_plain, out, &kind, &e, &identity) == 0 && !identity,
	   "an archive with a deflated data.pkl and no descriptors is rewritten (%s)", e.msg);
	ok(same_records(out, path, why, sizeof(why)) == 0, "its view passes libzip's checks (%s)", why);
}

static void test_not_checkpoints(void)
{
	char path[256], out[256];
	int err = 0, identity;
	struct ck_err e;
	enum ck_format kind;
	zip_t *z;

	snprintf(path, sizeof(path), "%s/script.pt", tmpdir);
	z = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &err);
	zip_file_add(z, "script/data.pkl", zip_source_buffer(z, "\x80\x02}.", 4, 0), 0);
	zip_file_add(z, "script/constants.pkl", zip_source_buffer(z, "\x80\x02).", 4, 0), 0);
	zip_file_add(z, "script/version", zip_source_buffer(z, "3\n", 2, 0), 0);
	zip_close(z);
	snprintf(out, sizeof(out), "%s/x.view", tmpdir);
	ok(view_of(path, &ck_view_plain, out, &kind, &e, &identity) == 0 && identity && kind == CK_FORMAT_TORCHSCRIPT,
	   "a TorchScript archive passes through unparsed");

	snprintf(path, sizeof(path), "%s/other.zip", tmpdir);
	z = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &err);
	zip_file_add(z, "docs/readme.txt", zip_source_buffer(z, "hello", 5, 0), 0);
	zip_file_add(z, "docs/data.pkl", zip_source_buffer(z, "\x80\x02}.", 4, 0), 0);
	zip_close(z);
	ok(view_of(path, &ck_view_plain, out, &kind, &e, &identity) == 0 && identity && kind == CK_FORMAT_OTHER,
	   "a zip without a version record passes through");
}

/* The format detection gives a file whose view fails. */
static enum ck_format detected_as(const char *path)
{
	struct stat st;
	struct ck_layout *l = NULL;
	struct ck_err e = {0};
	enum ck_format fmt;
	int fd = open(path, O_RDONLY);

	fstat(fd, &st);
	struct ck_src s = {.fd = fd, .size = (uint64_t)st.st_size, .name = path};
	if (ck_view_layout(&s, &ck_view_plain, &l, &fmt, NULL, &e) == 0)
		fmt = (enum ck_format)-1; /* not the failure asked about */
	ck_layout_free(l);
	close(fd);
	return fmt;
}

/* Damaged archives: an error that names the offset, never a crash. */
static void test_damage(const struct file *good)
{
	char path[256], out[256];
	struct ck_err e;
	enum ck_format kind;
	int identity;
	size_t missed = 0;
	uint8_t *bad = malloc(good->len);

	snprintf(path, sizeof(path), "%s/damaged.pth", tmpdir);
	snprintf(out, sizeof(out), "%s/damaged.view", tmpdir);
	for (size_t n = 0; n < good->len; n++) {
		spit(path, good->data, n);
		if (view_of(path, &ck_view_plain, out, &kind, &e, &identity) != -1 || !strstr(e.msg, "offset"))
			missed++;
	}
	ok(missed == 0, "every truncation of a checkpoint is an error naming an offset (%zu of %zu not)", missed,
	   good->len);

	/* the central directory offset pointed past the end */
	memcpy(bad, good->data, good->len);
	for (size_t p = good->len - 22; p > 0; p--)
		if (memcmp(bad + p, "PK\6\6", 4) == 0) {
			memset(bad + p + 48, 0x7f, 8);
			break;
		}
	spit(path, bad, good->len);
	ok(view_of(path, &ck_view_plain, out, &kind, &e, &identity) == -1 && strstr(e.msg, "outside the file"),
	   "a central directory outside the file is refused (%s)", e.msg);

	/* a stored data.pkl that claims to be larger than it is */
	memcpy(bad, good->data, good->len);
	for (size_t p = 0; p + 46 < good->len; p++)
		if (memcmp(bad + p, "PK\1\2", 4) == 0) {
			memcpy(bad + p + 20, "\xff\xff\xff\x7f", 4);
			memcpy(bad + p + 24, "\xff\xff\xff\x7f", 4);
			break;
		}
	spit(path, bad, good->len);
	ok(view_of(path, &ck_view_plain, out, &kind, &e, &identity) == -1 && strstr(e.msg, "zip offset"),
	   "a data.pkl size past the directory is refused (%s)", e.msg);
	ok(detected_as(path) == CK_FORMAT_TORCHZIP,
	   "a refused checkpoint is still told as one (torch-zip), as a refused legacy file is (%s)",
	   ck_format_name(detected_as(path)));
	free(bad);
}

/* Sets a bit in the general-purpose flags of the first central entry. */
static void flag_first_entry(struct file *f, uint16_t bit)
{
	for (size_t p = 0; p + 46 < f->len; p++)
		if (memcmp(f->data + p, "PK\1\2", 4) == 0) {
			f->data[p + 8] |= (uint8_t)bit;
			return;
		}
}

/* Sets "this disk" in the end record that counts (the zip64 one when there
 * is one), as a volume of a split archive has it. */
static void set_disk(struct file *f, uint8_t disk)
{
	size_t eocd = 0;

	for (size_t p = f->len - 22; p > 0; p--) {
		if (memcmp(f->data + p, "PK\6\6", 4) == 0) {
			f->data[p + 16] = disk;
			return;
		}
		if (!eocd && memcmp(f->data + p, "PK\5\6", 4) == 0)
			eocd = p;
	}
	f->data[eocd + 4] = disk;
}

/* torch's reader refuses encrypted entries and split archives: so must the
 * view of a checkpoint, but a zip that is no checkpoint is classified
 * first and passes through whatever it holds (issue 9). */
static void test_classified_first(const char *ckpt)
{
	char path[256], out[256];
	int err = 0, identity;
	struct ck_err e;
	enum ck_format kind;
	zip_t *z;

	snprintf(path, sizeof(path), "%s/plain.zip", tmpdir);
	snprintf(out, sizeof(out), "%s/x.view", tmpdir);
	z = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &err);
	zip_file_add(z, "a.txt", zip_source_buffer(z, "hello", 5, 0), 0);
	zip_file_add(z, "b/c.txt", zip_source_buffer(z, "world", 5, 0), 0);
	zip_close(z);
	for (int damage = 0; damage < 2; damage++) {
		struct file f = slurp(path), c = slurp(ckpt);
		char p2[256];
		if (damage == 0) {
			flag_first_entry(&f, 1);
			flag_first_entry(&c, 1);
		} else {
			set_disk(&f, 2);
			set_disk(&c, 2);
		}
		snprintf(p2, sizeof(p2), "%s/damaged.zip", tmpdir);
		spit(p2, f.data, f.len);
		ok(view_of(p2, &ck_view_plain, out, &kind, &e, &identity) == 0 && identity && kind == CK_FORMAT_OTHER,
		   "an ordinary zip %s passes through (%s)", damage ? "of a split archive" : "with an encrypted entry",
		   e.msg);
		spit(p2, c.data, c.len);
		ok(view_of(p2, &ck_view_plain, out, &kind, &e, &identity) == -1 && strstr(e.msg, "zip offset"),
		   "a checkpoint %s is refused (%s)", damage ? "of a split archive" : "with an encrypted entry", e.msg);
		free(f.data);
		free(c.data);
	}
}

/* torch matches record names case-insensitively: archive/DATA.PKL loads. */
static void test_names_any_case(const struct file *pkl)
{
	char path[256], out[256];
	int err = 0, identity;
	struct ck_err e;
	enum ck_format kind;
	zip_t *z;

	snprintf(path, sizeof(path), "%s/caps.pt", tmpdir);
	snprintf(out, sizeof(out), "%s/caps.view", tmpdir);
	z = zip_open(path, ZIP_CREATE | ZIP_TRUNCATE, &err);
	zip_file_add(z, "archive/DATA.PKL", zip_source_buffer(z, pkl->data, pkl->len, 0), 0);
	zip_file_add(z, "archive/Version", zip_source_buffer(z, "3\n", 2, 0), 0);
	zip_close(z);
	ok(view_of(path, &ck_view_plain, out, &kind, &e, &identity) == 0 && !identity && kind == CK_FORMAT_TORCHZIP,
	   "records named in capitals are a checkpoint, rewritten (%s)", e.msg);
}

int main(void)
{
	const char *ddp = TEST_DATA "/ddp-small.pth", *plain = TEST_DATA "/plain-small.pth";
	struct ck_buf pkl = {0};
	struct ck_err e = {0};

	if (!mkdtemp(tmpdir))
		return 99;
	test_view(ddp, &ck_view_plain, 0);
	test_view(ddp, &ck_view_ddp, 1);
	test_view(plain, &ck_view_ddp, 0);
	test_view(plain, &ck_view_plain, 1);

	/* the fixture's data.pkl, for archives other writers make */
	int err = 0;
	zip_t *z = zip_open(ddp, ZIP_RDONLY, &err);
	zip_stat_t st;
	zip_stat(z, "ddp-small/data.pkl", 0, &st);
	struct file p = {malloc(st.size), st.size};
	zip_file_t *f = zip_fopen(z, "ddp-small/data.pkl", 0);
	zip_fread(f, p.data, st.size);
	zip_fclose(f);
	zip_discard(z);
	ok(ck_pickle_rewrite(p.data, p.len, &ck_view_plain, &pkl, &e) == CK_PICKLE_REWRITTEN,
	   "the fixture's pickle rewrites");
	test_foreign_writer(&p);
	test_not_checkpoints();
	test_classified_first(ddp);
	test_names_any_case(&p);

	struct file good = slurp(ddp);
	test_damage(&good);
	free(good.data);
	free(p.data);
	ck_buf_free(&pkl);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
	if (system(cmd)) {
	}
	return tap_done();
}
