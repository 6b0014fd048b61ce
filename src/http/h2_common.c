/*
 * HTTP/2 session plumbing shared by the server and client codecs: socket I/O
 * over h2o_socket_t, the nghttp2 callbacks, head conversion, per-stream body
 * buffers, delivery to the driver and connection teardown.
 *
 * nghttp2 callbacks only record what happened on the stream and put it on the
 * dirty list; the outermost lg__h2_leave() delivers to the driver, writes and
 * closes. A stream is freed (graveyard) only there too, so a pointer taken in
 * a callback stays valid until the entry point returns.
 */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <h2o/string_.h>
#include <h2o/version.h>
#include "legate/common.h"
#include "legate/http.h"
#include "legate/h1.h"
#include "legate/h2.h"
#include "legate/stats.h"
#include "legate/sock.h"

/* ASan builds keep no cache (see small blocks): every block is its own malloc, so that
 * ASan sees each use after free, and LSan no block parked in a thread's cache at exit. */
#ifdef __SANITIZE_ADDRESS__
#define CACHE_ENABLED 0
#else
#define CACHE_ENABLED 1
#endif

#define BATCH_MAX_BYTES (256 * 1024)
#define BATCH_MAX_SEGS 512
#define BATCH_MIN_BYTES 2048 /* the write batch's first buffer; it doubles as needed */
#define BLOCK_SIZE 16384
#define SCRATCH_SIZE 512                                          /* received names and values are copied into regions this large */
#define FIRST_BLOCK_SIZE (1024 - offsetof(lg__h2_block_t, bytes)) /* a small-block cache class */
#define LINGER_MS 1000
#define TRIM_MS 100 /* an idle connection gives its buffers back after this */
/* nghttp2's outbound frame buffer (NGHTTP2_FRAMEBUF_CHUNKLEN): its bytes are
 * dead whenever nothing is being sent. */
#define NGHTTP2_FRAMEBUF_LEN (9 + 1 + 16384)
#define MAX_IOV 1024 /* Linux's IOV_MAX */
/* Envoy's Http2ProtocolOptions defaults for flood protection. */
#define MAX_OUTBOUND_FRAMES 10000
#define MAX_OUTBOUND_CONTROL_FRAMES 1000
#define MAX_CONSECUTIVE_EMPTY_FRAMES 1
#define MAX_PRIORITY_FRAMES_PER_STREAM 100
#define MAX_WINDOW_UPDATES_PER_DATA_FRAME 10

static void on_write_complete(h2o_socket_t *sock, const char *err);
static void recv_input(lg__h2_conn_t *conn);

void lg_h2_settings_init(lg_h2_settings_t *settings)
{
    *settings = (lg_h2_settings_t){
        .max_concurrent_streams = 2147483647,
        .initial_stream_window_size = 268435456,
        .initial_connection_window_size = 268435456,
        .max_headers_count = 100,
        .max_header_list_bytes = 60 * 1024,
        .buffer_limit = 1024 * 1024,
    };
}

/* ---- small blocks ------------------------------------------------------ */

/*
 * A per-thread cache of small heap blocks for what the codec and nghttp2
 * allocate per stream (nghttp2's stream and outbound items, the name/value
 * arrays, our stream and first body block). With tens of streams in flight
 * per connection, glibc's tcache (7 blocks per size) runs dry and every such
 * malloc/free went through the arenas: ~300 instructions each. Blocks are
 * plain malloc blocks (no header, so an idle session costs what it did),
 * sorted by usable size; the cache holds at most CACHE_BYTES per thread and
 * frees them when the thread exits. ASan builds keep no cache.
 */
#define CACHE_CLASSES 65         /* usable sizes 24 .. 1032 (glibc's tcache range) */
#define CACHE_BYTES (256 * 1024) /* per thread */

typedef struct st_cached_t {
    struct st_cached_t *next;
} cached_t;

/* libh2o 2.2.5's pool chunk (lib/common/memory.c; only `next` and the size
 * matter here). A server stream's pool gets its first chunk from this cache
 * (seed_pool): h2o's own recycler keeps 16 chunks per thread, fewer than the
 * requests in flight on a few h2 connections, so each request would malloc
 * and free 4 KiB. */
#if H2O_LIBRARY_VERSION_MAJOR != 0 || H2O_LIBRARY_VERSION_MINOR != 13
#error "struct st_h2o_mem_pool_chunk_t mirrors libh2o 0.13 (h2o 2.2): check lib/common/memory.c"
#endif
struct st_h2o_mem_pool_chunk_t {
    struct st_h2o_mem_pool_chunk_t *next;
    size_t _dummy;
    char bytes[4096 - sizeof(void *) * 2];
};
#define CHUNK_CACHE_MAX 64 /* chunks kept per thread */

typedef struct st_small_cache_t {
    cached_t *head[CACHE_CLASSES];
    size_t bytes;
    struct st_h2o_mem_pool_chunk_t *chunks;
    size_t nchunks;
} small_cache_t;

static __thread small_cache_t small_cache;
static __thread int small_cache_registered;
static pthread_key_t small_cache_key;
static pthread_once_t small_cache_once = PTHREAD_ONCE_INIT;

static void small_cache_thread_exit(void *arg)
{
    small_cache_t *c = arg;
    for (size_t i = 0; i != CACHE_CLASSES; ++i) {
        while (c->head[i] != NULL) {
            cached_t *b = c->head[i];
            c->head[i] = b->next;
            free(b);
        }
    }
    c->bytes = 0;
    while (c->chunks != NULL) {
        struct st_h2o_mem_pool_chunk_t *k = c->chunks;
        c->chunks = k->next;
        free(k);
    }
    c->nchunks = 0;
}

static void small_cache_key_init(void)
{
    pthread_key_create(&small_cache_key, small_cache_thread_exit);
}

/* A block of at least `size` bytes (NULL when out of memory). */
static void *small_alloc(size_t size)
{
    size_t c = size <= 24 ? 1 : (size + 7) / 16; /* usable 16c + 8 >= size */
    if (CACHE_ENABLED && c < CACHE_CLASSES && small_cache.head[c] != NULL) {
        cached_t *b = small_cache.head[c];
        small_cache.head[c] = b->next;
        small_cache.bytes -= 16 * c + 8;
        return b;
    }
    return malloc(size);
}

static void small_cache_register(void)
{
    if (!small_cache_registered) {
        /* the key's destructor frees what this thread keeps when it exits */
        pthread_once(&small_cache_once, small_cache_key_init);
        pthread_setspecific(small_cache_key, &small_cache);
        small_cache_registered = 1;
    }
}

static void small_free(void *p)
{
    if (p == NULL)
        return;
    size_t usable = CACHE_ENABLED ? malloc_usable_size(p) : 0, c = usable < 24 ? 0 : (usable - 8) / 16;
    if (c == 0 || c >= CACHE_CLASSES || small_cache.bytes + 16 * c + 8 > CACHE_BYTES) {
        free(p);
        return;
    }
    small_cache_register();
    cached_t *b = p;
    b->next = small_cache.head[c];
    small_cache.head[c] = b;
    small_cache.bytes += 16 * c + 8;
}

/* Gives an empty pool its first chunk, from the cache; NULL (h2o allocates it) without a cache. */
static struct st_h2o_mem_pool_chunk_t *seed_pool(h2o_mem_pool_t *pool)
{
    struct st_h2o_mem_pool_chunk_t *k = small_cache.chunks;
    if (!CACHE_ENABLED)
        return NULL;
    if (k != NULL) {
        small_cache.chunks = k->next;
        --small_cache.nchunks;
    } else if ((k = malloc(sizeof(*k))) == NULL) {
        abort();
    }
    k->next = NULL;
    pool->chunks = k;
    pool->chunk_offset = 0;
    return k;
}

/* Takes the seed chunk (the pool's oldest, so its last) back before the pool is cleared. */
static void unseed_pool(h2o_mem_pool_t *pool, struct st_h2o_mem_pool_chunk_t *seed)
{
    struct st_h2o_mem_pool_chunk_t **p = &pool->chunks;
    while (*p != NULL && *p != seed)
        p = &(*p)->next;
    if (*p == NULL)
        return; /* not ours any more: the pool was cleared elsewhere */
    *p = NULL;
    if (small_cache.nchunks == CHUNK_CACHE_MAX) {
        free(seed);
        return;
    }
    small_cache_register();
    seed->next = small_cache.chunks;
    small_cache.chunks = seed;
    ++small_cache.nchunks;
}

static void *small_calloc(size_t size)
{
    void *p = small_alloc(size);
    if (p == NULL)
        abort();
    return memset(p, 0, size);
}

/* ---- nghttp2's memory --------------------------------------------------- */

/* Small blocks come from the small-block cache. Blocks of a page or more (the
 * 16 KiB outbound frame buffer, the stream map) get pages of their own (mmap)
 * and are recorded, so that trim_big_blocks() can drop their pages: an idle
 * session then holds only its small state (HPACK tables, settings). mmap
 * rather than posix_memalign: aligned heap blocks leave up to a page of
 * fragments each, and untouched mmap pages cost nothing (the frame buffer's
 * tail is only touched by large HEADERS frames). */
static size_t page_size(void)
{
    static size_t ps;
    if (ps == 0)
        ps = (size_t)sysconf(_SC_PAGESIZE);
    return ps;
}

