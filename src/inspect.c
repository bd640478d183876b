/* ckptfs inspect: what the core finds in checkpoint files (format.h's
 * describe), what each view changes, and a view= to add. One JSON model
 * per file, printed as JSON (--json) or as text. */
#include <config.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "cli.h"
#include "commands.h"
#include "format.h"
#include "log.h"

#define EXAMPLES 3
#define TOP_PREFIXES 5

/* Prefixes that wrappers put in front of a model's keys, longest first. */
static const char *const wrappers[] = {"base_model.model.", "module.", "_orig_mod.", "model.", NULL};

struct inspect {
	const struct cli_views *views;
	json_t *sds; /* the state dicts found */
};

/* A JSON string of bytes that may not be UTF-8 (pickles hold any). */
static json_t *jstr(const char *s, size_t n)
{
	json_t *j = json_stringn(s, n);
	char *copy;

	if (j || !(copy = malloc(n + 1)))
		return j;
	for (size_t i = 0; i < n; i++)
		copy[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
	j = json_stringn(copy, n);
	free(copy);
	return j;
}

static json_t *path_json(const struct ck_found_sd *sd)
{
	json_t *p = json_array();

	for (size_t i = 0; i < sd->depth; i++) {
		const struct ck_path_step *st = &sd->path[i];
		json_array_append_new(p, st->index >= 0 ? json_integer(st->index)
					  : st->key.s ? jstr(st->key.s, st->key.len) : json_null());
	}
	return p;
}

static bool starts_with(const struct ck_str *k, const char *p)
{
	size_t n = strlen(p);
	return k->len >= n && memcmp(k->s, p, n) == 0;
}

/* Keys per first dotted component, the most common first (up to TOP_PREFIXES). */
static json_t *prefix_counts(const struct ck_found_sd *sd)
{
	json_t *counts = json_object(), *out = json_object();
	const char *name;
	json_t *v;

	for (size_t k = 0; k < sd->nkeys; k++) {
		const char *dot = memchr(sd->keys[k].s, '.', sd->keys[k].len);
		char buf[256];
		if (!dot || (size_t)(dot - sd->keys[k].s) + 2 > sizeof(buf))
			continue;
		snprintf(buf, sizeof(buf), "%.*s", (int)(dot - sd->keys[k].s + 1), sd->keys[k].s);
		json_object_set_new(counts, buf, json_integer(json_integer_value(json_object_get(counts, buf)) + 1));
	}
	for (int i = 0; i < TOP_PREFIXES && json_object_size(counts); i++) {
		const char *best = NULL;
		json_int_t most = 0;
		json_object_foreach(counts, name, v) if (json_integer_value(v) > most) {
			most = json_integer_value(v);
			best = name;
		}
		json_object_set_new(out, best, json_integer(most));
		json_object_del(counts, best);
	}
	json_decref(counts);
	return out;
}

/* What a view does to these keys: how many it renames, and the first. */
static json_t *view_effect(const struct ck_view *v, const struct ck_found_sd *sd, struct ck_err *e)
{
	json_t *ex = json_null();
	size_t renamed = 0;

	for (size_t k = 0; k < sd->nkeys; k++) {
		size_t n;
		char *nk = ck_view_key(v, sd->keys[k].s, sd->keys[k].len, &n);
		if (!nk) {
			json_decref(ex);
			return ck_err_nomem(e), NULL;
		}
		if (n != sd->keys[k].len || memcmp(nk, sd->keys[k].s, n) != 0) {
			if (!renamed++)
				ex = json_pack("[o o]", jstr(sd->keys[k].s, sd->keys[k].len), jstr(nk, n));
		}
		free(nk);
	}
	return json_pack("{s:s, s:I, s:o}", "view", v->name, "renamed", (json_int_t)renamed, "example", ex);
}

/* NAME:strip=P for the prefix P every key shares: a known wrapper that plain
 * keeps, or else a first component common to two keys or more. */
static json_t *suggest(const struct ck_found_sd *sd)
{
	static const struct { const char *prefix, *name; } known[] = {{"base_model.model.", "peft"}, {"model.", "bare"}};
	char prefix[128], name[128];
	const char *dot;
	size_t n, k;

	if (sd->nkeys == 0)
		return json_null();
	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
		for (k = 0; k < sd->nkeys && starts_with(&sd->keys[k], known[i].prefix); k++)
			;
		if (k == sd->nkeys)
			return json_sprintf("%s:strip=%s", known[i].name, known[i].prefix);
	}
	dot = memchr(sd->keys[0].s, '.', sd->keys[0].len);
	n = dot ? (size_t)(dot - sd->keys[0].s) + 1 : 0;
	if (sd->nkeys < 2 || !n || n >= sizeof(prefix))
		return json_null();
	snprintf(prefix, sizeof(prefix), "%.*s", (int)n, sd->keys[0].s);
	for (k = 1; k < sd->nkeys && starts_with(&sd->keys[k], prefix); k++)
		;
	if (k < sd->nkeys || strcmp(prefix, "module.") == 0 || strcmp(prefix, "_orig_mod.") == 0)
		return json_null();
	/* a view name is letters, digits, '_', '.' and '-' */
	for (k = 0; k + 1 < n; k++)
		name[k] = isalnum((unsigned char)prefix[k]) || strchr("_.-", prefix[k]) ? prefix[k] : '_';
	name[k] = '\0';
	return json_sprintf("%s:strip=%s", name, prefix);
}

