/* Rewrites state-dict keys inside a pickle by reading and writing opcodes.
 * Nothing is ever executed: the pickle is tokenized and run on a symbolic
 * stack that only knows strings, containers, globals and tensor rebuilds. */
#ifndef CKPTFS_PICKLE_H
#define CKPTFS_PICKLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "buf.h"
#include "describe.h"
#include "err.h"
#include "source.h"
#include "view.h"

enum ck_pickle_result {
	CK_PICKLE_ERROR = -1,     /* e is set: offset and reason */
	CK_PICKLE_UNCHANGED = 0,  /* the view needs no change: serve the source */
	CK_PICKLE_REWRITTEN = 1,  /* out holds the new pickle */
};

/* Limits that keep hostile input bounded in memory and time. Rewriting
 * keeps nothing per opcode, only per value: some 15 bytes an opcode for a
 * state dict (35 opcodes a tensor), at most about 40 (a stream of empty
 * dicts); 8 Mi opcodes (under 320 MiB) is a checkpoint of 240000 tensors. */
#define CK_PICKLE_MAX_BYTES ((size_t)1 << 30)
#define CK_PICKLE_MAX_OPS ((uint32_t)1 << 23)

/* A rewritten pickle holds at most 2 x the source's bytes + CK_PICKLE_GROWTH
 * + each renamed key written out once more: a memo string fetched many
 * times, which the view must spell out at each place, cannot multiply it. */
#define CK_PICKLE_GROWTH ((uint64_t)1 << 20)

/* What the rewriter may hold per opcode at most (its tables, the plan,
 * memo slots, renamed keys), with a margin: pickles built to maximize it
 * (a stream of empty dicts) take about 40 bytes an opcode, real state
 * dicts some 15. */
#define CK_PICKLE_OP_MEMORY ((uint64_t)64)

/* The length of the pickle at the start of in (through its STOP), or 0 with
 * e set; *short_input tells the bytes ended before STOP. */
size_t ck_pickle_span(const uint8_t *in, size_t n, bool *short_input, struct ck_err *e);

/* The new pickle is appended to out (which may hold bytes already). */
enum ck_pickle_result ck_pickle_rewrite(const uint8_t *in, size_t n, const struct ck_view *v,
					struct ck_buf *out, struct ck_err *e);

/* As ck_pickle_rewrite, for a pickle read from src: once its opcodes are
 * counted (the first pass, no allocation), an upper bound of the memory
 * the rewrite takes beyond the input is claimed from src's budget
 * (ck_src_claim) before anything is allocated: the opcodes (at most
 * CK_PICKLE_MAX_OPS, where it fails) times CK_PICKLE_OP_MEMORY, plus the
 * output it may write. src NULL: nothing is claimed. */
enum ck_pickle_result ck_pickle_rewrite_src(const struct ck_src *src, const uint8_t *in, size_t n,
					    const struct ck_view *v, struct ck_buf *out, struct ck_err *e);

/* Parses the pickle as ck_pickle_rewrite does and reports each state dict
 * it would rename to fn, with its path from the top object. *protocol is
 * the PROTO opcode's version, 0 when there is none (protocol 0 or 1). */
int ck_pickle_describe(const uint8_t *in, size_t n, int *protocol, ck_found_fn fn, void *ctx,
		       struct ck_err *e);

#endif
