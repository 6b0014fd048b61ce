/*
 * A small C shim over RE2 with the options Envoy's google_re2 engine uses
 * (RE2::Quiet: UTF-8, leftmost-longest off, no logging) and Envoy's program
 * size check. Compiled regexes are immutable and safe to share between
 * threads.
 */
#ifndef LEGATE_REGEX_H
#define LEGATE_REGEX_H

#include <stddef.h>
#include <stdint.h>
#include <h2o/memory.h>
#include "legate/common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct st_lg_regex_t lg_regex_t;

/* Envoy's runtime default for re2.max_program_size.error_level. */
#define LG_REGEX_DEFAULT_MAX_PROGRAM_SIZE 100

/* Compiles `pattern`. `max_program_size` points to the limit from a config's
 * google_re2.max_program_size, or is NULL for Envoy's default error-level
 * check (100); the two produce Envoy's two different messages. On error
 * returns NULL with err set ("invalid regex '(': missing ): (" or Envoy's
 * program-size message). */
lg_regex_t *lg_regex_compile(const char *pattern, size_t len, const uint32_t *max_program_size, lg_error_t *err);
void lg_regex_free(lg_regex_t *re);

/* The pattern as given. */
const char *lg_regex_pattern(const lg_regex_t *re);
/* Number of capturing groups. */
int lg_regex_groups(const lg_regex_t *re);

/* True if the whole of s matches (Envoy's Regex::match). */
int lg_regex_full_match(const lg_regex_t *re, const char *s, size_t len);
/* True if any part of s matches. */
int lg_regex_partial_match(const lg_regex_t *re, const char *s, size_t len);
/* Replaces every non-overlapping match in s with `rewrite` (RE2 rewrite
 * syntax: \0..\9 for groups, \\ for a backslash), as Envoy's replaceAll.
 * The result is allocated from `pool` (NUL-terminated); if nothing matched
 * it is a copy of s. */
h2o_iovec_t lg_regex_replace_all(const lg_regex_t *re, const char *s, size_t len, const char *rewrite, size_t rewrite_len,
                                 h2o_mem_pool_t *pool);
/* Checks that `rewrite` only names groups that exist; err as RE2 says. */
int lg_regex_check_rewrite(const lg_regex_t *re, const char *rewrite, size_t rewrite_len, lg_error_t *err);

#ifdef __cplusplus
}
#endif

#endif