static int found(void *ctx, const struct ck_found_sd *sd, struct ck_err *e)
{
	struct inspect *in = ctx;
	json_t *keys = json_array(), *examples = json_array(), *wrapped = json_object(), *effects = json_array();

	for (size_t k = 0; k < sd->nkeys; k++) {
		json_array_append_new(keys, jstr(sd->keys[k].s, sd->keys[k].len));
		if (k < EXAMPLES)
			json_array_append_new(examples, jstr(sd->keys[k].s, sd->keys[k].len));
	}
	for (const char *const *w = wrappers; *w; w++) {
		size_t count = 0;
		for (size_t k = 0; k < sd->nkeys; k++)
			count += starts_with(&sd->keys[k], *w);
		if (count)
			json_object_set_new(wrapped, *w, json_integer((json_int_t)count));
	}
	for (size_t i = 0; i < in->views->n; i++) {
		json_t *effect = view_effect(in->views->list[i], sd, e);
		if (!effect) {
			json_decref(keys), json_decref(examples), json_decref(wrapped), json_decref(effects);
			return -1;
		}
		json_array_append_new(effects, effect);
	}
	json_array_append_new(in->sds, json_pack("{s:o, s:I, s:b, s:o, s:o, s:o, s:o, s:o, s:o}", "path", path_json(sd),
						 "key_count", (json_int_t)sd->nkeys, "metadata", sd->has_metadata,
						 "prefixes", prefix_counts(sd), "wrapper_prefixes", wrapped,
						 "examples", examples, "keys", keys, "views", effects,
						 "suggested_view", suggest(sd)));
	return 0;
}

/* The size of the file in each view, or why the view cannot be served. */
static json_t *view_sizes(const struct cli_views *views, const struct ck_src *src)
{
	json_t *out = json_array();

	for (size_t i = 0; i < views->n; i++) {
		struct ck_layout *l = NULL;
		enum ck_format fmt;
		struct ck_err e = {0};

		if (ck_view_layout(src, views->list[i], &l, &fmt, NULL, &e))
			json_array_append_new(out, json_pack("{s:s, s:s}", "view", views->list[i]->name, "error", e.msg));
		else
			json_array_append_new(out, json_pack("{s:s, s:I, s:b}", "view", views->list[i]->name, "size",
							     (json_int_t)(l ? l->size : src->size), "unchanged", !l));
		ck_layout_free(l);
	}
	return out;
}

/* The model of one file; *failed when it cannot be read or parsed. */
static json_t *inspect_file(const struct cli_views *views, const char *path, bool *failed)
{
	struct inspect in = {.views = views, .sds = json_array()};
	json_t *doc = json_pack("{s:s}", "file", path);
	struct ck_err e = {0};
	struct stat st;
	enum ck_format fmt = CK_FORMAT_OTHER;
	int protocol = -1, fd = open(path, O_RDONLY | O_CLOEXEC);

	*failed = true;
	if (fd < 0 || fstat(fd, &st))
		ck_err_set(&e, errno, "%s", strerror(errno));
	else if (!S_ISREG(st.st_mode))
		ck_err_set(&e, EINVAL, "not a regular file");
	else {
		struct ck_src src = {.fd = fd, .size = (uint64_t)st.st_size, .name = path};
		json_object_set_new(doc, "size", json_integer((json_int_t)st.st_size));
		*failed = ck_format_describe(&src, &fmt, &protocol, found, &in, &e) != 0;
		json_object_set_new(doc, "format", json_string(ck_format_name(fmt)));
		if (!*failed) {
			json_object_set_new(doc, "pickle_protocol", protocol >= 0 ? json_integer(protocol) : json_null());
			json_object_set(doc, "state_dicts", in.sds);
			json_object_set_new(doc, "views", view_sizes(views, &src));
		}
	}
	if (*failed)
		json_object_set_new(doc, "error", json_string(e.msg));
	json_decref(in.sds);
	if (fd >= 0)
		close(fd);
	return doc;
}

static void print_path(const json_t *path)
{
	size_t i;
	json_t *step;

	if (!json_array_size(path))
		fputs("(the top object)", stdout);
	json_array_foreach(path, i, step) {
		if (json_is_integer(step))
			printf("[%" JSON_INTEGER_FORMAT "]", json_integer_value(step));
		else if (json_is_string(step))
			printf("['%s']", json_string_value(step));
		else
			fputs("[?]", stdout);
	}
}