static lg__h2_big_t *big_find(lg__h2_conn_t *conn, void *p)
{
    if (((uintptr_t)p & (page_size() - 1)) != 0)
        return NULL;
    for (size_t i = 0; i != conn->nbig; ++i)
        if (conn->big[i].p == p)
            return conn->big + i;
    return NULL;
}

/* `paged`: give the block pages of its own. Sets *zeroed when it comes from fresh pages. */
static void *mem_alloc(lg__h2_conn_t *conn, size_t size, int paged, int *zeroed)
{
    *zeroed = 0;
    if (!paged || size < page_size() || conn->nbig == LG__H2_MAX_BIG)
        return small_alloc(size);
    size_t rounded = (size + page_size() - 1) & ~(page_size() - 1);
    void *p = mmap(NULL, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    conn->big[conn->nbig++] = (lg__h2_big_t){p, size};
    *zeroed = 1;
    return p;
}

/* Only the frame buffer is paged among malloc'ed blocks: large header values
 * (also >= a page) come and go with every request and would cost syscalls. */
static void *mem_malloc(size_t size, void *user_data)
{
    int zeroed;
    return mem_alloc(user_data, size, size == NGHTTP2_FRAMEBUF_LEN, &zeroed);
}

static void mem_free(void *p, void *user_data)
{
    lg__h2_conn_t *conn = user_data;
    lg__h2_big_t *b = p != NULL ? big_find(conn, p) : NULL;
    if (b != NULL) {
        munmap(p, (b->size + page_size() - 1) & ~(page_size() - 1));
        *b = conn->big[--conn->nbig];
        return;
    }
    small_free(p);
}

static void *mem_calloc(size_t n, size_t size, void *user_data)
{
    if (size != 0 && n > SIZE_MAX / size)
        return NULL;
    int zeroed;
    void *p = mem_alloc(user_data, n * size, 1, &zeroed); /* the stream map's table */
    if (p != NULL && !zeroed)
        memset(p, 0, n * size);
    return p;
}

static void *mem_realloc(void *p, size_t size, void *user_data)
{
    lg__h2_conn_t *conn = user_data;
    lg__h2_big_t *b = p != NULL ? big_find(conn, p) : NULL;
    if (p == NULL)
        return mem_malloc(size, user_data);
    if (b == NULL)
        return realloc(p, size); /* small blocks are malloc blocks */
    void *q = mem_malloc(size, user_data);
    if (q == NULL)
        return NULL;
    memcpy(q, p, b->size < size ? b->size : size);
    mem_free(p, user_data);
    return q;
}

/* Drops the pages of nghttp2's big blocks that hold nothing live: every page
 * of an all-zero stretch (an empty stream map reads back the same) and the
 * whole frame buffer while no frame is being sent. */
static void trim_big_blocks(lg__h2_conn_t *conn)
{
    size_t ps = page_size();
    int framebuf_dead = !nghttp2_session_want_write(conn->session);
    for (size_t i = 0; i != conn->nbig; ++i) {
        char *p = conn->big[i].p;
        size_t len = (conn->big[i].size + ps - 1) & ~(ps - 1);
        if (framebuf_dead && conn->big[i].size == NGHTTP2_FRAMEBUF_LEN) {
            madvise(p, len, MADV_DONTNEED);
            continue;
        }
        for (size_t off = 0; off != len; off += ps) {
            const uint64_t *w = (const uint64_t *)(p + off);
            size_t k = 0;
            while (k != ps / sizeof(*w) && w[k] == 0)
                ++k;
            if (k == ps / sizeof(*w))
                madvise(p + off, ps, MADV_DONTNEED);
        }
    }
}

/* ---- streams ---------------------------------------------------------- */

static lg__h2_stream_t *get_stream(lg__h2_conn_t *conn, int32_t stream_id)
{
    if (stream_id <= 0 || conn->session == NULL)
        return NULL;
    lg__h2_stream_t *s = nghttp2_session_get_stream_user_data(conn->session, stream_id);
    return s != NULL && !s->done ? s : NULL;
}

static void mark_dirty(lg__h2_stream_t *s)
{
    if (!s->done && !h2o_linklist_is_linked(&s->dirty))
        h2o_linklist_insert(&s->conn->dirty, &s->dirty);
}

/* Envoy's http2.* codec stats count downstream connections (an upstream codec's
 * would be cluster.<name>.http2.*, not kept). */
static void h2_stat(lg__h2_conn_t *conn, size_t idx, int64_t n)
{
    if (conn->is_server)
        lg_stats_here_add(lg_stats_http2, idx, n);
}

/* A server connection's byte counts (lg_server_conn_cbs_t.on_io), until the driver
 * is told of the close (the final GOAWAY goes out after it, uncounted). */
static void report_io(lg__h2_conn_t *conn, size_t rx, size_t tx)
{
    if (conn->is_server && conn->state != LG__H2_CLOSED && (rx | tx) != 0 && conn->super.server.cbs->on_io != NULL)
        conn->super.server.cbs->on_io(&conn->super.server, rx, tx);
}

lg__h2_stream_t *lg__h2_stream_new(lg__h2_conn_t *conn, int32_t stream_id)
{
    lg__h2_stream_t *s = small_calloc(sizeof(*s));
    s->super.ops = &lg__h2_stream_ops;
    s->super.id = (uint32_t)stream_id;
    s->super.version = LG_HTTP_2;
    s->conn = conn;
    h2o_mem_init_pool(&s->pool);
    if (conn->is_server) {
        s->seed = seed_pool(&s->pool);
        s->super.pool = &s->pool; /* the request's one pool: lent to the driver, freed after its terminal callback */
    }
    h2o_linklist_insert(&conn->streams, &s->link);
    ++conn->num_streams;
    h2_stat(conn, LG_HTTP2_STAT_streams_active, 1);
    if (stream_id > 0)
        nghttp2_session_set_stream_user_data(conn->session, stream_id, s);
    return s;
}

static void stream_free(lg__h2_conn_t *conn, lg__h2_stream_t *s)
{
    lg_timer_stop(&s->headers_timer);
    if (conn->hdr_stream == s)
        conn->hdr_stream = NULL;
    size_t held = s->unconsumed + s->undelivered - s->credited;
    /* Bytes the driver will never consume still count against the connection window. */
    if (held != 0 && conn->session != NULL && s->super.id != 0)
        nghttp2_session_consume(conn->session, (int32_t)s->super.id, held);
    while (s->first != NULL) {
        lg__h2_block_t *b = s->first;
        s->first = b->next;
        small_free(b);
    }
    small_free(s->sendq);
    if (s->seed != NULL)
        unseed_pool(&s->pool, s->seed);
    h2o_mem_clear_pool(&s->pool);
    small_free(s);
}

static void free_graveyard(lg__h2_conn_t *conn)
{
    while (!h2o_linklist_is_empty(&conn->graveyard)) {
        lg__h2_stream_t *s = H2O_STRUCT_FROM_MEMBER(lg__h2_stream_t, link, conn->graveyard.next);
        h2o_linklist_unlink(&s->link);
        stream_free(conn, s);
    }
}

/* Ends a stream for the driver: the terminal callback (when it saw the stream)
 * and nothing after it. */
static void stream_retire(lg__h2_stream_t *s, int complete, lg_reset_reason_t reason, const char *detail)
{
    lg__h2_conn_t *conn = s->conn;
    s->done = 1;
    h2o_linklist_unlink(&s->link);
    h2o_linklist_insert(&conn->graveyard, &s->link);
    if (h2o_linklist_is_linked(&s->dirty))
        h2o_linklist_unlink(&s->dirty);
    if (h2o_linklist_is_linked(&s->writing))
        h2o_linklist_unlink(&s->writing); /* its in-flight bytes are copies (write_batch): nothing to report */
    --conn->num_streams;
    h2_stat(conn, LG_HTTP2_STAT_streams_active, -1);
    if (s->super.id != 0 && !s->closed && conn->session != NULL)
        nghttp2_session_set_stream_user_data(conn->session, (int32_t)s->super.id, NULL);
    if (!s->visible)
        return;
    if (!conn->is_server)
        conn->done_pending = 1;
    if (complete)
        s->super.cbs->on_complete(&s->super);
    else
        s->super.cbs->on_reset(&s->super, reason, detail);
}

void lg__h2_stream_fail(lg__h2_stream_t *s, lg_reset_reason_t reason, const char *detail)
{
    s->closed = 1;
    s->close_error = NGHTTP2_INTERNAL_ERROR;
    s->reason_override = (int)reason + 1;
    s->detail = detail;
    mark_dirty(s);
    lg__h2_request_run(s->conn);
}

/* ---- inbound body ----------------------------------------------------- */

/* A stream's first block is sized for what arrived (a small body needs no
 * 16 KiB block); the next ones double, up to BLOCK_SIZE. */
static size_t block_cap(lg__h2_stream_t *s, size_t len)
{
    size_t cap = s->last != NULL ? s->last->cap * 2 : FIRST_BLOCK_SIZE;
    while (cap < len && cap < BLOCK_SIZE)
        cap *= 2;
    return cap < BLOCK_SIZE ? cap : BLOCK_SIZE;
}

static void recv_append(lg__h2_stream_t *s, const uint8_t *data, size_t len)
{
    while (len != 0) {
        lg__h2_block_t *b = s->last;
        if (b == NULL || b->len == b->cap) {
            size_t cap = block_cap(s, len);
            if ((b = small_alloc(offsetof(lg__h2_block_t, bytes) + cap)) == NULL)
                abort();
            *b = (lg__h2_block_t){NULL, 0, 0, 0, cap};
            if (s->last != NULL)
                s->last->next = b;
            else
                s->first = b;
            s->last = b;
        }
        if (s->cursor == NULL)
            s->cursor = b;
        size_t n = b->cap - b->len < len ? b->cap - b->len : len;
        memcpy(b->bytes + b->len, data, n);
        b->len += n;
        s->undelivered += n;
        data += n;
        len -= n;
    }
}

/* Gives back the credit of everything the stream holds while that is under the
 * buffer limit (see legate/h2.h). */
static void credit_early(lg__h2_conn_t *conn, lg__h2_stream_t *s)
{
    size_t held = s->unconsumed + s->undelivered;
    if (held < conn->settings.buffer_limit && held > s->credited) {
        nghttp2_session_consume(conn->session, (int32_t)s->super.id, held - s->credited);
        s->credited = held;
    }
}

/* A stream that holds the buffer limit, with its peer still sending, after the driver
 * has had what was delivered, takes no more until the driver consumes some: both edges
 * are told, a client stream's to the pool (lg_client_conn_cbs_t.on_flow), a server
 * stream's to its driver. A router keeping a body for a retry gives the retry up as
 * the body passes the limit, before this looks: no pause counted for it, as in Envoy. */
static void note_flow(lg__h2_conn_t *conn, lg__h2_stream_t *s)
{
    int at_limit = !s->remote_end && !s->done && s->unconsumed + s->undelivered >= conn->settings.buffer_limit;
    if (at_limit == s->at_limit || (conn->is_server && !s->visible))
        return;
    s->at_limit = at_limit;
    if (!conn->is_server) {
        if (conn->super.client.cbs->on_flow != NULL)
            conn->super.client.cbs->on_flow(&conn->super.client, at_limit);
    } else if (s->super.cbs->on_flow != NULL) {
        s->super.cbs->on_flow(&s->super, at_limit);
    }
}

static void recv_consume(lg__h2_stream_t *s, size_t n)
{
    s->unconsumed -= n;
    while (n != 0) {
        lg__h2_block_t *b = s->first;
        size_t take = b->delivered - b->consumed < n ? b->delivered - b->consumed : n;
        b->consumed += take;
        n -= take;
        if (b->consumed == b->len) {
            s->first = b->next;
            if (s->last == b)
                s->last = NULL;
            small_free(b);
        }
    }
}

/* ---- head conversion -------------------------------------------------- */

/* Where received heads and trailers live: the driver's request pool when it lends one
 * (lg_stream_t.pool), so that a response head and its trailers outlive the upstream
 * stream (the access log reads them after it is freed), else the stream's own. */
h2o_mem_pool_t *lg__h2_head_pool(lg__h2_stream_t *s)
{
    return s->super.pool != NULL ? s->super.pool : &s->pool;
}

static int set_pseudo(lg__h2_stream_t *s, const uint8_t *name, size_t len, h2o_iovec_t value)
{
    if (s->conn->is_server) {
        lg_req_head_t *req = &s->head.req;
        if (h2o_memis(name, len, H2O_STRLIT(":method")))
            req->method = value;
        else if (h2o_memis(name, len, H2O_STRLIT(":scheme")))
            req->scheme = value;
        else if (h2o_memis(name, len, H2O_STRLIT(":authority")))
            req->authority = value;
        else if (h2o_memis(name, len, H2O_STRLIT(":path")))
            req->path = value;
        else if (h2o_memis(name, len, H2O_STRLIT(":protocol")))
            req->protocol = value;
    } else if (h2o_memis(name, len, H2O_STRLIT(":status"))) {
        int status = 0;
        for (size_t i = 0; i != value.len && i < 3; ++i)
            status = status * 10 + (value.base[i] - '0');
        s->head.resp.status = status;
    }
    return 0;
}

/* Envoy joins cookie crumbs (RFC 9113 8.2.3) into one header. */
static void add_cookie(lg__h2_stream_t *s, h2o_iovec_t value)
{
    if (s->cookie.base == NULL) {
        s->cookie = value;
        return;
    }
    h2o_iovec_t joined = h2o_concat(&s->pool, s->cookie, h2o_iovec_init(H2O_STRLIT("; ")), value);
    s->cookie = joined;
}

/* Copies `n` bytes; short strings (most names and values) without a call. */
static inline void copy_short(char *d, const uint8_t *p, size_t n)
{
    if (n > 16) {
        memcpy(d, p, n);
    } else if (n >= 8) { /* two overlapping words */
        uint64_t a, b;
        memcpy(&a, p, 8), memcpy(&b, p + n - 8, 8);
        memcpy(d, &a, 8), memcpy(d + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, p, 4), memcpy(&b, p + n - 4, 4);
        memcpy(d, &a, 4), memcpy(d + n - 4, &b, 4);
    } else {
        for (size_t i = 0; i != n; ++i)
            d[i] = (char)p[i];
    }
}

/* A received name or value, copied NUL-terminated (as h2o_strdup) into lg__h2_head_pool(s),
 * from a region reserved SCRATCH_SIZE bytes at a time: a header block costs about one
 * pool allocation instead of one per string. */
static h2o_iovec_t copy_received(lg__h2_stream_t *s, const uint8_t *p, size_t len)
{
    char *d;
    if (len + 1 <= s->scratch_left) {
        d = s->scratch;
        s->scratch += len + 1;
        s->scratch_left -= len + 1;
    } else if (len + 1 > SCRATCH_SIZE / 2) {
        d = h2o_mem_alloc_pool(lg__h2_head_pool(s), len + 1);
    } else {
        d = h2o_mem_alloc_pool(lg__h2_head_pool(s), SCRATCH_SIZE);
        s->scratch = d + len + 1;
        s->scratch_left = SCRATCH_SIZE - (len + 1);
    }
    copy_short(d, p, len);
    d[len] = '\0';
    return h2o_iovec_init(d, len);
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
{
    lg__h2_conn_t *conn = user_data;
    lg__h2_stream_t *s = conn->hdr_stream;
    if (s == NULL || s->super.id != (uint32_t)frame->hd.stream_id || s->done)
        s = get_stream(conn, frame->hd.stream_id);
    if (s == NULL || s->building == NULL)
        return 0;
    s->header_bytes += namelen + valuelen;
    if (++s->header_count > conn->settings.max_headers_count || s->header_bytes > conn->settings.max_header_list_bytes) {
        h2_stat(conn, LG_HTTP2_STAT_header_overflow, 1);
        s->detail = LG_H2_DETAIL_TOO_MANY_HEADERS;
        s->reason_override = LG_RESET_OVERFLOW + 1;
        s->building = NULL;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets the stream */
    }
    if (conn->is_server && conn->options.headers_with_underscores_action != LG_H1_UNDERSCORES_ALLOW && namelen != 0 &&
        name[0] != ':' && lg__h1_name_has_underscore(h2o_iovec_init(name, namelen))) {
        if (conn->options.headers_with_underscores_action == LG_H1_UNDERSCORES_DROP_HEADER) {
            h2_stat(conn, LG_HTTP2_STAT_dropped_headers_with_underscores, 1);
            return 0;
        }
        h2_stat(conn, LG_HTTP2_STAT_requests_rejected_with_underscores_in_headers, 1);
        s->detail = LG_H2_DETAIL_UNEXPECTED_UNDERSCORE;
        s->reason_override = LG_RESET_PROTOCOL_ERROR + 1;
        s->building = NULL;
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets the stream, as Envoy's saveHeader */
    }
    h2o_iovec_t v = copy_received(s, value, valuelen);
    if (namelen != 0 && name[0] == ':')
        return s->building == s->trailers ? 0 : set_pseudo(s, name, namelen, v);
    if (conn->is_server && s->building != s->trailers && h2o_memis(name, namelen, H2O_STRLIT("cookie"))) {
        add_cookie(s, v);
        return 0;
    }
    lg_headers_add(lg__h2_head_pool(s), s->building, copy_received(s, name, namelen), v);
    return 0;
}

static void finish_request_head(lg__h2_stream_t *s)
{
    lg_req_head_t *req = &s->head.req;
    req->version = LG_HTTP_2;
    if (s->cookie.base != NULL)
        lg_headers_add(&s->pool, &req->headers, LG_LIT("cookie"), s->cookie);
    if (req->authority.len == 0) {
        h2o_iovec_t host = lg_headers_get(&req->headers, H2O_STRLIT("host"));
        if (host.base != NULL) {
            req->authority = host;
            lg_headers_remove(&req->headers, H2O_STRLIT("host"));
        }
    }
}

/* Returns 1 when the head was informational (1xx): the next HEADERS frame
 * is a head again. */
static int finish_response_head(lg__h2_stream_t *s)
{
    lg_resp_head_t *resp = &s->head.resp;
    resp->version = LG_HTTP_2;
    if (resp->status >= 200)
        return 0;
    lg_resp_head_t *info = h2o_mem_alloc_pool(lg__h2_head_pool(s), sizeof(*info));
    *info = *resp;
    h2o_vector_reserve(lg__h2_head_pool(s), &s->informational, s->informational.size + 1);
    s->informational.entries[s->informational.size++] = info;
    *resp = (lg_resp_head_t){0};
    return 1;
}

/* Envoy's onRequestHeaderTimeout: 408 and the stream reset, before the driver ever saw it. */
static void on_headers_timeout(lg_timer_t *t)
{
    lg__h2_stream_t *s = H2O_STRUCT_FROM_MEMBER(lg__h2_stream_t, headers_timer, t);
    lg__h2_conn_t *conn = s->conn;
    if (s->done || s->head_ready || s->closed || conn->state != LG__H2_OPEN)
        return;
    lg__h2_enter(conn);
    static const nghttp2_nv status = {(uint8_t *)":status", (uint8_t *)"408", 7, 3,
                                      NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
    int32_t id = (int32_t)s->super.id;
    s->building = NULL; /* the rest of the block is decoded and dropped */
    /* RST_STREAM follows once the 408 is out (on_frame_send): queued now, it would cancel the 408 */
    s->timed_out = 1;
    if (nghttp2_submit_response(conn->session, id, &status, 1, NULL) != 0)
        nghttp2_submit_rst_stream(conn->session, NGHTTP2_FLAG_NONE, id, NGHTTP2_NO_ERROR);
    if (conn->super.server.cbs->on_codec_error != NULL)
        conn->super.server.cbs->on_codec_error(&conn->super.server, 408, "request_header_timeout");
    lg__h2_leave(conn);
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    lg__h2_conn_t *conn = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    lg__h2_stream_t *s;
    if (conn->is_server && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        ++conn->flood.streams_opened;
        s = lg__h2_stream_new(conn, frame->hd.stream_id);
        if (conn->options.request_headers_timeout_ms != 0)
            lg_timer_start(conn->loop, &s->headers_timer, conn->options.request_headers_timeout_ms, on_headers_timeout);
    } else if ((s = get_stream(conn, frame->hd.stream_id)) == NULL) {
        return 0;
    }
    conn->hdr_stream = s;
    s->header_count = 0;
    s->header_bytes = 0;
    if (s->head_ready) {
        s->trailers = h2o_mem_alloc_pool(lg__h2_head_pool(s), sizeof(*s->trailers));
        *s->trailers = (lg_headers_t){NULL};
        s->building = s->trailers;
    } else {
        s->building = conn->is_server ? &s->head.req.headers : &s->head.resp.headers;
    }
    return 0;
}

static void on_headers_frame(lg__h2_conn_t *conn, lg__h2_stream_t *s, int end_stream)
{
    if (s->building == NULL)
        return;
    if (s->building == s->trailers) {
        h2_stat(conn, LG_HTTP2_STAT_trailers, 1);
        s->remote_end = 1;
    } else if (conn->is_server) {
        lg_timer_stop(&s->headers_timer);
        finish_request_head(s);
        s->head_ready = 1;
        s->remote_end = end_stream;
    } else if (!finish_response_head(s)) {
        s->head_ready = 1;
        s->remote_end = end_stream;
    }
    s->building = NULL;
    mark_dirty(s);
}

/* ---- nghttp2 callbacks: frames ---------------------------------------- */

static int flood(lg__h2_conn_t *conn, const char *detail, size_t stat)
{
    h2_stat(conn, stat, 1);
    conn->codec_error = detail;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

/* Envoy's inbound frame limits (ProtocolConstraints::checkInboundFrameLimits). */
static int check_inbound_limits(lg__h2_conn_t *conn, const nghttp2_frame *frame)
{
    switch (frame->hd.type) {
    case NGHTTP2_DATA:
    case NGHTTP2_HEADERS:
        if (frame->hd.length == 0 && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) == 0) {
            if (++conn->flood.empty_frames > MAX_CONSECUTIVE_EMPTY_FRAMES)
                return flood(conn, LG_H2_DETAIL_INBOUND_FLOOD, LG_HTTP2_STAT_inbound_empty_frames_flood);
        } else {
            conn->flood.empty_frames = 0;
        }
        break;
    case NGHTTP2_PRIORITY:
        if (++conn->flood.priority_frames > MAX_PRIORITY_FRAMES_PER_STREAM * (1 + conn->flood.streams_opened))
            return flood(conn, "http2.inbound_priority_frames_flood", LG_HTTP2_STAT_inbound_priority_frames_flood);
        break;
    case NGHTTP2_WINDOW_UPDATE:
        if (++conn->flood.window_update_frames >
            5 + 2 * (conn->flood.streams_opened + MAX_WINDOW_UPDATES_PER_DATA_FRAME * conn->flood.data_frames_sent))
            return flood(conn, "http2.inbound_window_update_frames_flood", LG_HTTP2_STAT_inbound_window_update_frames_flood);
        break;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    lg__h2_conn_t *conn = user_data;
    int rv = check_inbound_limits(conn, frame);
    if (rv != 0)
        return rv;
    lg__h2_stream_t *s = get_stream(conn, frame->hd.stream_id);
    switch (frame->hd.type) {
    case NGHTTP2_DATA:
        if (s != NULL && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
            s->remote_end = 1;
            mark_dirty(s);
        }
        break;
    case NGHTTP2_HEADERS:
        if (s != NULL)
            on_headers_frame(conn, s, (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0);
        break;
    case NGHTTP2_RST_STREAM:
        h2_stat(conn, LG_HTTP2_STAT_rx_reset, 1);
        if (s != NULL)
            s->rst_received = 1;
        break;
    case NGHTTP2_GOAWAY:
        conn->goaway_received = 1;
        break;
    }
    return 0;
}

static int on_data_chunk_recv(nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t len,
                              void *user_data)
{
    lg__h2_conn_t *conn = user_data;
    lg__h2_stream_t *s = get_stream(conn, stream_id);
    if (s == NULL) {
        nghttp2_session_consume(session, stream_id, len);
        return 0;
    }
    recv_append(s, data, len);
    credit_early(conn, s);
    mark_dirty(s); /* process_stream delivers, then notes the flow edge */
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data)
{
    lg__h2_conn_t *conn = user_data;
    lg__h2_stream_t *s = get_stream(conn, stream_id);
    if (s == NULL)
        return 0;
    s->closed = 1;
    s->close_error = error_code;
    mark_dirty(s);
    return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    lg__h2_conn_t *conn = user_data;
    switch (frame->hd.type) {
    case NGHTTP2_DATA:
        ++conn->flood.data_frames_sent;
        /* fallthrough */
    case NGHTTP2_HEADERS:
        if ((frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
            lg__h2_stream_t *s = get_stream(conn, frame->hd.stream_id);
            if (s != NULL)
                s->local_end_sent = 1;
            if (s != NULL && s->timed_out)
                nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
        }
        break;
    case NGHTTP2_RST_STREAM:
        h2_stat(conn, LG_HTTP2_STAT_tx_reset, 1);
        break;
    case NGHTTP2_GOAWAY:
        h2_stat(conn, LG_HTTP2_STAT_goaway_sent, 1);
        /* nghttp2 found a connection error; the session ends once it is written. */
        if (frame->goaway.error_code != NGHTTP2_NO_ERROR && conn->codec_error == NULL)
            conn->codec_error = LG_H2_DETAIL_CODEC_ERROR;
        break;
    }
    return 0;
}

/* Envoy's onInvalidFrame: messaging errors reset the stream only when
 * stream_error_on_invalid_http_messaging is set; everything else, and
 * messaging errors by default, ends the connection. */
static int on_invalid_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, int lib_error_code, void *user_data)
{
    lg__h2_conn_t *conn = user_data;
    lg__h2_stream_t *s = get_stream(conn, frame->hd.stream_id);
    const char *detail = LG_H2_DETAIL_UNKNOWN;
    switch (lib_error_code) {
    case NGHTTP2_ERR_REFUSED_STREAM:
        return 0;
    case NGHTTP2_ERR_HTTP_HEADER:
        detail = LG_H2_DETAIL_INVALID_HEADER;
        break;
    case NGHTTP2_ERR_HTTP_MESSAGING:
        detail = LG_H2_DETAIL_MESSAGING;
        break;
    default:
        conn->codec_error = LG_H2_DETAIL_CODEC_ERROR;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    h2_stat(conn, LG_HTTP2_STAT_rx_messaging_error, 1);
    if (s != NULL) {
        s->detail = detail;
        s->reason_override = LG_RESET_PROTOCOL_ERROR + 1;
    }
    if (conn->options.stream_error_on_invalid_http_messaging)
        return 0;
    conn->codec_error = detail;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

/* ---- outbound --------------------------------------------------------- */

static int batch_full(lg__h2_batch_t *b)
{
    return b->total >= BATCH_MAX_BYTES || b->nsegs >= BATCH_MAX_SEGS;
}

static lg__h2_seg_t *batch_seg(lg__h2_batch_t *b)
{
    if (b->nsegs == b->segcap) {
        b->segcap = b->segcap == 0 ? 64 : b->segcap * 2;
        b->segs = lg_realloc(b->segs, b->segcap * sizeof(*b->segs));
        b->vecs = lg_realloc(b->vecs, b->segcap * sizeof(*b->vecs));
    }
    return b->segs + b->nsegs++;
}

static void batch_copy(lg__h2_batch_t *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        /* small at first: a connection that only sets up and answers a request or two (the idle
         * connections of workload 7 arrive in bursts) should not hold 16 KiB until its trim */
        b->cap = b->len + n < BATCH_MIN_BYTES ? BATCH_MIN_BYTES : (b->len + n) * 2;
        b->buf = lg_realloc(b->buf, b->cap);
    }
    lg__h2_seg_t *last = b->nsegs != 0 ? b->segs + b->nsegs - 1 : NULL;
    if (last != NULL && last->ext == NULL && last->off + last->len == b->len)
        last->len += n;
    else
        *batch_seg(b) = (lg__h2_seg_t){NULL, b->len, n};
    memcpy(b->buf + b->len, p, n);
    b->len += n;
    b->total += n;
}

static void batch_ext(lg__h2_batch_t *b, const char *p, size_t n)
{
    *batch_seg(b) = (lg__h2_seg_t){p, 0, n};
    b->total += n;
}

static ssize_t on_send(nghttp2_session *session, const uint8_t *data, size_t length, int flags, void *user_data)
{
    lg__h2_conn_t *conn = user_data;
    if (batch_full(&conn->batch))
        return NGHTTP2_ERR_WOULDBLOCK;
    batch_copy(&conn->batch, data, length);
    return (ssize_t)length;
}

/* DATA frames: the 9-byte header is copied, the payload is the caller's memory. */
static int on_send_data(nghttp2_session *session, nghttp2_frame *frame, const uint8_t *framehd, size_t length,
                        nghttp2_data_source *source, void *user_data)
{
    lg__h2_conn_t *conn = user_data;
    if (batch_full(&conn->batch))
        return NGHTTP2_ERR_WOULDBLOCK;
    lg__h2_stream_t *s = get_stream(conn, frame->hd.stream_id);
    if (s == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    batch_copy(&conn->batch, framehd, 9);
    size_t left = length;
    while (left != 0) {
        h2o_iovec_t *v = s->sendq + s->sendq_head;
        size_t n = v->len - s->sendq_off < left ? v->len - s->sendq_off : left;
        batch_ext(&conn->batch, v->base + s->sendq_off, n);
        s->sendq_off += n;
        left -= n;
        if (s->sendq_off == v->len) {
            ++s->sendq_head;
            s->sendq_off = 0;
        }
    }
    s->sent_writing += length;
    if (!h2o_linklist_is_linked(&s->writing))
        h2o_linklist_insert(&conn->writing, &s->writing);
    return 0;
}

static ssize_t on_read_data(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *data_flags,
                            nghttp2_data_source *source, void *user_data)
{
    lg__h2_conn_t *conn = user_data;
    lg__h2_stream_t *s = get_stream(conn, stream_id);
    if (s == NULL)
        return NGHTTP2_ERR_DEFERRED; /* reset by the driver: the RST_STREAM is queued */
    size_t avail = s->queued - s->framed, n = avail < length ? avail : length;
    if (n == 0 && !s->local_end) {
        s->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    s->framed += n;
    if (s->framed == s->queued && s->local_end) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->send_trailers != NULL) {
            nghttp2_nv *nva;
            size_t nvlen = lg__h2_build_nva(lg__h2_head_pool(s), &nva, NULL, 0, s->send_trailers, 0);
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            if (nghttp2_submit_trailer(session, stream_id, nva, nvlen) != 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
    }
    return (ssize_t)n;
}

nghttp2_data_provider lg__h2_data_provider(lg__h2_stream_t *s)
{
    return (nghttp2_data_provider){.source.ptr = s, .read_callback = on_read_data};
}

/* The write that carried the streams' framed bytes is complete: they become
 * on_data_sent, which lets the drivers send (and read upstream) more. */
static void writes_done(lg__h2_conn_t *conn)
{
    while (!h2o_linklist_is_empty(&conn->writing)) {
        lg__h2_stream_t *s = H2O_STRUCT_FROM_MEMBER(lg__h2_stream_t, writing, conn->writing.next);
        h2o_linklist_unlink(&s->writing);
        s->sent_unreported += s->sent_writing;
        s->sent_writing = 0;
        mark_dirty(s);
    }
}

/* Writes what the kernel takes now and copies the rest, so that no caller's
 * byte is referenced once this returns (a stream reset meanwhile frees
 * them). TLS sockets copy in h2o_socket_write. Bytes are reported as sent
 * only once the socket took all of them, so that a slow peer holds at most
 * one batch per connection and the drivers' own limits do the rest. */
static void write_batch(lg__h2_conn_t *conn)
{
    lg__h2_batch_t *b = &conn->batch;
    h2o_iovec_t *vecs = b->vecs;
    size_t n = b->nsegs, left = b->total, written_before = conn->sock->bytes_written;
    for (size_t i = 0; i != n; ++i)
        vecs[i] = h2o_iovec_init(b->segs[i].ext != NULL ? b->segs[i].ext : b->buf + b->segs[i].off, b->segs[i].len);
    if (conn->sock->ssl == NULL) {
        int fd = h2o_socket_get_fd(conn->sock);
        while (n != 0) {
            struct msghdr msg = {.msg_iov = (struct iovec *)vecs, .msg_iovlen = n < MAX_IOV ? n : MAX_IOV};
            ssize_t r;
            while ((r = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT)) == -1 && errno == EINTR)
                ;
            if (r == -1) {
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    break;
                conn->peer_gone = 1;
                conn->close_detail = "write error";
                goto Reset;
            }
            conn->sock->bytes_written += (size_t)r;
            left -= (size_t)r;
            for (; n != 0 && (size_t)r >= vecs->len; ++vecs, --n)
                r -= (ssize_t)vecs->len;
            if (n != 0) {
                vecs->base += r;
                vecs->len -= (size_t)r;
            }
        }
        if (n != 0) {
            conn->tail = lg_malloc(left);
            size_t off = 0;
            for (size_t i = 0; i != n; ++i) {
                memcpy(conn->tail + off, vecs[i].base, vecs[i].len);
                off += vecs[i].len;
            }
            h2o_iovec_t v = h2o_iovec_init(conn->tail, left);
            conn->write_in_flight = 1;
            h2o_socket_write(conn->sock, &v, 1, on_write_complete);
        } else {
            writes_done(conn);
        }
    } else {
        conn->write_in_flight = 1;
        h2o_socket_write(conn->sock, vecs, n, on_write_complete);
    }
Reset:
    report_io(conn, 0, conn->sock->bytes_written - written_before);
    b->len = b->nsegs = b->total = 0;
}

static void flush(lg__h2_conn_t *conn)
{
    while (!conn->write_in_flight && !conn->peer_gone && !conn->close_requested) {
        int rv = nghttp2_session_send(conn->session);
        if (rv != 0) {
            conn->codec_error = conn->codec_error != NULL ? conn->codec_error : LG_H2_DETAIL_CODEC_ERROR;
            lg__h2_request_close(conn, LG_RESET_PROTOCOL_ERROR, nghttp2_strerror(rv), NGHTTP2_INTERNAL_ERROR);
            return;
        }
        if (conn->batch.total == 0)
            return;
        write_batch(conn);
    }
}

/* ---- delivery --------------------------------------------------------- */

static lg_reset_reason_t reset_reason(lg__h2_stream_t *s, const char **detail)
{
    *detail = s->detail;
    if (s->reason_override != 0)
        return (lg_reset_reason_t)(s->reason_override - 1);
    if (s->close_error == NGHTTP2_REFUSED_STREAM) {
        *detail = LG_H2_DETAIL_REMOTE_REFUSED;
        return LG_RESET_REFUSED_STREAM;
    }
    if (s->rst_received) {
        *detail = LG_H2_DETAIL_REMOTE_RESET;
        return s->close_error == NGHTTP2_CONNECT_ERROR ? LG_RESET_CONNECTION_FAILURE : LG_RESET_REMOTE;
    }
    if (*detail == NULL)
        *detail = nghttp2_http2_strerror(s->close_error);
    return LG_RESET_PROTOCOL_ERROR;
}

static void deliver_data(lg__h2_stream_t *s)
{
    while (!s->done && !s->paused && s->cursor != NULL) {
        lg__h2_block_t *b = s->cursor;
        h2o_iovec_t v = h2o_iovec_init(b->bytes + b->delivered, b->len - b->delivered);
        b->delivered = b->len;
        s->cursor = b->next;
        s->undelivered -= v.len;
        s->unconsumed += v.len;
        int end = s->undelivered == 0 && s->remote_end && s->trailers == NULL;
        if (end)
            s->remote_end_delivered = 1;
        s->super.cbs->on_data(&s->super, v, end);
    }
}

static void deliver_heads(lg__h2_conn_t *conn, lg__h2_stream_t *s)
{
    if (!s->visible) {
        s->visible = 1;
        conn->super.server.cbs->on_new_stream(&conn->super.server, &s->super);
    }
    while (!s->done && s->informational_delivered < s->informational.size) {
        lg_resp_head_t *info = s->informational.entries[s->informational_delivered++];
        if (s->super.cbs->on_informational != NULL)
            s->super.cbs->on_informational(&s->super, info);
    }
    if (!s->done && s->head_ready && !s->head_delivered) {
        int end = s->remote_end && s->undelivered == 0 && s->trailers == NULL;
        s->head_delivered = 1;
        s->remote_end_delivered = end;
        void *head = &s->head.req;
        if (!conn->is_server) {
            /* the response head outlives this stream in the driver's pool (head_pool) */
            lg_resp_head_t *resp = h2o_mem_alloc_pool(lg__h2_head_pool(s), sizeof(*resp));
            *resp = s->head.resp;
            head = resp;
        }
        s->super.cbs->on_headers(&s->super, head, end);
    }
}

static void deliver_end(lg__h2_stream_t *s)
{
    if (s->done || !s->remote_end || s->remote_end_delivered || s->undelivered != 0)
        return;
    if (s->trailers != NULL) {
        if (s->building == s->trailers)
            return;
        s->remote_end_delivered = 1;
        s->super.cbs->on_trailers(&s->super, s->trailers);
    } else if (!s->paused) {
        s->remote_end_delivered = 1;
        s->super.cbs->on_data(&s->super, h2o_iovec_init(NULL, 0), 1);
    }
}

static void deliver_terminal(lg__h2_conn_t *conn, lg__h2_stream_t *s)
{
    if (s->done || !s->closed)
        return;
    /* A client takes RST_STREAM(NO_ERROR) after a whole response as the end (RFC 9113 8.1). */
    int complete = s->close_error == NGHTTP2_NO_ERROR && s->reason_override == 0 && s->remote_end &&
                   (s->local_end_sent || (!conn->is_server && s->rst_received));
    if (complete) {
        if (s->remote_end_delivered && s->unconsumed == 0 && s->undelivered == 0 && s->sent_unreported == 0 && s->sent_writing == 0)
            stream_retire(s, 1, LG_RESET_LOCAL, NULL);
        return;
    }
    const char *detail;
    lg_reset_reason_t reason = reset_reason(s, &detail);
    if (!s->visible && conn->is_server && s->detail != NULL && conn->super.server.cbs->on_codec_error != NULL)
        conn->super.server.cbs->on_codec_error(&conn->super.server, 0, s->detail);
    stream_retire(s, 0, reason, detail);
}

static void process_stream(lg__h2_conn_t *conn, lg__h2_stream_t *s)
{
    if (s->head_ready || s->informational.size != 0 || s->visible)
        deliver_heads(conn, s);
    if (!s->done && s->head_delivered) {
        deliver_data(s);
        deliver_end(s);
    }
    if (!s->done && s->sent_unreported != 0) {
        size_t n = s->sent_unreported;
        s->sent_unreported = 0;
        s->super.cbs->on_data_sent(&s->super, n);
    }
    note_flow(conn, s); /* once the driver has had the bytes: what it takes at once is no pause */
    deliver_terminal(conn, s);
}

static void process_all(lg__h2_conn_t *conn)
{
    while (!h2o_linklist_is_empty(&conn->dirty) && !conn->close_requested) {
        lg__h2_stream_t *s = H2O_STRUCT_FROM_MEMBER(lg__h2_stream_t, dirty, conn->dirty.next);
        h2o_linklist_unlink(&s->dirty);
        process_stream(conn, s);
    }
    if (conn->close_requested || conn->is_server)
        return;
    if (conn->goaway_received && !conn->goaway_notified) {
        conn->goaway_notified = 1;
        conn->super.client.cbs->on_goaway(&conn->super.client);
    }
    if (conn->done_pending && !conn->close_requested) {
        conn->done_pending = 0;
        conn->super.client.cbs->on_stream_done(&conn->super.client);
    }
}

/* Once nghttp2 is done with the session (GOAWAY both ways, or a connection
 * error written) or the peer is gone, streams that cannot finish are reset
 * and the connection closes when none is left. */
static void check_finished(lg__h2_conn_t *conn)
{
    if (!conn->peer_gone && (nghttp2_session_want_read(conn->session) || nghttp2_session_want_write(conn->session)))
        return;
    for (h2o_linklist_t *l = conn->streams.next; l != &conn->streams; l = l->next) {
        lg__h2_stream_t *s = H2O_STRUCT_FROM_MEMBER(lg__h2_stream_t, link, l);
        if (!s->closed) {
            s->closed = 1;
            conn->streams_at_close = 1;
            s->reason_override =
                (!conn->is_server && conn->codec_error != NULL ? LG_RESET_PROTOCOL_ERROR : LG_RESET_CONNECTION_TERMINATION) + 1;
            s->detail = conn->close_detail != NULL ? conn->close_detail : LG_H2_DETAIL_CONNECTION_TERMINATION;
            mark_dirty(s);
        }
    }
    if (h2o_linklist_is_empty(&conn->streams) && !conn->write_in_flight)
        lg__h2_request_close(conn, conn->codec_error != NULL ? LG_RESET_PROTOCOL_ERROR : LG_RESET_CONNECTION_TERMINATION,
                             conn->close_detail != NULL ? conn->close_detail : LG_H2_DETAIL_CONNECTION_TERMINATION, -1);
}

/* ---- connection lifetime ---------------------------------------------- */

static void destroy(lg__h2_conn_t *conn)
{
    lg_timer_stop(&conn->run_timer);
    lg_timer_stop(&conn->linger_timer);
    if (conn->sock != NULL)
        h2o_socket_close(conn->sock);
    free(conn->tail);
    free(conn->batch.buf);
    free(conn->batch.segs);
    free(conn->batch.vecs);
    free(conn);
}

static void on_linger_timeout(lg_timer_t *t)
{
    destroy(H2O_STRUCT_FROM_MEMBER(lg__h2_conn_t, linger_timer, t));
}

static void write_final_goaway(lg__h2_conn_t *conn, int32_t last_stream_id)
{
    h2_stat(conn, LG_HTTP2_STAT_goaway_sent, 1);
    uint8_t *p = (uint8_t *)(conn->tail = lg_malloc(17));
    uint32_t code = (uint32_t)conn->final_goaway;
    memcpy(p, "\0\0\x08\x07\0\0\0\0\0", 9);
    p[9] = (uint8_t)(last_stream_id >> 24 & 0x7f), p[10] = (uint8_t)(last_stream_id >> 16), p[11] = (uint8_t)(last_stream_id >> 8);
    p[12] = (uint8_t)last_stream_id;
    p[13] = (uint8_t)(code >> 24), p[14] = (uint8_t)(code >> 16), p[15] = (uint8_t)(code >> 8), p[16] = (uint8_t)code;
    h2o_iovec_t v = h2o_iovec_init(conn->tail, 17);
    conn->write_in_flight = 1;
    h2o_socket_write(conn->sock, &v, 1, on_write_complete);
}

/* Envoy's RemoteClose: the peer's socket ended or failed, or the peer sent
 * GOAWAY and nghttp2 finished the session without Legate closing it (no drain,
 * no error of ours). */
static int closed_by_peer(lg__h2_conn_t *conn)
{
    return conn->peer_gone || (conn->goaway_received && !conn->drain_sent && conn->final_goaway < 0 && conn->codec_error == NULL);
}

/* Tells the driver (every stream's on_reset, then on_close), then lingers
 * until the last write ends (bounded) and frees the connection. */
static void close_now(lg__h2_conn_t *conn)
{
    conn->state = LG__H2_CLOSED;
    lg_timer_stop(&conn->run_timer);
    lg_timer_stop(&conn->linger_timer); /* the trim timer until now */
    if (conn->is_server && conn->codec_error != NULL && conn->super.server.cbs->on_codec_error != NULL)
        conn->super.server.cbs->on_codec_error(&conn->super.server, 0, conn->codec_error);
    const char *detail = conn->close_detail != NULL ? conn->close_detail : LG_H2_DETAIL_CONNECTION_TERMINATION;
    if (!h2o_linklist_is_empty(&conn->streams))
        conn->streams_at_close = 1;
    while (!h2o_linklist_is_empty(&conn->streams)) {
        lg__h2_stream_t *s = H2O_STRUCT_FROM_MEMBER(lg__h2_stream_t, link, conn->streams.next);
        /* an upstream that broke the protocol is Envoy's 502 UPE, not a plain termination */
        stream_retire(s, 0,
                      !conn->is_server && (conn->codec_error != NULL || conn->close_reason == LG_RESET_PROTOCOL_ERROR)
                          ? LG_RESET_PROTOCOL_ERROR
                          : LG_RESET_CONNECTION_TERMINATION,
                      detail);
    }
    if (conn->is_server)
        conn->super.server.cbs->on_close(&conn->super.server, (closed_by_peer(conn) ? LG_CONN_CLOSED_REMOTE : 0) |
                                                                  (conn->streams_at_close ? LG_CONN_CLOSED_ACTIVE_RQ : 0));
    else
        conn->super.client.cbs->on_close(&conn->super.client, conn->close_reason);
    free_graveyard(conn);
    int32_t last_stream_id = nghttp2_session_get_last_proc_stream_id(conn->session);
    nghttp2_session_del(conn->session);
    conn->session = NULL;
    h2o_socket_read_stop(conn->sock);
    if (conn->final_goaway >= 0 && !conn->peer_gone && !conn->write_in_flight)
        write_final_goaway(conn, last_stream_id);
    if (conn->write_in_flight && !conn->peer_gone)
        lg_timer_start(conn->loop, &conn->linger_timer, LINGER_MS, on_linger_timeout);
    else
        destroy(conn);
}

void lg__h2_request_close(lg__h2_conn_t *conn, lg_reset_reason_t reason, const char *detail, int goaway_code)
{
    if (conn->close_requested)
        return;
    conn->close_requested = 1;
    conn->close_reason = reason;
    if (conn->close_detail == NULL)
        conn->close_detail = detail;
    conn->final_goaway = goaway_code;
}

/* An idle connection (no stream, nothing being written) keeps only what it
 * needs to take the next request: the write batch, the socket's input buffer
 * and nghttp2's frame buffer are given back, and re-made on demand. */
static void arm_trim(lg__h2_conn_t *conn);

static void on_trim_timer(lg_timer_t *t)
{
    lg__h2_conn_t *conn = H2O_STRUCT_FROM_MEMBER(lg__h2_conn_t, linger_timer, t);
    if (conn->state != LG__H2_OPEN || conn->num_streams != 0 || conn->write_in_flight || conn->batch.total != 0)
        return; /* the next idle moment arms it again */
    if (conn->flood.streams_opened != conn->trim_armed_at) {
        arm_trim(conn); /* idle now, but not for TRIM_MS: its pages would be touched again at once */
        return;
    }
    free(conn->batch.buf);
    free(conn->batch.segs);
    free(conn->batch.vecs);
    conn->batch = (lg__h2_batch_t){NULL};
    if (conn->sock->input->size == 0 && conn->sock->input->bytes != NULL) {
        h2o_buffer_dispose(&conn->sock->input);
        h2o_buffer_init(&conn->sock->input, &h2o_socket_buffer_prototype);
    }
    trim_big_blocks(conn);
}

static void arm_trim(lg__h2_conn_t *conn)
{
    if (conn->num_streams == 0 && !conn->write_in_flight && !lg_timer_is_active(&conn->linger_timer)) {
        conn->trim_armed_at = conn->flood.streams_opened;
        lg_timer_start(conn->loop, &conn->linger_timer, TRIM_MS, on_trim_timer);
    }
}

void lg__h2_enter(lg__h2_conn_t *conn)
{
    ++conn->depth;
}

void lg__h2_leave(lg__h2_conn_t *conn)
{
    if (conn->depth == 1 && conn->state == LG__H2_OPEN) {
        for (;;) {
            process_all(conn);
            if (conn->close_requested)
                break;
            if (!conn->peer_gone)
                flush(conn);
            if (!conn->close_requested)
                check_finished(conn);
            if (conn->close_requested || h2o_linklist_is_empty(&conn->dirty))
                break;
        }
        free_graveyard(conn);
        if (conn->close_requested) {
            close_now(conn); /* frees conn, or leaves it lingering without the driver */
            return;
        }
        arm_trim(conn);
    }
    --conn->depth;
}

static void on_run_timer(lg_timer_t *t)
{
    lg__h2_conn_t *conn = H2O_STRUCT_FROM_MEMBER(lg__h2_conn_t, run_timer, t);
    lg__h2_enter(conn);
    if (conn->pending_read) {
        conn->pending_read = 0;
        recv_input(conn);
    }
    lg__h2_leave(conn);
}

void lg__h2_request_run(lg__h2_conn_t *conn)
{
    if (conn->depth == 0 && conn->state == LG__H2_OPEN && !lg_timer_is_active(&conn->run_timer))
        lg_timer_start(conn->loop, &conn->run_timer, 0, on_run_timer);
}

/* ---- socket ----------------------------------------------------------- */

static void recv_input(lg__h2_conn_t *conn)
{
    h2o_buffer_t *in = conn->sock->input;
    if (conn->close_requested || conn->peer_gone) {
        h2o_buffer_consume(&conn->sock->input, in->size);
        return;
    }
    ssize_t r = nghttp2_session_mem_recv(conn->session, (const uint8_t *)in->bytes, in->size);
    h2o_buffer_consume(&conn->sock->input, in->size);
    if (r < 0) {
        if (r == NGHTTP2_ERR_FLOODED) /* nghttp2's limit on queued SETTINGS and PING acks: Envoy's control frame limit */
            h2_stat(conn, LG_HTTP2_STAT_outbound_control_flood, 1);
        if (conn->codec_error == NULL)
            conn->codec_error = r == NGHTTP2_ERR_FLOODED ? LG_H2_DETAIL_OUTBOUND_FLOOD : LG_H2_DETAIL_CODEC_ERROR;
        lg__h2_request_close(conn, LG_RESET_PROTOCOL_ERROR, nghttp2_strerror((int)r), NGHTTP2_PROTOCOL_ERROR);
        return;
    }
    /* Envoy's max_outbound_frames: a peer that does not read while making us answer. */
    if (nghttp2_session_get_outbound_queue_size(conn->session) > MAX_OUTBOUND_FRAMES) {
        h2_stat(conn, LG_HTTP2_STAT_outbound_flood, 1);
        conn->codec_error = LG_H2_DETAIL_OUTBOUND_FLOOD;
        lg__h2_request_close(conn, LG_RESET_PROTOCOL_ERROR, LG_H2_DETAIL_OUTBOUND_FLOOD, NGHTTP2_ENHANCE_YOUR_CALM);
    }
}

static void on_read(h2o_socket_t *sock, const char *err)
{
    lg__h2_conn_t *conn = sock->data;
    size_t before = sock->input->size;
    err = lg_sock_read(sock, err, LG_SOCK_READ_MAX); /* nghttp2 takes all of it at once */
    report_io(conn, sock->input->size - before, 0);
    lg__h2_enter(conn);
    if (err != NULL) {
        conn->peer_gone = 1;
        if (conn->close_detail == NULL)
            conn->close_detail = err;
        h2o_socket_read_stop(sock);
    } else {
        recv_input(conn);
    }
    lg__h2_leave(conn);
}

static void on_write_complete(h2o_socket_t *sock, const char *err)
{
    lg__h2_conn_t *conn = sock->data;
    conn->write_in_flight = 0;
    free(conn->tail);
    conn->tail = NULL;
    if (conn->state == LG__H2_CLOSED) {
        destroy(conn);
        return;
    }
    lg__h2_enter(conn);
    if (err != NULL) {
        conn->peer_gone = 1;
        if (conn->close_detail == NULL)
            conn->close_detail = err;
    } else {
        writes_done(conn);
    }
    lg__h2_leave(conn);
}

/* ---- stream ops ------------------------------------------------------- */

static void op_send_headers(lg_stream_t *_s, void *head, int end_stream)
{
    lg__h2_stream_t *s = (lg__h2_stream_t *)_s;
    if (s->done || s->conn->state != LG__H2_OPEN)
        return;
    if (s->conn->is_server)
        lg__h2_server_send_head(s, head, end_stream);
    else
        lg__h2_client_send_head(s, head, end_stream);
    lg__h2_request_run(s->conn);
}

static void resume(lg__h2_stream_t *s)
{
    if (s->deferred && s->super.id != 0 && !s->closed) {
        s->deferred = 0;
        nghttp2_session_resume_data(s->conn->session, (int32_t)s->super.id);
    }
    lg__h2_request_run(s->conn);
}

static void op_send_data(lg_stream_t *_s, h2o_iovec_t data, int end_stream)
{
    lg__h2_stream_t *s = (lg__h2_stream_t *)_s;
    if (s->done || s->conn->state != LG__H2_OPEN || s->local_end)
        return;
    if (data.len != 0) {
        if (s->sendq_head != 0 && s->sendq_head == s->sendq_size)
            s->sendq_head = s->sendq_size = 0;
        if (s->sendq_size == s->sendq_cap) {
            if (s->sendq_head != 0) {
                memmove(s->sendq, s->sendq + s->sendq_head, (s->sendq_size - s->sendq_head) * sizeof(*s->sendq));
                s->sendq_size -= s->sendq_head;
                s->sendq_head = 0;
            } else {
                size_t cap = s->sendq_cap == 0 ? 8 : s->sendq_cap * 2;
                h2o_iovec_t *q = small_alloc(cap * sizeof(*q));
                if (q == NULL)
                    abort();
                if (s->sendq_size != 0)
                    memcpy(q, s->sendq, s->sendq_size * sizeof(*q));
                small_free(s->sendq);
                s->sendq = q;
                s->sendq_cap = cap;
            }
        }
        s->sendq[s->sendq_size++] = data;
        s->queued += data.len;
    }
    if (end_stream)
        s->local_end = 1;
    resume(s);
}

static void op_send_trailers(lg_stream_t *_s, lg_headers_t *trailers)
{
    lg__h2_stream_t *s = (lg__h2_stream_t *)_s;
    if (s->done || s->conn->state != LG__H2_OPEN || s->local_end)
        return;
    s->send_trailers = trailers;
    s->local_end = 1;
    resume(s);
}

static void op_consume(lg_stream_t *_s, size_t bytes)
{
    lg__h2_stream_t *s = (lg__h2_stream_t *)_s;
    if (s->done || s->conn->state != LG__H2_OPEN)
        return;
    if (bytes > s->unconsumed)
        bytes = s->unconsumed;
    recv_consume(s, bytes);
    size_t early = bytes < s->credited ? bytes : s->credited; /* the oldest bytes are consumed first */
    s->credited -= early;
    if (bytes != early)
        nghttp2_session_consume(s->conn->session, (int32_t)s->super.id, bytes - early);
    credit_early(s->conn, s);
    if (s->unconsumed == 0 || s->at_limit)
        mark_dirty(s); /* process_stream notes the resume, once delivery is done */
    lg__h2_request_run(s->conn);
}

/* Envoy's reasonToReset: REFUSED_STREAM and CONNECT_ERROR, NO_ERROR otherwise. */
static uint32_t reset_code(lg_reset_reason_t reason)
{
    switch (reason) {
    case LG_RESET_REFUSED_STREAM:
        return NGHTTP2_REFUSED_STREAM;
    case LG_RESET_CONNECTION_FAILURE:
        return NGHTTP2_CONNECT_ERROR;
    default:
        return NGHTTP2_NO_ERROR;
    }
}

static void op_reset(lg_stream_t *_s, lg_reset_reason_t reason)
{
    lg__h2_stream_t *s = (lg__h2_stream_t *)_s;
    lg__h2_conn_t *conn = s->conn;
    if (s->done || conn->state != LG__H2_OPEN)
        return;
    if (s->super.id != 0 && !s->closed)
        nghttp2_submit_rst_stream(conn->session, NGHTTP2_FLAG_NONE, (int32_t)s->super.id, reset_code(reason));
    s->visible = 0; /* no callback after ops->reset */
    if (!conn->is_server)
        conn->done_pending = 1;
    stream_retire(s, 0, reason, NULL);
    lg__h2_request_run(conn);
}

static void op_read_pause(lg_stream_t *_s, int paused)
{
    lg__h2_stream_t *s = (lg__h2_stream_t *)_s;
    if (s->done || s->conn->state != LG__H2_OPEN)
        return;
    s->paused = paused != 0;
    if (!paused) {
        mark_dirty(s);
        lg__h2_request_run(s->conn);
    }
}

const lg_stream_ops_t lg__h2_stream_ops = {op_send_headers, op_send_data, op_send_trailers, op_consume, op_reset, op_read_pause};

/* ---- heads out -------------------------------------------------------- */

static int is_connection_specific(const lg_header_t *h, int is_request)
{
    const char *n = h->name.base;
    size_t l = h->name.len;
    if (l == 0 || n[0] == ':')
        return 1;
    if (h2o_memis(n, l, H2O_STRLIT("connection")) || h2o_memis(n, l, H2O_STRLIT("keep-alive")) ||
        h2o_memis(n, l, H2O_STRLIT("proxy-connection")) || h2o_memis(n, l, H2O_STRLIT("transfer-encoding")) ||
        h2o_memis(n, l, H2O_STRLIT("upgrade")))
        return 1;
    /* RFC 9113 8.2.2: TE may only carry "trailers"; Host is :authority in a request. */
    if (is_request && h2o_memis(n, l, H2O_STRLIT("te")))
        return !h2o_lcstris(h->value.base, h->value.len, H2O_STRLIT("trailers"));
    return is_request && h2o_memis(n, l, H2O_STRLIT("host"));
}

/* The upper-case ASCII letters among the 8 bytes at `p`, one bit (0x80) each. */
static uint64_t upper8(const char *p)
{
    uint64_t w, x;
    memcpy(&w, p, 8);
    x = w & 0x7f7f7f7f7f7f7f7full; /* no carry between bytes below */
    return (x + 0x3f3f3f3f3f3f3f3full) & ~(x + 0x2525252525252525ull) & ~w & 0x8080808080808080ull;
}

/* Copies a header name, lower-cased. Names are lower-case by contract (http-t.h), so
 * this only checks, a word at a time: nghttp2 sends NO_COPY names as they are. `dst`
 * has 8 bytes of room past the name (the check reads whole words). */
static char *copy_name(char *dst, h2o_iovec_t name)
{
    memcpy(dst, name.base, name.len);
    uint64_t upper = 0;
    size_t i = 0;
    for (; i + 8 <= name.len; i += 8)
        upper |= upper8(dst + i);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    if (i != name.len) /* the name's bytes are the word's low ones */
        upper |= upper8(dst + i) & ((1ull << 8 * (name.len - i)) - 1);
#else
    for (; i != name.len; ++i)
        upper |= (unsigned)(dst[i] - 'A') < 26;
#endif
    if (upper != 0)
        for (i = 0; i != name.len; ++i)
            dst[i] = (char)h2o_tolower(dst[i]);
    return dst + name.len;
}

static char *copy_value(char *dst, h2o_iovec_t value)
{
    if (value.len != 0)
        memcpy(dst, value.base, value.len);
    return dst + value.len;
}

/*
 * Names and values are copied into one block of `pool` (lg__h2_head_pool) and
 * handed to nghttp2 with NO_COPY, which saves nghttp2 a malloc, a copy and a
 * lower-casing pass per head. nghttp2 reads them only when it packs the
 * HEADERS frame (nghttp2_session_send; at submit it reads lengths only), and
 * it packs a stream's HEADERS only while that stream is open and not CLOSING.
 * The pool is the stream's own (freed once the stream is retired) or the
 * driver's (kept valid until the stream completes or is reset, codec-t.h),
 * and every way a stream ends comes after nghttp2 can no longer pack it:
 *  - ops->reset and the codec's own resets queue RST_STREAM: the stream is
 *    CLOSING (nghttp2_session_add_item), its queued HEADERS fail
 *    session_predicate_*_headers_send and are dropped unread; a client
 *    request HEADERS still in ob_syn is cancelled by the RST_STREAM;
 *  - a stream nghttp2 closed (on_stream_close: peer RST_STREAM, GOAWAY, end
 *    of both sides) is gone from its map, so its HEADERS fail the same checks;
 *  - check_finished retires open streams only when the peer is gone (flush
 *    no longer calls nghttp2) or the session is closing (nothing is packed);
 *  - close_now retires the streams and deletes the session, whose queued
 *    items are freed without being packed;
 *  - a stream completes only after its END_STREAM (in the last HEADERS or
 *    DATA) was sent.
 * Retired streams' own pools are freed by free_graveyard at the end of the
 * outermost leave, after that turn's flush.
 */
size_t lg__h2_build_nva(h2o_mem_pool_t *pool, nghttp2_nv **nva, const lg__h2_pseudo_t *pseudo, size_t npseudo,
                        const lg_headers_t *headers, int is_request)
{
    size_t bytes = 0, n = 0;
    for (size_t i = 0; i != npseudo; ++i)
        bytes += pseudo[i].value.len;
    for (size_t i = 0; i != headers->size; ++i)
        bytes += headers->entries[i].name.len + headers->entries[i].value.len;
    nghttp2_nv *v = h2o_mem_alloc_pool(pool, sizeof(*v) * (npseudo + headers->size) + bytes + 8 /* copy_name's words */);
    char *p = (char *)(v + npseudo + headers->size);
    for (size_t i = 0; i != npseudo; ++i, ++n) {
        v[n] = (nghttp2_nv){(uint8_t *)pseudo[i].name, (uint8_t *)p, pseudo[i].name_len, pseudo[i].value.len,
                            NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
        p = copy_value(p, pseudo[i].value);
    }
    for (size_t i = 0; i != headers->size; ++i) {
        const lg_header_t *h = headers->entries + i;
        if (is_connection_specific(h, is_request))
            continue;
        v[n].name = (uint8_t *)p;
        v[n].namelen = h->name.len;
        p = copy_name(p, h->name);
        v[n].value = (uint8_t *)p;
        v[n].valuelen = h->value.len;
        p = copy_value(p, h->value);
        v[n++].flags = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE;
    }
    *nva = v;
    return n;
}

/* ---- setup ------------------------------------------------------------ */

static nghttp2_session_callbacks *new_callbacks(void)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        abort();
    nghttp2_session_callbacks_set_send_callback(cbs, on_send);
    nghttp2_session_callbacks_set_send_data_callback(cbs, on_send_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, on_invalid_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    return cbs;
}

static int submit_settings(lg__h2_conn_t *conn)
{
    nghttp2_settings_entry iv[4];
    size_t n = 0;
    uint32_t window = conn->settings.initial_stream_window_size;
    if (window > NGHTTP2_MAX_WINDOW_SIZE)
        window = NGHTTP2_MAX_WINDOW_SIZE;
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, conn->settings.max_concurrent_streams};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window};
    if (!conn->is_server)
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
    else if (conn->options.allow_connect)
        iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1};
    if (nghttp2_submit_settings(conn->session, NGHTTP2_FLAG_NONE, iv, n) != 0)
        return -1;
    window = conn->settings.initial_connection_window_size;
    if (window > NGHTTP2_MAX_WINDOW_SIZE)
        window = NGHTTP2_MAX_WINDOW_SIZE;
    if (window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE &&
        nghttp2_session_set_local_window_size(conn->session, NGHTTP2_FLAG_NONE, 0, (int32_t)window) != 0)
        return -1;
    return 0;
}

int lg__h2_conn_init(lg__h2_conn_t *conn, int is_server, lg_loop_t *loop, h2o_socket_t *sock, const lg_h2_settings_t *settings,
                     const lg_h2_options_t *options)
{
    conn->is_server = is_server;
    conn->loop = loop;
    conn->sock = sock;
    conn->settings = *settings;
    if (options != NULL)
        conn->options = *options;
    conn->final_goaway = -1;
    h2o_linklist_init_anchor(&conn->streams);
    h2o_linklist_init_anchor(&conn->dirty);
    h2o_linklist_init_anchor(&conn->graveyard);
    h2o_linklist_init_anchor(&conn->writing);

    nghttp2_session_callbacks *cbs = new_callbacks();
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0)
        abort();
    /* Windows reopen only as the driver consumes (back-pressure). */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* as Envoy: nghttp2 would otherwise keep every closed stream of a long-lived connection */
    nghttp2_option_set_no_closed_streams(opt, 1);
    nghttp2_option_set_max_outbound_ack(opt, MAX_OUTBOUND_CONTROL_FRAMES);
    nghttp2_mem mem = {conn, mem_malloc, mem_free, mem_calloc, mem_realloc};
    int rv = is_server ? nghttp2_session_server_new3(&conn->session, cbs, conn, opt, &mem)
                       : nghttp2_session_client_new3(&conn->session, cbs, conn, opt, &mem);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0)
        return -1;
    if (submit_settings(conn) != 0) {
        nghttp2_session_del(conn->session);
        return -1;
    }
    sock->data = conn;
    /* The preface (client) and SETTINGS go out at once; no driver callback can run here. */
    flush(conn);
    lg_sock_read_bounded(sock);
    h2o_socket_read_start(sock, on_read);
    if (sock->input->size != 0)
        conn->pending_read = 1;
    lg__h2_request_run(conn);
    return 0;
}
