/*
 * TLS contexts compiled from envoy.extensions.transport_sockets.tls.v3
 * DownstreamTlsContext / UpstreamTlsContext (CommonTlsContext,
 * CertificateValidationContext, TlsParameters, static Secrets).
 *
 * An lg_tls_context_t is the compiled configuration: immutable after compile,
 * refcounted, shared by every worker. It owns the OpenSSL SSL_CTX that new
 * handshakes use; when a certificate file it was built from changes, the
 * control thread builds a new SSL_CTX and swaps it in (lg_tls_reload_poll):
 * handshakes already started keep the SSL_CTX they began with.
 */
#ifndef LEGATE_TLS_T_H
#define LEGATE_TLS_T_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>
#include <h2o/memory.h>
#include "legate/route-t.h"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct st_lg_stats_block_t lg_stats_block_t;

typedef enum en_lg_tls_role_t {
    LG_TLS_SERVER, /* downstream: terminates TLS */
    LG_TLS_CLIENT, /* upstream: originates TLS */
} lg_tls_role_t;

/* <owner>.ssl.* counters, Envoy's SslStats, in Envoy's order. The dynamic
 * ssl.ciphers.<name>, ssl.versions.<name>, ssl.curves.<name> counters live in
 * blocks of their own, created on first use. */
#define LG_TLS_STATS(X)               \
    X(COUNTER, connection_error)      \
    X(COUNTER, handshake)             \
    X(COUNTER, session_reused)        \
    X(COUNTER, no_certificate)        \
    X(COUNTER, fail_verify_no_cert)   \
    X(COUNTER, fail_verify_error)     \
    X(COUNTER, fail_verify_san)       \
    X(COUNTER, fail_verify_cert_hash) \
    X(COUNTER, ocsp_staple_failed)    \
    X(COUNTER, ocsp_staple_omitted)   \
    X(COUNTER, ocsp_staple_responses) \
    X(COUNTER, ocsp_staple_requests)  \
    X(COUNTER, was_key_usage_invalid)
#define LG__TLS_STAT_ENUM(type, name) LG_TLS_STAT_##name,
enum { LG_TLS_STATS(LG__TLS_STAT_ENUM) LG_TLS_STAT__COUNT };
#undef LG__TLS_STAT_ENUM

/* An envoy.config.core.v3.DataSource as compiled: file sources are re-read on
 * reload, the others are kept as bytes. */
typedef enum en_lg_tls_source_kind_t {
    LG_TLS_SOURCE_NONE,
    LG_TLS_SOURCE_FILE,
    LG_TLS_SOURCE_BYTES, /* inline_bytes, inline_string, environment_variable (read at compile) */
} lg_tls_source_kind_t;

typedef struct st_lg_tls_source_t {
    lg_tls_source_kind_t kind;
    char *path;        /* FILE */
    h2o_iovec_t bytes; /* BYTES (malloc'ed) */
} lg_tls_source_t;

/* One TlsCertificate: a chain and its key. */
typedef struct st_lg_tls_cert_source_t {
    lg_tls_source_t chain, key, password;
} lg_tls_cert_source_t;

/* A SubjectAltNameMatcher (san_type 0 = any type: match_subject_alt_names). */
typedef struct st_lg_tls_san_matcher_t {
    int san_type; /* SubjectAltNameMatcher.SanType: 1 EMAIL, 2 DNS, 3 URI, 4 IP_ADDRESS */
    lg_string_matcher_t match;
} lg_tls_san_matcher_t;

/* A file a context was built from, with what stat() said at build time. */
typedef struct st_lg_tls_watch_t {
    char *path;
    dev_t dev;
    ino_t ino;
    off_t size;
    int64_t mtime_ns;
    int exists;
} lg_tls_watch_t;

/* Counters created on first use under "<owner>.ssl.<kind>." (kind: ciphers,
 * versions, curves): one block per name, indexed like lg_tls__dyn_names. */
#define LG_TLS_DYN_MAX 48