static void print_counts(const char *label, const json_t *counts, size_t total)
{
	const char *name;
	json_t *v;
	bool first = true;

	if (!json_object_size(counts))
		return;
	printf("    %s:", label);
	json_object_foreach((json_t *)counts, name, v) {
		printf("%s %s on %" JSON_INTEGER_FORMAT " of %zu", first ? "" : ",", name, json_integer_value(v), total);
		first = false;
	}
	putchar('\n');
}

static void print_state_dict(const json_t *sd)
{
	size_t nkeys = (size_t)json_integer_value(json_object_get(sd, "key_count")), i;
	json_t *x;

	fputs("  state dict ", stdout);
	print_path(json_object_get(sd, "path"));
	printf(": %zu keys%s\n", nkeys, json_is_true(json_object_get(sd, "metadata")) ? ", with _metadata" : "");
	print_counts("prefixes", json_object_get(sd, "prefixes"), nkeys);
	print_counts("wrapper prefixes", json_object_get(sd, "wrapper_prefixes"), nkeys);
	fputs("    keys, e.g.:", stdout);
	json_array_foreach(json_object_get(sd, "examples"), i, x) printf("%s %s", i ? "," : "", json_string_value(x));
	putchar('\n');
	json_array_foreach(json_object_get(sd, "views"), i, x) {
		json_int_t n = json_integer_value(json_object_get(x, "renamed"));
		json_t *ex = json_object_get(x, "example");
		printf("    view %s: ", json_string_value(json_object_get(x, "view")));
		if (n)
			printf("renames %" JSON_INTEGER_FORMAT " keys, e.g. %s -> %s\n", n,
			       json_string_value(json_array_get(ex, 0)), json_string_value(json_array_get(ex, 1)));
		else
			puts("renames no key");
	}
	if (json_is_string(x = json_object_get(sd, "suggested_view")))
		printf("    suggested: -o view=%s\n", json_string_value(x));
}

static void print_text(const json_t *doc)
{
	json_t *proto = json_object_get(doc, "pickle_protocol"), *x;
	size_t i;

	printf("%s: %s", json_string_value(json_object_get(doc, "file")), json_string_value(json_object_get(doc, "format")));
	if (json_is_integer(proto))
		printf(", pickle protocol %" JSON_INTEGER_FORMAT, json_integer_value(proto));
	printf(", %" JSON_INTEGER_FORMAT " bytes\n", json_integer_value(json_object_get(doc, "size")));
	if (!json_array_size(json_object_get(doc, "state_dicts")))
		puts("  no state dict: every view serves the file unchanged");
	json_array_foreach(json_object_get(doc, "state_dicts"), i, x) print_state_dict(x);
	json_array_foreach(json_object_get(doc, "views"), i, x) {
		printf("  %s/: ", json_string_value(json_object_get(x, "view")));
		if (json_is_string(json_object_get(x, "error")))
			printf("cannot be served: %s\n", json_string_value(json_object_get(x, "error")));
		else
			printf("%" JSON_INTEGER_FORMAT " bytes, %s\n", json_integer_value(json_object_get(x, "size")),
			       json_is_true(json_object_get(x, "unchanged")) ? "the file unchanged" : "rewritten");
	}
}

int cmd_inspect(int argc, char **argv)
{
	static const struct option longopts[] = {{"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'},
						 {0}};
	struct cli_views views;
	bool json = false;
	int c, rc = 0;

	cli_views_init(&views);
	opterr = 0;
	while ((c = getopt_long(argc, argv, "ho:", longopts, NULL)) != -1) {
		if (c == 'j')
			json = true;
		else if (c == 'o' && strncmp(optarg, "view=", 5) == 0)
			cli_views_add(&views, "inspect", optarg + 5);
		else if (c == 'o')
			cli_usage_error("inspect", "-o %s: only view= is known here", optarg);
		else if (c == 'h')
			cli_help_exit("inspect");
		else if (optopt)
			cli_usage_error("inspect", "-%c: unknown option or missing argument", optopt);
		else
			cli_usage_error("inspect", "%s: unknown option", argv[optind - 1]);
	}
	if (optind == argc)
		cli_usage_error("inspect", "expected FILE...");
	for (int i = optind; i < argc; i++) {
		bool failed;
		json_t *doc = inspect_file(&views, argv[i], &failed);

		if (failed) {
			ck_log(LOG_ERR, "%s: %s", argv[i], json_string_value(json_object_get(doc, "error")));
			rc = EXIT_RUNTIME;
		}
		if (json)
			json_dumpf(doc, stdout, JSON_COMPACT | JSON_ENSURE_ASCII), putchar('\n');
		else if (!failed)
			print_text(doc);
		json_decref(doc);
	}
	cli_views_clear(&views);
	return rc;
}
