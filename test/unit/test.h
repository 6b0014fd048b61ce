/*
 * A minimal unit-test harness: each test binary calls ok() per assertion and
 * ends with `return done();`, which prints "N passed, N failed" and returns
 * non-zero when anything failed. tools/run-unit.py sums the binaries' lines.
 */
#ifndef LEGATE_TEST_H
#define LEGATE_TEST_H

#include <stdio.h>
#include <string.h>

static int lg_test_passed, lg_test_failed;

#define ok(cond, ...)                                                                                                              \
    do {                                                                                                                           \
        if (cond) {                                                                                                                \
            ++lg_test_passed;                                                                                                      \
        } else {                                                                                                                   \
            ++lg_test_failed;                                                                                                      \
            fprintf(stderr, "not ok %s:%d: ", __FILE__, __LINE__);                                                                 \
            fprintf(stderr, __VA_ARGS__);                                                                                          \
            fprintf(stderr, "\n");                                                                                                 \
        }                                                                                                                          \
    } while (0)

#define ok_str(got, want)                                                                                                          \
    do {                                                                                                                           \
        const char *g_ = (got), *w_ = (want);                                                                                      \
        ok(g_ != NULL && strcmp(g_, w_) == 0, "%s: got \"%s\", want \"%s\"", #got, g_ ? g_ : "(null)", w_);                        \
    } while (0)

static inline int done(void)
{
    printf("%d passed, %d failed\n", lg_test_passed, lg_test_failed);
    return lg_test_failed != 0;
}

#endif