typedef struct st_lg_tls_context_t {
    size_t _refcnt; /* atomic */
    lg_tls_role_t role;
    /* certificates (server: at least one; client: the mTLS certificate, optional) */
    lg_tls_cert_source_t *certs;
    size_t n_certs;
    /* validation */
    int has_validation;
    lg_tls_source_t trusted_ca, crl;
    lg_tls_san_matcher_t *sans;
    size_t n_sans;
    uint8_t (*cert_hashes)[32]; /* verify_certificate_hash: SHA-256 of the DER certificate */
    size_t n_cert_hashes;
    uint8_t (*spki_hashes)[32]; /* verify_certificate_spki: SHA-256 of the DER SubjectPublicKeyInfo */
    size_t n_spki_hashes;
    unsigned require_client_cert : 1;
    unsigned allow_expired : 1;
    unsigned accept_untrusted : 1;
    unsigned only_verify_leaf_crl : 1;
    unsigned disable_tickets : 1;
    unsigned disable_session_cache : 1;
    uint32_t max_verify_depth; /* 0 = OpenSSL's default */
    /* tls_params */
    int min_version, max_version; /* TLS1_2_VERSION ... */
    char *cipher_list;            /* TLS <= 1.2 (OpenSSL syntax); NULL = OpenSSL's */
    char *curves;
    char *sigalgs;
    /* ALPN in wire format (length-prefixed): server preference / client offer */
    h2o_iovec_t alpn;
    char *sni;                  /* client: UpstreamTlsContext.sni, NULL when empty */
    uint8_t config_hash[32];    /* client: SHA-256 of the UpstreamTlsContext and the owner (lg_tls_context_same) */
    uint32_t max_session_keys;  /* client: sessions kept for resumption (default 1; 0 = no resumption) */
    uint32_t session_timeout_s; /* server: 0 = OpenSSL's default */
    uint8_t (*ticket_keys)[80]; /* server: session_ticket_keys (name 16, hmac 32, aes 32) */
    size_t n_ticket_keys;
    uint8_t sid_ctx[32]; /* server: session id context (a hash of the config) */
    /* stats */
    lg_stats_block_t *stats; /* "<owner>.ssl." */
    char *stats_prefix;
    lg_stats_block_t *_Atomic dyn[LG_TLS_DYN_MAX];
    /* SDS: the secrets named with an sds_config. Such a context keeps a copy
     * of its CommonTlsContext (_common) and builds every SSL_CTX from a fresh
     * compile of it with the secrets installed at that time
     * (lg_tls_secret_upsert rebuilds it); until all of them arrived its
     * SSL_CTX fails every handshake, as Envoy resets such connections. */
    char **sds_names;
    size_t n_sds_names;
    void *_common;
    size_t _sds_missing; /* while compiling: named secrets not installed */
    int _not_ready;      /* the SSL_CTX is the one that fails every handshake; guarded by _mutex */
    /* "<owner>.server_ssl_socket_factory." / "<owner>.client_ssl_socket_factory.":
     * ssl_context_update_by_sds, then downstream_/upstream_context_secrets_not_ready */
    lg_stats_block_t *factory_stats;
    /* the live SSL_CTX and the files it came from; guarded by _mutex */
    pthread_mutex_t _mutex;
    SSL_CTX *_ssl_ctx;
    lg_tls_watch_t *_watches;
    size_t _n_watches;
    uint64_t _generation; /* +1 per rebuild */
    /* client: the sessions kept for resumption, newest first, each for the
     * SNI and verified name it was made with; guarded by _mutex */
    struct st_lg_tls_session_t *_sessions;
    size_t _n_sessions;
    struct st_lg_tls_context_t *_next, **_pprev; /* reload registry, when _n_watches != 0 */
} lg_tls_context_t;

/* The static secrets of a bootstrap (owned copies). */
typedef struct st_lg_tls_secrets_t {
    struct Envoy__Extensions__TransportSockets__Tls__V3__Secret **secrets;
    size_t n;
} lg_tls_secrets_t;

/* A parsed ClientHello (tls_inspector): the SNI and the offered ALPN list. */
#define LG_TLS_HELLO_MAX_ALPN 16
typedef struct st_lg_tls_client_hello_t {
    char server_name[256]; /* "" when absent */
    size_t n_alpn;
    const char *alpn[LG_TLS_HELLO_MAX_ALPN]; /* point into _alpn_buf */
    char _alpn_buf[LG_TLS_HELLO_MAX_ALPN * 32];
} lg_tls_client_hello_t;

typedef enum en_lg_tls_hello_status_t {
    LG_TLS_HELLO_NEED_MORE, /* a prefix of a ClientHello: read more */
    LG_TLS_HELLO_FOUND,     /* a whole ClientHello was parsed */
    LG_TLS_HELLO_NOT_TLS,   /* not a TLS handshake (plaintext, garbage, SSLv2) */
    LG_TLS_HELLO_TOO_LARGE, /* larger than the limit */
} lg_tls_hello_status_t;

#endif
