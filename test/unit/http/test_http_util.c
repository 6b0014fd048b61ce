/* lg_u64_to_dec, the per-thread object caches (legate/http.h) and lg_timer_touch (legate/timer.h). */
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <h2o.h>
#include "legate/http.h"
#include "legate/timer.h"
#include "test.h"

static void test_u64_to_dec(void)
{
    static const uint64_t values[] = {0,     1,         9,          10,          99,          100,
                                      12345, 999999999, 1000000000, 4294967295u, 4294967296u, 18446744073709551615u};
    for (size_t i = 0; i != sizeof(values) / sizeof(values[0]); ++i) {
        char buf[24], want[24];
        memset(buf, 'x', sizeof(buf));
        size_t n = lg_u64_to_dec(buf, values[i]);
        snprintf(want, sizeof(want), "%" PRIu64, values[i]);
        ok(n == strlen(want) && memcmp(buf, want, n) == 0 && buf[n] == 'x', "%" PRIu64 ": got %.*s", values[i], (int)n, buf);
    }
    h2o_mem_pool_t pool;
    h2o_mem_init_pool(&pool);
    h2o_iovec_t v = lg_u64_to_dec_pool(&pool, 1500);
    ok(v.len == 4 && memcmp(v.base, "1500", 4) == 0, "pool variant");
    h2o_mem_clear_pool(&pool);
}

static void test_cache(void)
{
    /* an object comes back zeroed, and a freed object is reused by the next allocation of its class */
    char *a = lg_http_cache_alloc(LG_HTTP_CACHE_H1_SERVER_STREAM, 300);
    ok(a != NULL, "alloc");
    memset(a, 0xab, 300);
    lg_http_cache_free(LG_HTTP_CACHE_H1_SERVER_STREAM, a);
    char *b = lg_http_cache_alloc(LG_HTTP_CACHE_H1_SERVER_STREAM, 300);
    ok(b == a, "reused");
    int zero = 1;
    for (size_t i = 0; i != 300; ++i)
        zero &= b[i] == 0;
    ok(zero, "zeroed on reuse");
    /* classes do not mix */
    lg_http_cache_free(LG_HTTP_CACHE_H1_SERVER_STREAM, b);
    char *c = lg_http_cache_alloc(LG_HTTP_CACHE_HCM_STREAM, 1200);
    ok(c != b, "other class");
    memset(c, 1, 1200); /* ASan: the full size is usable */
    lg_http_cache_free(LG_HTTP_CACHE_HCM_STREAM, c);
    /* many objects: what goes over the cache's bound is freed (LSan checks) */
    void *objs[600];
    for (size_t i = 0; i != 600; ++i)
        objs[i] = lg_http_cache_alloc(LG_HTTP_CACHE_H1_CLIENT_STREAM, 64);
    for (size_t i = 0; i != 600; ++i)
        lg_http_cache_free(LG_HTTP_CACHE_H1_CLIENT_STREAM, objs[i]);
    lg_http_cache_free(LG_HTTP_CACHE_H1_CLIENT_STREAM, NULL);
    ok(1, "bounded");
}

static void *thread_main(void *arg)
{
    /* a thread's cached objects are freed when it exits (LSan would report them otherwise) */
    for (int i = 0; i != 10; ++i)
        lg_http_cache_free(LG_HTTP_CACHE_HCM_STREAM, lg_http_cache_alloc(LG_HTTP_CACHE_HCM_STREAM, 1128));
    void *p = lg_http_cache_alloc(LG_HTTP_CACHE_HCM_STREAM, 1128);
    void *q = lg_http_cache_alloc(LG_HTTP_CACHE_HCM_STREAM, 1128);
    lg_http_cache_free(LG_HTTP_CACHE_HCM_STREAM, p);
    lg_http_cache_free(LG_HTTP_CACHE_HCM_STREAM, q);
    return NULL;
}

static void test_cache_thread_exit(void)
{
    pthread_t t;
    ok(pthread_create(&t, NULL, thread_main, NULL) == 0, "thread");
    pthread_join(t, NULL);
}

static int fired;
static void on_fire(lg_timer_t *t)
{
    ++fired;
}

static void test_timer_touch(void)
{
    h2o_evloop_t *evloop = h2o_evloop_create();
    lg_loop_t loop;
    lg_loop_init(&loop, evloop);
    lg_timer_t t = {};
    lg_timer_touch(&loop, &t, 30, on_fire);
    ok(lg_timer_is_active(&t), "armed");
    uint64_t at = t._deadline;
    lg_timer_touch(&loop, &t, 30, on_fire);
    ok(lg_timer_is_active(&t) && t._deadline == at, "same loop time: same deadline");
    /* once the loop time moves on, a touch re-arms from the new time */
    uint64_t start = h2o_now(evloop);
    while (h2o_now(evloop) == start)
        h2o_evloop_run(evloop, 1);
    lg_timer_touch(&loop, &t, 30, on_fire);
    ok(lg_timer_is_active(&t) && t._deadline == h2o_now(evloop) + 30 && t._deadline != at, "re-armed");
    while (fired == 0)
        h2o_evloop_run(evloop, 10);
    ok(fired == 1 && !lg_timer_is_active(&t), "fires once");
    lg_timer_stop(&t);
    lg_loop_dispose(&loop);
    h2o_evloop_destroy(evloop);
}

int main(void)
{
    test_u64_to_dec();
    test_cache();
    test_cache_thread_exit();
    test_timer_touch();
    return done();
}
