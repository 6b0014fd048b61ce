/*
 * Compiles DownstreamTlsContext / UpstreamTlsContext into lg_tls_context_t and
 * builds the OpenSSL SSL_CTX behind it; rebuilds it when a certificate file
 * changes (lg_tls_reload_poll).
 *
 * Compile copies what a rebuild needs (file paths, inline bytes, matchers) so
 * that the protos can be freed; building reads the files again each time.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <h2o/cache.h>
#include <h2o/version.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "legate/pbjson.h"
#include "legate/protobuf.h"
#include "legate/route.h"
#include "legate/stats.h"
#include "legate/tls.h"
#include "legate/sock.h"
#include "legate/worker-t.h"

/* match_subject_alt_names and the certificate provider fields are deprecated but still honoured. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

typedef Envoy__Extensions__TransportSockets__Tls__V3__CommonTlsContext common_proto_t;
typedef Envoy__Extensions__TransportSockets__Tls__V3__CertificateValidationContext cvc_proto_t;
typedef Envoy__Extensions__TransportSockets__Tls__V3__TlsCertificate cert_proto_t;
typedef Envoy__Extensions__TransportSockets__Tls__V3__TlsParameters params_proto_t;
typedef Envoy__Extensions__TransportSockets__Tls__V3__SdsSecretConfig sds_proto_t;
typedef Envoy__Extensions__TransportSockets__Tls__V3__Secret secret_proto_t;
typedef Envoy__Config__Core__V3__DataSource source_proto_t;

#define TLS_TYPE_DOWNSTREAM "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
#define TLS_TYPE_UPSTREAM "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"

/* Envoy's defaults (BoringSSL equal-preference groups flattened for OpenSSL). */
static const char default_ciphers[] = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256:"
                                      "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384";
static const char default_curves[] = "X25519:P-256";
/* TLS 1.3 suites are not configurable in Envoy (cipher_suites is TLS <= 1.2): BoringSSL's order
 * on CPUs with AES instructions. OpenSSL's own default puts AES-256 first, whose SHA-384 key
 * schedule costs every handshake more. */
static const char tls13_suites[] = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";

static const lg_stat_def_t tls_stat_defs[] = {LG_TLS_STATS(LG_STAT_DEF)};
/* Envoy's SSL socket factory stats (secret.rst "Statistics") */
enum { FACTORY_update_by_sds, FACTORY_not_ready, FACTORY__COUNT };
static const lg_stat_def_t server_factory_defs[] = {{"ssl_context_update_by_sds", LG_STAT_COUNTER},
                                                    {"downstream_context_secrets_not_ready", LG_STAT_COUNTER}};
static const lg_stat_def_t client_factory_defs[] = {{"ssl_context_update_by_sds", LG_STAT_COUNTER},
                                                    {"upstream_context_secrets_not_ready", LG_STAT_COUNTER}};

/* static_resources.secrets, installed with the bootstrap (lg_tls_secrets_install) */
static pthread_mutex_t secrets_mutex = PTHREAD_MUTEX_INITIALIZER;
static lg_tls_secrets_t *static_secrets;

/* contexts built from files, for lg_tls_reload_poll */
static pthread_mutex_t registry_mutex = PTHREAD_MUTEX_INITIALIZER;
static lg_tls_context_t *registry_head;

static SSL_CTX *build(lg_tls_context_t *t, lg_tls_watch_t **watches, size_t *n_watches, int *not_ready, lg_error_t *err);

/* lg_error_prefix that keeps field paths dotted: "a" + "b[0]: msg" gives
 * "a.b[0]: msg"; a message that is not a path gets "a: msg". */
static int __attribute__((format(printf, 2, 3))) path_prefix(lg_error_t *err, const char *fmt, ...)
{
    char prefix[512], old[LG_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof(old));
    size_t n = 0;
    while (old[n] != '\0' && (islower((unsigned char)old[n]) || isdigit((unsigned char)old[n]) || strchr("_.[]", old[n]) != NULL))
        ++n;
    int is_path = n != 0 && old[n] == ':' && old[n + 1] == ' ';
    size_t plen = strlen(prefix);
    int room = (int)(sizeof(err->msg) > plen + 3 ? sizeof(err->msg) - plen - 3 : 0);
    snprintf(err->msg, sizeof(err->msg), "%s%s%.*s", prefix, is_path ? "." : ": ", room, old);
    return -1;
}

/* ---- data sources ---- */

static void source_dispose(lg_tls_source_t *s)
{
    free(s->path);
    free(s->bytes.base);
    *s = (lg_tls_source_t){LG_TLS_SOURCE_NONE};
}

static int source_compile(lg_tls_source_t *out, const source_proto_t *m, lg_error_t *err)
{
    source_dispose(out);
    if (m == NULL)
        return 0;
    switch (m->specifier_case) {
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_FILENAME:
        if (m->filename[0] == '\0')
            return lg_error(err, "filename: value length must be at least 1 characters");
        out->kind = LG_TLS_SOURCE_FILE;
        out->path = lg_strdup(m->filename);
        return 0;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_BYTES:
        out->kind = LG_TLS_SOURCE_BYTES;
        out->bytes = h2o_iovec_init(lg_malloc(m->inline_bytes.len + 1), m->inline_bytes.len);
        memcpy(out->bytes.base, m->inline_bytes.data, m->inline_bytes.len);
        return 0;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING:
        out->kind = LG_TLS_SOURCE_BYTES;
        out->bytes = h2o_iovec_init(lg_strdup(m->inline_string), strlen(m->inline_string));
        return 0;
    case ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_ENVIRONMENT_VARIABLE: {
        const char *v = getenv(m->environment_variable);
        if (v == NULL)
            return lg_error(err, "environment_variable: Environment variable doesn't exist: %s", m->environment_variable);
        out->kind = LG_TLS_SOURCE_BYTES;
        out->bytes = h2o_iovec_init(lg_strdup(v), strlen(v));
        return 0;
    }
    default:
        return 0;
    }
}

/* How Envoy names a source in its errors. */
static const char *source_name(const lg_tls_source_t *s)
{
    return s->kind == LG_TLS_SOURCE_FILE ? s->path : "<inline>";
}

static void watch_add(lg_tls_watch_t **w, size_t *n, const char *path)
{
    struct stat st;
    for (size_t i = 0; i != *n; ++i)
        if (strcmp((*w)[i].path, path) == 0)
            return;
    *w = lg_realloc(*w, (*n + 1) * sizeof(**w));
    lg_tls_watch_t *x = *w + (*n)++;
    *x = (lg_tls_watch_t){lg_strdup(path)};
    if (stat(path, &st) == 0) {
        x->exists = 1;
        x->dev = st.st_dev;
        x->ino = st.st_ino;
        x->size = st.st_size;
        x->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    }
}

static void watches_free(lg_tls_watch_t *w, size_t n)
{
    for (size_t i = 0; i != n; ++i)
        free(w[i].path);
    free(w);
}

/* Reads a source into a memory BIO; files are stat()ed before they are read so
 * that a change during the read triggers another rebuild. */
static BIO *source_bio(const lg_tls_source_t *s, lg_tls_watch_t **w, size_t *n, lg_error_t *err)
{
    if (s->kind == LG_TLS_SOURCE_BYTES)
        return BIO_new_mem_buf(s->bytes.base, (int)s->bytes.len);
    watch_add(w, n, s->path);
    size_t len;
    char *data = lg_read_file(s->path, &len, err);
    if (data == NULL)
        return NULL;
    BIO *bio = BIO_new(BIO_s_mem());
    BIO_write(bio, data, (int)len);
    free(data);
    return bio;
}

/* ---- compile ---- */

/* Secrets are installed before anything that refers to them is compiled, on
 * the same (control) thread: what this returns stays valid for the compile. */
static const secret_proto_t *find_secret(const char *name, int type)
{
    const secret_proto_t *found = NULL;
    pthread_mutex_lock(&secrets_mutex);
    for (size_t i = 0; static_secrets != NULL && i != static_secrets->n && found == NULL; ++i)
        if (strcmp(static_secrets->secrets[i]->name, name) == 0 && (int)static_secrets->secrets[i]->type_case == type)
            found = static_secrets->secrets[i];
    pthread_mutex_unlock(&secrets_mutex);
    return found;
}

static int compile_cert(lg_tls_cert_source_t *c, const cert_proto_t *m, lg_error_t *err)
{
    if (m->pkcs12 != NULL)
        return lg_error(err, "pkcs12: PKCS#12 certificates are not supported");
    if (m->private_key_provider != NULL)
        return lg_error(err, "private_key_provider: private key providers are not supported");
    if (m->certificate_chain == NULL || m->certificate_chain->specifier_case == 0)
        return lg_error(err, "certificate_chain: a TlsCertificate needs a certificate chain");
    if (m->private_key == NULL || m->private_key->specifier_case == 0)
        return lg_error(err, "private_key: a TlsCertificate needs a private key");
    if (source_compile(&c->chain, m->certificate_chain, err) != 0)
        return path_prefix(err, "certificate_chain");
    if (source_compile(&c->key, m->private_key, err) != 0)
        return path_prefix(err, "private_key");
    if (source_compile(&c->password, m->password, err) != 0)
        return path_prefix(err, "password");
    if (m->ocsp_staple != NULL)
        LG_WARN(config, "ocsp_staple is ignored: OCSP stapling is not supported");
    return 0;
}

static int add_cert(lg_tls_context_t *t, const cert_proto_t *m, lg_error_t *err)
{
    t->certs = lg_realloc(t->certs, (t->n_certs + 1) * sizeof(*t->certs));
    lg_tls_cert_source_t *c = t->certs + t->n_certs++;
    memset(c, 0, sizeof(*c));
    return compile_cert(c, m, err);
}

/* verify_certificate_hash: hex, optionally with ':' between bytes. */
static int parse_hash(const char *s, uint8_t out[32])
{
    size_t n = 0;
    for (const char *p = s; *p != '\0';) {
        if (*p == ':') {
            ++p;
            continue;
        }
        char byte[3] = {p[0], p[0] != '\0' ? p[1] : '\0', '\0'};
        char *end;
        if (n == 32 || byte[1] == '\0' || !isxdigit((unsigned char)byte[0]) || !isxdigit((unsigned char)byte[1]))
            return -1;
        out[n++] = (uint8_t)strtoul(byte, &end, 16);
        p += 2;
    }
    return n == 32 ? 0 : -1;
}

static int base64_decode_32(const char *s, uint8_t out[32])
{
    uint8_t buf[64];
    size_t len = strlen(s);
    if (len != 44)
        return -1;
    int n = EVP_DecodeBlock(buf, (const unsigned char *)s, (int)len);
    /* EVP_DecodeBlock counts the padding bytes as output */
    if (n != 33 || s[43] != '=')
        return -1;
    memcpy(out, buf, 32);
    return 0;
}

static int compile_validation(lg_tls_context_t *t, const cvc_proto_t *m, lg_error_t *err)
{
    t->has_validation = 1;
    if (m->ca_certificate_provider_instance != NULL)
        return lg_error(err, "ca_certificate_provider_instance: certificate providers are not supported");
    if (m->system_root_certs != NULL)
        return lg_error(err, "system_root_certs: system root certificates are not supported");
    if (m->custom_validator_config != NULL)
        return lg_error(err, "custom_validator_config: custom certificate validators are not supported");
    if (m->trusted_ca != NULL && source_compile(&t->trusted_ca, m->trusted_ca, err) != 0)
        return path_prefix(err, "trusted_ca");
    if (m->crl != NULL && source_compile(&t->crl, m->crl, err) != 0)
        return path_prefix(err, "crl");
    size_t nsans = m->n_match_typed_subject_alt_names + m->n_match_subject_alt_names;
    t->sans = lg_realloc(t->sans, (t->n_sans + nsans + 1) * sizeof(*t->sans));
    for (size_t i = 0; i != m->n_match_typed_subject_alt_names; ++i) {
        const Envoy__Extensions__TransportSockets__Tls__V3__SubjectAltNameMatcher *x = m->match_typed_subject_alt_names[i];
        if (x->san_type == 0 || x->san_type > 4)
            return lg_error(err, "match_typed_subject_alt_names[%zu].san_type: %s", i,
                            x->san_type == 0 ? "value must not be in list [SAN_TYPE_UNSPECIFIED]" : "OTHER_NAME is not supported");
        if (x->matcher == NULL)
            return lg_error(err, "match_typed_subject_alt_names[%zu].matcher: value is required", i);
        lg_tls_san_matcher_t *sm = t->sans + t->n_sans;
        memset(sm, 0, sizeof(*sm));
        sm->san_type = (int)x->san_type;
        if (lg_string_matcher_compile(x->matcher, &sm->match, err) != 0)
            return path_prefix(err, "match_typed_subject_alt_names[%zu].matcher", i);
        ++t->n_sans;
    }
    for (size_t i = 0; i != m->n_match_subject_alt_names; ++i) {
        lg_tls_san_matcher_t *sm = t->sans + t->n_sans;
        memset(sm, 0, sizeof(*sm));
        if (lg_string_matcher_compile(m->match_subject_alt_names[i], &sm->match, err) != 0)
            return path_prefix(err, "match_subject_alt_names[%zu]", i);
        ++t->n_sans;
    }
    t->cert_hashes = lg_realloc(t->cert_hashes, (t->n_cert_hashes + m->n_verify_certificate_hash + 1) * 32);
    for (size_t i = 0; i != m->n_verify_certificate_hash; ++i)
        if (parse_hash(m->verify_certificate_hash[i], t->cert_hashes[t->n_cert_hashes++]) != 0)
            return lg_error(err, "verify_certificate_hash[%zu]: Invalid hex-encoded SHA-256 %s", i, m->verify_certificate_hash[i]);
    t->spki_hashes = lg_realloc(t->spki_hashes, (t->n_spki_hashes + m->n_verify_certificate_spki + 1) * 32);
    for (size_t i = 0; i != m->n_verify_certificate_spki; ++i)
        if (base64_decode_32(m->verify_certificate_spki[i], t->spki_hashes[t->n_spki_hashes++]) != 0)
            return lg_error(err, "verify_certificate_spki[%zu]: Invalid base64-encoded SHA-256 %s", i,
                            m->verify_certificate_spki[i]);
    t->allow_expired |= m->allow_expired_certificate;
    t->only_verify_leaf_crl |= m->only_verify_leaf_cert_crl;
    t->accept_untrusted |=
        m->trust_chain_verification ==
        ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__CERTIFICATE_VALIDATION_CONTEXT__TRUST_CHAIN_VERIFICATION__ACCEPT_UNTRUSTED;
    if (m->max_verify_depth != NULL)
        t->max_verify_depth = m->max_verify_depth->value;
    if (m->require_signed_certificate_timestamp != NULL && m->require_signed_certificate_timestamp->value)
        return lg_error(err, "require_signed_certificate_timestamp: not supported");
    return 0;
}

/* Notes an SdsSecretConfig with an sds_config; returns non-zero when its secret is not installed yet. */
static int sds_missing(lg_tls_context_t *t, const sds_proto_t *sds, const secret_proto_t *s)
{
    if (sds->sds_config == NULL)
        return 0;
    size_t i = 0;
    while (i != t->n_sds_names && strcmp(t->sds_names[i], sds->name) != 0)
        ++i;
    if (i == t->n_sds_names) {
        t->sds_names = lg_realloc(t->sds_names, (t->n_sds_names + 1) * sizeof(*t->sds_names));
        t->sds_names[t->n_sds_names++] = lg_strdup(sds->name);
    }
    if (s != NULL)
        return 0;
    ++t->_sds_missing;
    return 1;
}

static int compile_validation_secret(lg_tls_context_t *t, const sds_proto_t *sds, lg_error_t *err)
{
    const secret_proto_t *s =
        find_secret(sds->name, ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_VALIDATION_CONTEXT);
    if (sds_missing(t, sds, s)) {
        t->has_validation = 1;
        return 0;
    }
    if (s == NULL)
        return lg_error(err, "Unknown static certificate validation context: %s", sds->name);
    if (compile_validation(t, s->validation_context, err) != 0)
        return path_prefix(err, "validation_context (secret %s)", sds->name);
    return 0;
}

static int compile_validation_choice(lg_tls_context_t *t, const common_proto_t *m, lg_error_t *err)
{
    switch (m->validation_context_type_case) {
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_VALIDATION_CONTEXT:
        if (compile_validation(t, m->validation_context, err) != 0)
            return path_prefix(err, "validation_context");
        return 0;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_VALIDATION_CONTEXT_SDS_SECRET_CONFIG:
        if (compile_validation_secret(t, m->validation_context_sds_secret_config, err) != 0)
            return path_prefix(err, "validation_context_sds_secret_config");
        return 0;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__COMMON_TLS_CONTEXT__VALIDATION_CONTEXT_TYPE_COMBINED_VALIDATION_CONTEXT: {
        const Envoy__Extensions__TransportSockets__Tls__V3__CommonTlsContext__CombinedCertificateValidationContext *c =
            m->combined_validation_context;
        if (c->default_validation_context == NULL)
            return lg_error(err, "combined_validation_context.default_validation_context: value is required");
        if (c->validation_context_sds_secret_config == NULL)
            return lg_error(err, "combined_validation_context.validation_context_sds_secret_config: value is required");
        if (compile_validation(t, c->default_validation_context, err) != 0)
            return path_prefix(err, "combined_validation_context.default_validation_context");
        if (compile_validation_secret(t, c->validation_context_sds_secret_config, err) != 0)
            return path_prefix(err, "combined_validation_context.validation_context_sds_secret_config");
        return 0;
    }
    case 0:
        return 0;
    default:
        return lg_error(err, "validation_context_certificate_provider: certificate providers are not supported");
    }
}

static int tls_version(int v, int def)
{
    static const int versions[] = {0, TLS1_VERSION, TLS1_1_VERSION, TLS1_2_VERSION, TLS1_3_VERSION};
    return v > 0 && v < 5 ? versions[v] : def;
}

/* Joins config strings with ':', flattening BoringSSL's "[a|b]" groups. */
static char *join_list(char **items, size_t n)
{
    lg_strbuf_t b = {NULL};
    for (size_t i = 0; i != n; ++i) {
        if (i != 0)
            lg_strbuf_puts(&b, ":");
        for (const char *p = items[i]; *p != '\0'; ++p)
            if (*p == '|')
                lg_strbuf_puts(&b, ":");
            else if (*p != '[' && *p != ']')
                lg_strbuf_append(&b, p, 1);
    }
    if (b.base == NULL)
        lg_strbuf_puts(&b, "");
    return b.base;
}

/* Checks cipher names one by one, as Envoy reports the rejected ones. */
static int check_ciphers(char **items, size_t n, lg_error_t *err)
{
    SSL_CTX *tmp = SSL_CTX_new(TLS_method());
    lg_strbuf_t bad = {NULL};
    char *all = join_list(items, n);
    char *save = NULL;
    for (char *tok = strtok_r(all, ":", &save); tok != NULL; tok = strtok_r(NULL, ":", &save)) {
        if (SSL_CTX_set_cipher_list(tmp, tok) != 1 || strncmp(tok, "TLS_", 4) == 0) {
            if (bad.len != 0)
                lg_strbuf_puts(&bad, ",");
            lg_strbuf_puts(&bad, tok);
        }
    }
    free(all);
    SSL_CTX_free(tmp);
    ERR_clear_error();
    if (bad.len == 0)
        return 0;
    all = join_list(items, n);
    lg_error(
        err,
        "cipher_suites: Failed to initialize cipher suites %s. The following ciphers were rejected when tried individually: %s",
        all, bad.base);
    free(all);
    lg_strbuf_free(&bad);
    return -1;
}

static int compile_params(lg_tls_context_t *t, const params_proto_t *m, lg_error_t *err)
{
    int server = t->role == LG_TLS_SERVER;
    t->min_version = tls_version(m != NULL ? (int)m->tls_minimum_protocol_version : 0, TLS1_2_VERSION);
    t->max_version = tls_version(m != NULL ? (int)m->tls_maximum_protocol_version : 0, server ? TLS1_3_VERSION : TLS1_2_VERSION);
    if (t->min_version > t->max_version)
        return lg_error(err, "tls_params: tls_minimum_protocol_version is greater than tls_maximum_protocol_version");
    if (m != NULL && m->n_cipher_suites != 0) {
        if (check_ciphers(m->cipher_suites, m->n_cipher_suites, err) != 0)
            return path_prefix(err, "tls_params");
        t->cipher_list = join_list(m->cipher_suites, m->n_cipher_suites);
    } else {
        t->cipher_list = lg_strdup(default_ciphers);
    }
    t->curves = m != NULL && m->n_ecdh_curves != 0 ? join_list(m->ecdh_curves, m->n_ecdh_curves) : lg_strdup(default_curves);
    if (m != NULL && m->n_signature_algorithms != 0)
        t->sigalgs = join_list(m->signature_algorithms, m->n_signature_algorithms);
    return 0;
}

static int compile_alpn(lg_tls_context_t *t, char **protos, size_t n, lg_error_t *err)
{
    lg_strbuf_t b = {NULL};
    for (size_t i = 0; i != n; ++i) {
        size_t len = strlen(protos[i]);
        if (len == 0 || len > 255) {
            lg_strbuf_free(&b);
            return lg_error(err, "alpn_protocols[%zu]: Invalid ALPN protocol string", i);
        }
        uint8_t l = (uint8_t)len;
        lg_strbuf_append(&b, (const char *)&l, 1);
        lg_strbuf_append(&b, protos[i], len);
    }
    t->alpn = h2o_iovec_init(b.base, b.len);
    return 0;
}

static int compile_common(lg_tls_context_t *t, const common_proto_t *m, lg_error_t *err)
{
    if (m == NULL)
        return 0;
    if (m->tls_certificate_provider_instance != NULL || m->tls_certificate_certificate_provider != NULL ||
        m->tls_certificate_certificate_provider_instance != NULL)
        return lg_error(err, "tls_certificate_provider_instance: certificate providers are not supported");
    if (m->custom_handshaker != NULL)
        return lg_error(err, "custom_handshaker: custom handshakers are not supported");
    if (m->key_log != NULL)
        LG_WARN(config, "common_tls_context.key_log is ignored: TLS key logging is not supported");
    if (compile_params(t, m->tls_params, err) != 0)
        return -1;
    for (size_t i = 0; i != m->n_tls_certificates; ++i)
        if (add_cert(t, m->tls_certificates[i], err) != 0)
            return path_prefix(err, "tls_certificates[%zu]", i);
    for (size_t i = 0; i != m->n_tls_certificate_sds_secret_configs; ++i) {
        const sds_proto_t *sds = m->tls_certificate_sds_secret_configs[i];
        const secret_proto_t *s =
            find_secret(sds->name, ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_TLS_CERTIFICATE);
        if (sds_missing(t, sds, s))
            continue;
        if (s == NULL)
            return lg_error(err, "tls_certificate_sds_secret_configs[%zu]: Unknown static secret: %s", i, sds->name);
        if (add_cert(t, s->tls_certificate, err) != 0)
            return path_prefix(err, "tls_certificate_sds_secret_configs[%zu] (secret %s)", i, sds->name);
    }
    if (compile_alpn(t, m->alpn_protocols, m->n_alpn_protocols, err) != 0)
        return -1;
    return compile_validation_choice(t, m, err);
}

static lg_tls_context_t *context_new(lg_tls_role_t role, const char *stats_prefix)
{
    lg_tls_context_t *t = lg_calloc(1, sizeof(*t));
    t->_refcnt = 1;
    t->role = role;
    pthread_mutex_init(&t->_mutex, NULL);
    t->stats_prefix = lg_malloc(strlen(stats_prefix) + sizeof("ssl."));
    sprintf(t->stats_prefix, "%sssl.", stats_prefix);
    return t;
}

/* What only the combination of fields tells (with SDS: of the secrets too). */
static int check_combination(const lg_tls_context_t *t, lg_error_t *err)
{
    if ((t->n_sans != 0) && t->trusted_ca.kind == LG_TLS_SOURCE_NONE)
        return lg_error(err, "SAN-based verification of peer certificates without trusted CA is insecure and not allowed");
    if (t->crl.kind != LG_TLS_SOURCE_NONE && t->trusted_ca.kind == LG_TLS_SOURCE_NONE)
        return lg_error(err, "Failed to load CRL from %s without trusted CA", source_name(&t->crl));
    return 0;
}

static ProtobufCMessage *message_copy(const ProtobufCMessage *m)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = lg_malloc(len + 1);
    protobuf_c_message_pack(m, buf);
    ProtobufCMessage *copy = protobuf_c_message_unpack(m->descriptor, NULL, len, buf);
    free(buf);
    return copy;
}

/* Checks, then builds the first SSL_CTX. */
static int finish(lg_tls_context_t *t, const common_proto_t *common, lg_error_t *err)
{
    if (t->_sds_missing == 0 && check_combination(t, err) != 0)
        return -1;
    if (t->n_sds_names != 0)
        t->_common = message_copy(&common->base);
    /* the session id context binds resumed sessions to this configuration */
    unsigned int len = 0;
    EVP_Digest(t->stats_prefix, strlen(t->stats_prefix), t->sid_ctx, &len, EVP_sha256(), NULL);
    if ((t->_ssl_ctx = build(t, &t->_watches, &t->_n_watches, &t->_not_ready, err)) == NULL)
        return -1;
    t->stats = lg_stats_block_new(t->stats_prefix, tls_stat_defs, LG_ARRAY_SIZE(tls_stat_defs));
    size_t owner_len = strlen(t->stats_prefix) - strlen("ssl.");
    char *factory = lg_malloc(owner_len + sizeof("server_ssl_socket_factory."));
    sprintf(factory, "%.*s%s_ssl_socket_factory.", (int)owner_len, t->stats_prefix, t->role == LG_TLS_SERVER ? "server" : "client");
    t->factory_stats =
        lg_stats_block_new(factory, t->role == LG_TLS_SERVER ? server_factory_defs : client_factory_defs, FACTORY__COUNT);
    free(factory);
    /* every live context: for reloads, SDS, /certs and days_until_first_cert_expiring */
    pthread_mutex_lock(&registry_mutex);
    t->_next = registry_head;
    if (registry_head != NULL)
        registry_head->_pprev = &t->_next;
    t->_pprev = &registry_head;
    registry_head = t;
    pthread_mutex_unlock(&registry_mutex);
    return 0;
}

lg_tls_context_t *lg_tls_downstream_compile(const Envoy__Extensions__TransportSockets__Tls__V3__DownstreamTlsContext *m,
                                            const char *stats_prefix, lg_error_t *err)
{
    lg_tls_context_t *t = context_new(LG_TLS_SERVER, stats_prefix);
    if (m->common_tls_context == NULL) {
        lg_error(err, "common_tls_context: No TLS certificates found for server context");
        goto fail;
    }
    if (compile_common(t, m->common_tls_context, err) != 0) {
        path_prefix(err, "common_tls_context");
        goto fail;
    }
    if (t->n_certs == 0 && t->_sds_missing == 0) {
        lg_error(err, "No TLS certificates found for server context");
        goto fail;
    }
    t->require_client_cert = LG_WRAPPED(m->require_client_certificate, 0);
    if (m->require_sni != NULL && m->require_sni->value) {
        lg_error(err, "require_sni: not supported");
        goto fail;
    }
    t->disable_session_cache = m->disable_stateful_session_resumption;
    if (m->session_timeout != NULL)
        t->session_timeout_s = (uint32_t)m->session_timeout->seconds;
    switch (m->session_ticket_keys_type_case) {
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__DOWNSTREAM_TLS_CONTEXT__SESSION_TICKET_KEYS_TYPE_DISABLE_STATELESS_SESSION_RESUMPTION:
        t->disable_tickets = m->disable_stateless_session_resumption;
        break;
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__DOWNSTREAM_TLS_CONTEXT__SESSION_TICKET_KEYS_TYPE_SESSION_TICKET_KEYS: {
        const Envoy__Extensions__TransportSockets__Tls__V3__TlsSessionTicketKeys *k = m->session_ticket_keys;
        t->ticket_keys = lg_calloc(k->n_keys + 1, 80);
        for (size_t i = 0; i != k->n_keys; ++i) {
            lg_tls_source_t s = {LG_TLS_SOURCE_NONE};
            if (source_compile(&s, k->keys[i], err) != 0) {
                path_prefix(err, "session_ticket_keys.keys[%zu]", i);
                goto fail;
            }
            h2o_iovec_t v = s.bytes;
            char *file = NULL;
            if (s.kind == LG_TLS_SOURCE_FILE && (file = lg_read_file(s.path, &v.len, err)) == NULL) {
                source_dispose(&s);
                path_prefix(err, "session_ticket_keys.keys[%zu]", i);
                goto fail;
            }
            if (file != NULL)
                v.base = file;
            if (v.len != 80) {
                lg_error(err,
                         "session_ticket_keys.keys[%zu]: Incorrect TLS session ticket key length. Length %zu, expected length 80.",
                         i, v.len);
                free(file);
                source_dispose(&s);
                goto fail;
            }
            memcpy(t->ticket_keys[t->n_ticket_keys++], v.base, 80);
            free(file);
            source_dispose(&s);
        }
        break;
    }
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__DOWNSTREAM_TLS_CONTEXT__SESSION_TICKET_KEYS_TYPE_SESSION_TICKET_KEYS_SDS_SECRET_CONFIG:
        lg_error(err, "session_ticket_keys_sds_secret_config: not supported");
        goto fail;
    default:
        break;
    }
    if (m->ocsp_staple_policy ==
        ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__DOWNSTREAM_TLS_CONTEXT__OCSP_STAPLE_POLICY__MUST_STAPLE) {
        lg_error(err, "ocsp_staple_policy: MUST_STAPLE is not supported");
        goto fail;
    }
    if (finish(t, m->common_tls_context, err) != 0)
        goto fail;
    return t;
fail:
    lg_tls_context_release(t);
    return NULL;
}

/* What lg_tls_context_same compares: the message's encoding (protobuf-c
 * packs fields in number order) and the owner. */
static void hash_upstream_config(lg_tls_context_t *t, const Envoy__Extensions__TransportSockets__Tls__V3__UpstreamTlsContext *m)
{
    size_t len = protobuf_c_message_get_packed_size(&m->base);
    uint8_t *buf = lg_malloc(len + 1);
    protobuf_c_message_pack(&m->base, buf);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    EVP_DigestUpdate(md, buf, len);
    EVP_DigestUpdate(md, t->stats_prefix, strlen(t->stats_prefix) + 1);
    EVP_DigestFinal_ex(md, t->config_hash, NULL);
    EVP_MD_CTX_free(md);
    free(buf);
}

int lg_tls_context_same(const lg_tls_context_t *a, const lg_tls_context_t *b)
{
    return a == b || (a->role == LG_TLS_CLIENT && b->role == LG_TLS_CLIENT && memcmp(a->config_hash, b->config_hash, 32) == 0);
}

lg_tls_context_t *lg_tls_upstream_compile(const Envoy__Extensions__TransportSockets__Tls__V3__UpstreamTlsContext *m,
                                          const char *stats_prefix, lg_error_t *err)
{
    lg_tls_context_t *t = context_new(LG_TLS_CLIENT, stats_prefix);
    if (m->common_tls_context != NULL && compile_common(t, m->common_tls_context, err) != 0) {
        path_prefix(err, "common_tls_context");
        goto fail;
    }
    if (m->common_tls_context == NULL && compile_params(t, NULL, err) != 0)
        goto fail;
    if (t->n_certs > 1) {
        lg_error(err, "common_tls_context: Multiple TLS certificates are not supported for client contexts");
        goto fail;
    }
    if (m->sni != NULL && m->sni[0] != '\0') {
        if (strlen(m->sni) > 255) {
            lg_error(err, "sni: value length must be at most 255 bytes");
            goto fail;
        }
        t->sni = lg_strdup(m->sni);
    }
    t->max_session_keys = LG_WRAPPED(m->max_session_keys, 1);
    hash_upstream_config(t, m);
    if (finish(t, m->common_tls_context, err) != 0)
        goto fail;
    return t;
fail:
    lg_tls_context_release(t);
    return NULL;
}

int lg_tls_transport_socket_compile(const Envoy__Config__Core__V3__TransportSocket *ts, lg_tls_role_t role,
                                    const char *stats_prefix, lg_tls_context_t **out, lg_error_t *err)
{
    *out = NULL;
    if (ts == NULL)
        return 0;
    const char *url = ts->config_type_case == ENVOY__CONFIG__CORE__V3__TRANSPORT_SOCKET__CONFIG_TYPE_TYPED_CONFIG
                          ? ts->typed_config->type_url
                          : "";
    const char *slash = strrchr(url, '/'), *type = slash != NULL ? slash + 1 : url;
    if (strcmp(type, "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer") == 0 ||
        (type[0] == '\0' && (strcmp(ts->name, "envoy.transport_sockets.raw_buffer") == 0 || strcmp(ts->name, "raw_buffer") == 0)))
        return 0;
    const char *want = role == LG_TLS_SERVER ? TLS_TYPE_DOWNSTREAM : TLS_TYPE_UPSTREAM;
    if (type[0] == '\0')
        return lg_error(err, "typed_config: the TLS transport socket needs a typed_config (%s)", want);
    if (strcmp(type, TLS_TYPE_DOWNSTREAM) != 0 && strcmp(type, TLS_TYPE_UPSTREAM) != 0)
        return lg_error(err, "Didn't find a registered implementation for '%s' with type URL: '%s'", ts->name, type);
    if (strcmp(type, want) != 0)
        return lg_error(err, "typed_config: expected a %s, got type URL \"%s\"", want, url);
    ProtobufCMessage *m;
    if (role == LG_TLS_SERVER) {
        if ((m = lg_any_unpack(ts->typed_config, &envoy__extensions__transport_sockets__tls__v3__downstream_tls_context__descriptor,
                               err)) == NULL)
            return path_prefix(err, "typed_config");
        *out = lg_tls_downstream_compile((void *)m, stats_prefix, err);
    } else {
        if ((m = lg_any_unpack(ts->typed_config, &envoy__extensions__transport_sockets__tls__v3__upstream_tls_context__descriptor,
                               err)) == NULL)
            return path_prefix(err, "typed_config");
        *out = lg_tls_upstream_compile((void *)m, stats_prefix, err);
    }
    protobuf_c_message_free_unpacked(m, NULL);
    if (*out == NULL)
        return path_prefix(err, "typed_config");
    return 0;
}

/* ---- client sessions (max_session_keys) ---- */

typedef struct st_lg_tls_session_t {
    char *sni, *verify_name; /* NULL when none */
    SSL_SESSION *session;
} lg_tls_session_t;

static void session_dispose(lg_tls_session_t *e)
{
    free(e->sni);
    free(e->verify_name);
    SSL_SESSION_free(e->session);
}

/* Call with _mutex held, or when no one else can see t. */
static void sessions_clear(lg_tls_context_t *t)
{
    for (size_t i = 0; i != t->_n_sessions; ++i)
        session_dispose(t->_sessions + i);
    t->_n_sessions = 0;
}

static int same_name(const char *a, const char *b)
{
    return (a == NULL || *a == '\0') ? (b == NULL || *b == '\0') : b != NULL && strcmp(a, b) == 0;
}

/* Keeps a new session of ssl (newest first, at most max_session_keys);
 * returns whether it took the reference. Sessions of an SSL_CTX that a
 * reload replaced are dropped. */
static int keep_session(lg_tls_context_t *t, SSL *ssl, SSL_SESSION *session, const char *verify_name)
{
    const char *sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    pthread_mutex_lock(&t->_mutex);
    int kept = SSL_get_SSL_CTX(ssl) == t->_ssl_ctx && t->max_session_keys != 0;
    if (kept) {
        if (t->_n_sessions == t->max_session_keys)
            session_dispose(t->_sessions + --t->_n_sessions);
        t->_sessions = lg_realloc(t->_sessions, (t->_n_sessions + 1) * sizeof(t->_sessions[0]));
        memmove(t->_sessions + 1, t->_sessions, t->_n_sessions * sizeof(t->_sessions[0]));
        t->_sessions[0] =
            (lg_tls_session_t){sni != NULL ? lg_strdup(sni) : NULL, verify_name != NULL ? lg_strdup(verify_name) : NULL, session};
        ++t->_n_sessions;
    }
    pthread_mutex_unlock(&t->_mutex);
    return kept;
}

/* The newest session kept for (sni, verify_name), with a reference, or
 * NULL. A TLS 1.3 session is handed out once (Envoy: single use). */
static SSL_SESSION *take_session(lg_tls_context_t *t, const char *sni, const char *verify_name)
{
    SSL_SESSION *found = NULL;
    pthread_mutex_lock(&t->_mutex);
    for (size_t i = 0; i != t->_n_sessions && found == NULL; ++i) {
        lg_tls_session_t *e = t->_sessions + i;
        if (!same_name(e->sni, sni) || !same_name(e->verify_name, verify_name) || !SSL_SESSION_is_resumable(e->session))
            continue;
        found = e->session;
        if (SSL_SESSION_get_protocol_version(found) >= TLS1_3_VERSION) {
            free(e->sni);
            free(e->verify_name);
            memmove(e, e + 1, (--t->_n_sessions - i) * sizeof(*e));
        } else {
            SSL_SESSION_up_ref(found);
        }
    }
    pthread_mutex_unlock(&t->_mutex);
    return found;
}

lg_tls_context_t *lg_tls_context_addref(lg_tls_context_t *t)
{
    __atomic_add_fetch(&t->_refcnt, 1, __ATOMIC_RELAXED);
    return t;
}

void lg_tls_context_release(lg_tls_context_t *t)
{
    if (t == NULL || __atomic_sub_fetch(&t->_refcnt, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    if (t->_pprev != NULL) {
        pthread_mutex_lock(&registry_mutex);
        *t->_pprev = t->_next;
        if (t->_next != NULL)
            t->_next->_pprev = t->_pprev;
        pthread_mutex_unlock(&registry_mutex);
    }
    for (size_t i = 0; i != t->n_certs; ++i) {
        source_dispose(&t->certs[i].chain);
        source_dispose(&t->certs[i].key);
        source_dispose(&t->certs[i].password);
    }
    free(t->certs);
    source_dispose(&t->trusted_ca);
    source_dispose(&t->crl);
    for (size_t i = 0; i != t->n_sans; ++i)
        lg_string_matcher_dispose(&t->sans[i].match);
    free(t->sans);
    free(t->cert_hashes);
    free(t->spki_hashes);
    free(t->cipher_list);
    free(t->curves);
    free(t->sigalgs);
    free(t->alpn.base);
    free(t->sni);
    free(t->ticket_keys);
    for (size_t i = 0; i != t->n_sds_names; ++i)
        free(t->sds_names[i]);
    free(t->sds_names);
    if (t->_common != NULL)
        protobuf_c_message_free_unpacked(t->_common, NULL);
    if (t->stats != NULL)
        lg_stats_block_release(t->stats);
    if (t->factory_stats != NULL)
        lg_stats_block_release(t->factory_stats);
    for (size_t i = 0; i != LG_TLS_DYN_MAX; ++i)
        if (t->dyn[i] != NULL)
            lg_stats_block_release(t->dyn[i]);
    free(t->stats_prefix);
    if (t->_ssl_ctx != NULL)
        SSL_CTX_free(t->_ssl_ctx);
    watches_free(t->_watches, t->_n_watches);
    sessions_clear(t);
    free(t->_sessions);
    pthread_mutex_destroy(&t->_mutex);
    free(t);
}

/* ---- secrets ---- */

static void secrets_free(lg_tls_secrets_t *s)
{
    for (size_t i = 0; s != NULL && i != s->n; ++i)
        protobuf_c_message_free_unpacked((ProtobufCMessage *)s->secrets[i], NULL);
    if (s != NULL)
        free(s->secrets);
    free(s);
}

/* A deep copy that does not depend on the bootstrap message's lifetime. */
static secret_proto_t *secret_copy(const secret_proto_t *m)
{
    size_t len = protobuf_c_message_get_packed_size(&m->base);
    uint8_t *buf = lg_malloc(len + 1);
    protobuf_c_message_pack(&m->base, buf);
    secret_proto_t *copy = (secret_proto_t *)protobuf_c_message_unpack(m->base.descriptor, NULL, len, buf);
    free(buf);
    if (copy == NULL)
        abort(); /* what protobuf-c just packed always unpacks, unless out of memory */
    return copy;
}

static int secret_check(const secret_proto_t *const *all, size_t i, lg_error_t *err)
{
    const secret_proto_t *s = all[i];
    if (s->name[0] == '\0')
        return lg_error(err, "secrets[%zu].name: static secrets need a name", i);
    for (size_t j = 0; j != i; ++j)
        if (strcmp(all[j]->name, s->name) == 0)
            return lg_error(err, "secrets[%zu]: Duplicate static secret name %s", i, s->name);
    switch (s->type_case) {
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_TLS_CERTIFICATE: {
        lg_tls_cert_source_t c = {{0}};
        int r = compile_cert(&c, s->tls_certificate, err);
        source_dispose(&c.chain);
        source_dispose(&c.key);
        source_dispose(&c.password);
        return r == 0 ? 0 : path_prefix(err, "secrets[%zu].tls_certificate", i);
    }
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_VALIDATION_CONTEXT:
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_SESSION_TICKET_KEYS:
    case ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_GENERIC_SECRET:
        return 0;
    default:
        return lg_error(err, "secrets[%zu]: Secret type not supported: %s", i, s->name);
    }
}

int lg_tls_secrets_install(Envoy__Extensions__TransportSockets__Tls__V3__Secret **secrets, size_t n, lg_error_t *err)
{
    for (size_t i = 0; i != n; ++i)
        if (secret_check((const secret_proto_t *const *)secrets, i, err) != 0)
            return -1;
    lg_tls_secrets_t *s = lg_calloc(1, sizeof(*s));
    s->secrets = lg_calloc(n + 1, sizeof(*s->secrets));
    for (size_t i = 0; i != n; ++i)
        s->secrets[s->n++] = secret_copy(secrets[i]);
    pthread_mutex_lock(&secrets_mutex);
    lg_tls_secrets_t *old = static_secrets;
    static_secrets = s;
    pthread_mutex_unlock(&secrets_mutex);
    secrets_free(old);
    return 0;
}

static SSL_CTX *build_ssl_ctx(lg_tls_context_t *t, lg_tls_context_t *src, lg_tls_watch_t **watches, size_t *n_watches,
                              lg_error_t *err);
static int rebuild(lg_tls_context_t *t);

/* Loads what a certificate or validation secret holds, as a context using it would. */
static int secret_load(const secret_proto_t *s, lg_error_t *err)
{
    int is_cert = s->type_case == ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_TLS_CERTIFICATE;
    if (!is_cert && s->type_case != ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_VALIDATION_CONTEXT)
        return 0;
    lg_tls_context_t *t = context_new(LG_TLS_CLIENT, "");
    lg_tls_watch_t *w = NULL;
    size_t n = 0;
    int rc = compile_params(t, NULL, err);
    if (rc == 0)
        rc = is_cert ? add_cert(t, s->tls_certificate, err) : compile_validation(t, s->validation_context, err);
    if (rc == 0) {
        SSL_CTX *ctx = build_ssl_ctx(t, t, &w, &n, err);
        rc = ctx != NULL ? 0 : -1;
        SSL_CTX_free(ctx);
        watches_free(w, n);
    }
    lg_tls_context_release(t);
    return rc;
}

/* Rebuilds the SSL_CTX of every live SDS context naming the secret. */
static void rebuild_users(const char *name)
{
    pthread_mutex_lock(&registry_mutex);
    for (lg_tls_context_t *t = registry_head; t != NULL; t = t->_next)
        for (size_t i = 0; i != t->n_sds_names; ++i)
            if (strcmp(t->sds_names[i], name) == 0) {
                if (rebuild(t))
                    lg_stats_control_add(t->factory_stats, FACTORY_update_by_sds, 1);
                break;
            }
    pthread_mutex_unlock(&registry_mutex);
}

int lg_tls_secret_upsert(const Envoy__Extensions__TransportSockets__Tls__V3__Secret *secret, lg_error_t *err)
{
    const secret_proto_t *one[] = {secret};
    if (secret_check(one, 0, err) != 0 || secret_load(secret, err) != 0)
        return -1;
    secret_proto_t *copy = secret_copy(secret);
    pthread_mutex_lock(&secrets_mutex);
    if (static_secrets == NULL)
        static_secrets = lg_calloc(1, sizeof(*static_secrets));
    size_t i = 0;
    while (i != static_secrets->n && strcmp(static_secrets->secrets[i]->name, secret->name) != 0)
        ++i;
    secret_proto_t *old = i != static_secrets->n ? static_secrets->secrets[i] : NULL;
    if (old == NULL) {
        static_secrets->secrets = lg_realloc(static_secrets->secrets, (static_secrets->n + 1) * sizeof(*static_secrets->secrets));
        ++static_secrets->n;
    }
    static_secrets->secrets[i] = copy;
    pthread_mutex_unlock(&secrets_mutex);
    if (old != NULL)
        protobuf_c_message_free_unpacked(&old->base, NULL);
    rebuild_users(secret->name);
    return 0;
}

void lg_tls_secrets_clear(void)
{
    pthread_mutex_lock(&secrets_mutex);
    lg_tls_secrets_t *old = static_secrets;
    static_secrets = NULL;
    pthread_mutex_unlock(&secrets_mutex);
    secrets_free(old);
}

/* ---- SSL_CTX ---- */

static int ctx_index = -1, src_index = -1, verify_name_index = -1, info_index = -1;

/* What an SSL_CTX was built with, for /certs and server.days_until_first_cert_expiring
 * (Envoy's getCaCertInformation and getCertChainInformation): in its ex_data. */
typedef struct st_cert_info_t {
    X509 *ca; /* the first trusted CA (Envoy's ca_cert_), or NULL */
    char *ca_path;
    size_t n;
    struct {
        X509 *leaf;
        char *path;
    } chain[8]; /* one per certificate (at most one per key type) */
} cert_info_t;

static void cert_info_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    cert_info_t *info = ptr;
    if (info == NULL)
        return;
    X509_free(info->ca);
    free(info->ca_path);
    for (size_t i = 0; i != info->n; ++i) {
        X509_free(info->chain[i].leaf);
        free(info->chain[i].path);
    }
    free(info);
}
static pthread_once_t ctx_index_once = PTHREAD_ONCE_INIT;
/* what lg_tls_client_handshake gives the handshake it starts on this thread */
typedef struct st_client_start_t {
    h2o_iovec_t alpn;
    const char *sni, *verify_name;
} client_start_t;
static __thread const client_start_t *client_start;

/* An SSL_CTX of an SDS context owns the compile it was built from (the verify callback reads it). */
static void src_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    lg_tls_context_release(ptr);
}

/* An SSL's auto_san_validation name (malloc'ed). */
static void verify_name_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    free(ptr);
}

static void init_ctx_index(void)
{
    ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    src_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, src_free);
    verify_name_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, verify_name_free);
    info_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, cert_info_free);
}

/* The context an SSL belongs to; valid during its handshake (the handshake holds a reference). */
static lg_tls_context_t *context_of(SSL *ssl)
{
    return SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_index);
}

static void block_inc(lg_stats_block_t *b, size_t idx)
{
    size_t row = lg_current_worker != NULL ? lg_current_worker->index : lg_stats_nworkers;
    if (row == lg_stats_nworkers)
        lg_stats_control_add(b, idx, 1);
    else
        LG_STAT_INC(b, row, idx);
}

static void stat_inc(lg_tls_context_t *t, size_t idx)
{
    block_inc(t->stats, idx);
}

/* Envoy's DNS SAN match: a "*." SAN in the certificate covers one label. */
static int dns_match(const lg_string_matcher_t *m, const char *san, size_t len)
{
    if (m->kind == LG_STRING_MATCH_EXACT && len > 2 && san[0] == '*' && san[1] == '.') {
        const char *dot = memchr(m->value.base, '.', m->value.len);
        return dot != NULL && dot != m->value.base && (size_t)(m->value.base + m->value.len - dot) == len - 1 &&
               strncasecmp(dot, san + 1, len - 1) == 0;
    }
    return lg_string_matcher_match(m, san, len);
}

static int san_entry_matches(const lg_tls_san_matcher_t *sm, const GENERAL_NAME *g)
{
    static const int gen_of_type[] = {-1, GEN_EMAIL, GEN_DNS, GEN_URI, GEN_IPADD};
    if (sm->san_type != 0 && gen_of_type[sm->san_type] != g->type)
        return 0;
    char ip[INET6_ADDRSTRLEN];
    switch (g->type) {
    case GEN_DNS:
        return dns_match(&sm->match, (const char *)ASN1_STRING_get0_data(g->d.dNSName), (size_t)ASN1_STRING_length(g->d.dNSName));
    case GEN_URI:
    case GEN_EMAIL: {
        const ASN1_STRING *s = g->type == GEN_URI ? g->d.uniformResourceIdentifier : g->d.rfc822Name;
        return lg_string_matcher_match(&sm->match, (const char *)ASN1_STRING_get0_data(s), (size_t)ASN1_STRING_length(s));
    }
    case GEN_IPADD: {
        int len = ASN1_STRING_length(g->d.iPAddress);
        if ((len != 4 && len != 16) ||
            inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(g->d.iPAddress), ip, sizeof(ip)) == NULL)
            return 0;
        return lg_string_matcher_match(&sm->match, ip, strlen(ip));
    }
    default:
        return 0;
    }
}

static int san_matches(const lg_tls_context_t *t, X509 *cert)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int found = 0;
    for (size_t i = 0; names != NULL && i != t->n_sans && !found; ++i)
        for (int j = 0; j != sk_GENERAL_NAME_num(names) && !found; ++j)
            found = san_entry_matches(t->sans + i, sk_GENERAL_NAME_value(names, j));
    GENERAL_NAMES_free(names);
    return found;
}

/* Envoy's dnsNameMatch: equal (ignoring case), or a "*." SAN covering the
 * first label. */
static int dns_name_match(const char *name, const char *san, size_t san_len)
{
    size_t len = strlen(name);
    if (len == san_len && strncasecmp(name, san, len) == 0)
        return 1;
    if (san_len > 1 && san[0] == '*' && san[1] == '.' && len > san_len - 1) {
        size_t off = len - (san_len - 1);
        return memchr(name, '.', off) == NULL && strncasecmp(name + off, san + 1, san_len - 1) == 0;
    }
    return 0;
}

/* auto_san_validation: a DNS SAN covering `name`, or an IP SAN equal to it. */
static int name_in_sans(X509 *cert, const char *name)
{
    unsigned char ip[16];
    int ip_len = inet_pton(AF_INET, name, ip) == 1 ? 4 : inet_pton(AF_INET6, name, ip) == 1 ? 16 : 0;
    GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int found = 0;
    for (int j = 0; names != NULL && j != sk_GENERAL_NAME_num(names) && !found; ++j) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, j);
        if (g->type == GEN_DNS && ip_len == 0)
            found =
                dns_name_match(name, (const char *)ASN1_STRING_get0_data(g->d.dNSName), (size_t)ASN1_STRING_length(g->d.dNSName));
        else if (g->type == GEN_IPADD && ip_len != 0)
            found = ASN1_STRING_length(g->d.iPAddress) == ip_len && memcmp(ASN1_STRING_get0_data(g->d.iPAddress), ip, ip_len) == 0;
    }
    GENERAL_NAMES_free(names);
    return found;
}

static int hash_listed(uint8_t (*list)[32], size_t n, const uint8_t *h)
{
    for (size_t i = 0; i != n; ++i)
        if (memcmp(list[i], h, 32) == 0)
            return 1;
    return 0;
}

static int hashes_match(const lg_tls_context_t *t, X509 *cert)
{
    uint8_t h[32];
    unsigned int len = 32;
    if (t->n_cert_hashes != 0 && X509_digest(cert, EVP_sha256(), h, &len) == 1 && hash_listed(t->cert_hashes, t->n_cert_hashes, h))
        return 1;
    if (t->n_spki_hashes != 0) {
        unsigned char *der = NULL;
        int dlen = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
        int ok = dlen > 0 && EVP_Digest(der, (size_t)dlen, h, &len, EVP_sha256(), NULL) == 1 &&
                 hash_listed(t->spki_hashes, t->n_spki_hashes, h);
        OPENSSL_free(der);
        if (ok)
            return 1;
    }
    return 0;
}

static int allow_expired_cb(int ok, X509_STORE_CTX *sctx)
{
    int e = X509_STORE_CTX_get_error(sctx);
    return ok || e == X509_V_ERR_CERT_HAS_EXPIRED || e == X509_V_ERR_CERT_NOT_YET_VALID;
}

/* Envoy's DefaultCertValidator: the chain against trusted_ca, then the SAN
 * matchers, then the hash/SPKI pins; each failure counts once and fails the
 * handshake with CERTIFICATE_VERIFY_FAILED. */
static int cert_verify_cb(X509_STORE_CTX *sctx, void *arg)
{
    lg_tls_context_t *t = arg; /* what to verify against (the SDS compile of an SDS context) */
    SSL *ssl = X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx());
    lg_tls_context_t *owner = ssl != NULL ? context_of(ssl) : t;
    X509 *leaf = X509_STORE_CTX_get0_cert(sctx);
    if (t->trusted_ca.kind != LG_TLS_SOURCE_NONE) {
        if (t->allow_expired)
            X509_STORE_CTX_set_verify_cb(sctx, allow_expired_cb);
        if (X509_verify_cert(sctx) <= 0 && !t->accept_untrusted) {
            int e = X509_STORE_CTX_get_error(sctx);
            LG_DEBUG(connection, "verify cert failed: X509_verify_cert: certificate verification error at depth %d: %s",
                     X509_STORE_CTX_get_error_depth(sctx), X509_verify_cert_error_string(e));
            stat_inc(owner, LG_TLS_STAT_fail_verify_error);
            return 0;
        }
    }
    const char *verify_name = ssl != NULL ? SSL_get_ex_data(ssl, verify_name_index) : NULL;
    if (verify_name != NULL ? !name_in_sans(leaf, verify_name) : t->n_sans != 0 && !san_matches(t, leaf)) {
        LG_DEBUG(connection, "verify cert failed: SAN matcher");
        stat_inc(owner, LG_TLS_STAT_fail_verify_san);
        X509_STORE_CTX_set_error(sctx, X509_V_ERR_HOSTNAME_MISMATCH);
        return 0;
    }
    if ((t->n_cert_hashes != 0 || t->n_spki_hashes != 0) && !hashes_match(t, leaf)) {
        LG_DEBUG(connection, "verify cert failed: cert hash and spki");
        stat_inc(owner, LG_TLS_STAT_fail_verify_cert_hash);
        X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION);
        return 0;
    }
    X509_STORE_CTX_set_error(sctx, X509_V_OK);
    return 1;
}

static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in, unsigned int inlen,
                          void *arg)
{
    lg_tls_context_t *t = arg;
    /* server preference, as Envoy */
    for (size_t i = 0; i < t->alpn.len; i += 1 + (uint8_t)t->alpn.base[i]) {
        const unsigned char *p = (const unsigned char *)t->alpn.base + i;
        for (unsigned j = 0; j < inlen; j += 1 + in[j])
            if (in[j] == p[0] && j + 1 + in[j] <= inlen && memcmp(in + j + 1, p + 1, p[0]) == 0) {
                *out = in + j + 1;
                *outlen = in[j];
                return SSL_TLSEXT_ERR_OK;
            }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

/* The first step of a handshake lg_tls_client_handshake starts: the
 * ClientHello is not built yet, so the ALPN offer, the name to verify and the
 * session to resume still apply. */
static void client_info_cb(const SSL *cssl, int where, int ret)
{
    const client_start_t *start = client_start;
    if ((where & SSL_CB_HANDSHAKE_START) == 0 || start == NULL)
        return;
    client_start = NULL; /* once per handshake */
    SSL *ssl = (SSL *)cssl;
    if (start->alpn.len != 0)
        SSL_set_alpn_protos(ssl, (const unsigned char *)start->alpn.base, (unsigned)start->alpn.len);
    if (start->verify_name != NULL)
        SSL_set_ex_data(ssl, verify_name_index, lg_strdup(start->verify_name));
    lg_tls_context_t *t = context_of(ssl);
    SSL_SESSION *session = t != NULL && t->max_session_keys != 0 ? take_session(t, start->sni, start->verify_name) : NULL;
    if (session != NULL) {
        SSL_set_session(ssl, session);
        SSL_SESSION_free(session);
    }
}

static int new_session_cb(SSL *ssl, SSL_SESSION *session)
{
    lg_tls_context_t *t = context_of(ssl);
    return t != NULL && keep_session(t, ssl, session, SSL_get_ex_data(ssl, verify_name_index));
}

static int ticket_key_cb(SSL *ssl, unsigned char name[16], unsigned char *iv, EVP_CIPHER_CTX *cctx, EVP_MAC_CTX *hctx, int enc)
{
    lg_tls_context_t *t = context_of(ssl);
    const uint8_t *key = NULL;
    if (enc) {
        key = t->ticket_keys[0];
        memcpy(name, key, 16);
        if (RAND_bytes(iv, EVP_MAX_IV_LENGTH) != 1)
            return -1;
    } else {
        for (size_t i = 0; i != t->n_ticket_keys && key == NULL; ++i)
            if (memcmp(name, t->ticket_keys[i], 16) == 0)
                key = t->ticket_keys[i];
        if (key == NULL)
            return 0;
    }
    OSSL_PARAM params[] = {OSSL_PARAM_construct_octet_string("key", (void *)(key + 16), 32),
                           OSSL_PARAM_construct_utf8_string("digest", "SHA256", 0), OSSL_PARAM_construct_end()};
    if (EVP_MAC_CTX_set_params(hctx, params) != 1)
        return -1;
    if ((enc ? EVP_EncryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key + 48, iv)
             : EVP_DecryptInit_ex(cctx, EVP_aes_256_cbc(), NULL, key + 48, iv)) != 1)
        return -1;
    /* a ticket under an older key is renewed under the current one */
    return enc || key == t->ticket_keys[0] ? 1 : 2;
}

/* The OpenSSL errors queued by a failed call, for config error messages. */
static const char *crypto_error(char *buf, size_t cap)
{
    unsigned long e = ERR_peek_last_error();
    buf[0] = '\0';
    if (e != 0)
        ERR_error_string_n(e, buf, cap);
    ERR_clear_error();
    return buf;
}

static int password_cb(char *buf, int size, int rwflag, void *u)
{
    const h2o_iovec_t *pw = u;
    if (pw == NULL || pw->len > (size_t)size)
        return -1;
    memcpy(buf, pw->base, pw->len);
    return (int)pw->len;
}

static int load_key(SSL_CTX *ctx, X509 *leaf, const lg_tls_cert_source_t *c, lg_tls_watch_t **w, size_t *n, lg_error_t *err)
{
    char ebuf[256];
    h2o_iovec_t pw = {NULL};
    char *pwfile = NULL;
    if (c->password.kind == LG_TLS_SOURCE_BYTES)
        pw = c->password.bytes;
    else if (c->password.kind == LG_TLS_SOURCE_FILE && (pw.base = pwfile = lg_read_file(c->password.path, &pw.len, err)) == NULL)
        return -1;
    BIO *bio = source_bio(&c->key, w, n, err);
    if (bio == NULL) {
        free(pwfile);
        return -1;
    }
    EVP_PKEY *key = PEM_read_bio_PrivateKey(bio, NULL, password_cb, pw.base != NULL ? &pw : NULL);
    BIO_free(bio);
    free(pwfile);
    /* OpenSSL would file a key of another type under that type's (empty) slot */
    int ok = key != NULL && X509_check_private_key(leaf, key) == 1 && SSL_CTX_use_PrivateKey(ctx, key) == 1;
    EVP_PKEY_free(key);
    if (!ok)
        return lg_error(err, "Failed to load private key from %s, Cause: %s", source_name(&c->key),
                        crypto_error(ebuf, sizeof(ebuf)));
    return 0;
}

/* One certificate and its key; OpenSSL keeps one per key type and picks by
 * the peer's signature algorithms. */
static int load_cert(SSL_CTX *ctx, const lg_tls_cert_source_t *c, int *types, size_t *ntypes, cert_info_t *info, lg_tls_watch_t **w,
                     size_t *n, lg_error_t *err)
{
    char ebuf[256];
    BIO *bio = source_bio(&c->chain, w, n, err);
    if (bio == NULL)
        return -1;
    X509 *leaf = PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL);
    if (leaf == NULL) {
        BIO_free(bio);
        return lg_error(err, "Failed to load certificate chain from %s", source_name(&c->chain));
    }
    int type = EVP_PKEY_get_base_id(X509_get0_pubkey(leaf));
    for (size_t i = 0; i != *ntypes; ++i)
        if (types[i] == type) {
            X509_free(leaf);
            BIO_free(bio);
            return lg_error(err,
                            "Failed to load certificate chain from %s, at most one certificate of a given type may be specified",
                            source_name(&c->chain));
        }
    types[(*ntypes)++] = type;
    int ok = SSL_CTX_use_certificate(ctx, leaf) == 1 && SSL_CTX_clear_chain_certs(ctx) == 1;
    X509 *x;
    while (ok && (x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
        if (SSL_CTX_add0_chain_cert(ctx, x) != 1) {
            X509_free(x);
            ok = 0;
        }
    BIO_free(bio);
    unsigned long e = ERR_peek_last_error();
    if (ok && e != 0 && ERR_GET_REASON(e) != PEM_R_NO_START_LINE)
        ok = 0;
    if (!ok) {
        X509_free(leaf);
        return lg_error(err, "Failed to load certificate chain from %s: %s", source_name(&c->chain),
                        crypto_error(ebuf, sizeof(ebuf)));
    }
    ERR_clear_error();
    int r = load_key(ctx, leaf, c, w, n, err);
    if (r == 0 && info->n != LG_ARRAY_SIZE(info->chain)) {
        info->chain[info->n].leaf = leaf;
        info->chain[info->n++].path = lg_strdup(source_name(&c->chain));
        return 0;
    }
    X509_free(leaf);
    return r;
}

/* notAfter of a certificate in seconds since the epoch (0 when unreadable). */
static int64_t not_after(const X509 *x)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}

/* Adds the certificates (or, with `crls`, the CRLs) of a PEM source to a
 * store; returns how many were added, or -1 with err set. `first_ca` (certificates
 * only, may be NULL) gets a reference to the first one, Envoy's ca_cert_. */
static int add_pem_to_store(X509_STORE *store, const lg_tls_source_t *source, int crls, X509 **first_ca, lg_tls_watch_t **w,
                            size_t *n, lg_error_t *err)
{
    BIO *bio = source_bio(source, w, n, err);
    if (bio == NULL)
        return -1;
    STACK_OF(X509_INFO) *infos = PEM_X509_INFO_read_bio(bio, NULL, NULL, NULL);
    BIO_free(bio);
    int count = 0;
    for (int i = 0; infos != NULL && i != sk_X509_INFO_num(infos); ++i) {
        X509_INFO *info = sk_X509_INFO_value(infos, i);
        if (crls ? info->crl != NULL && X509_STORE_add_crl(store, info->crl) == 1
                 : info->x509 != NULL && X509_STORE_add_cert(store, info->x509) == 1) {
            if (!crls && count == 0 && first_ca != NULL && X509_up_ref(info->x509) == 1)
                *first_ca = info->x509;
            ++count;
        }
    }
    sk_X509_INFO_pop_free(infos, X509_INFO_free);
    ERR_clear_error();
    return count;
}

/* The verification of `src` (t itself, or the SDS compile of t) with t's role and client certificate policy. */
static int load_validation(SSL_CTX *ctx, const lg_tls_context_t *t, lg_tls_context_t *src, cert_info_t *info, lg_tls_watch_t **w,
                           size_t *n, lg_error_t *err)
{
    if (src->trusted_ca.kind != LG_TLS_SOURCE_NONE) {
        X509_STORE *store = SSL_CTX_get_cert_store(ctx);
        int count = add_pem_to_store(store, &src->trusted_ca, 0, &info->ca, w, n, err);
        if (info->ca != NULL)
            info->ca_path = lg_strdup(source_name(&src->trusted_ca));
        if (count < 0)
            return -1;
        if (count == 0)
            return lg_error(err, "Failed to load trusted CA certificates from %s", source_name(&src->trusted_ca));
        if (src->max_verify_depth != 0)
            X509_STORE_set_depth(store, (int)src->max_verify_depth);
    }
    if (src->crl.kind != LG_TLS_SOURCE_NONE) {
        X509_STORE *store = SSL_CTX_get_cert_store(ctx);
        int count = add_pem_to_store(store, &src->crl, 1, NULL, w, n, err);
        if (count < 0)
            return -1;
        if (count == 0)
            return lg_error(err, "Failed to load CRL from %s", source_name(&src->crl));
        X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | (src->only_verify_leaf_crl ? 0 : X509_V_FLAG_CRL_CHECK_ALL));
    }
    int mode = SSL_VERIFY_NONE;
    if (t->role == LG_TLS_CLIENT)
        mode = SSL_VERIFY_PEER;
    else if (src->has_validation || t->require_client_cert)
        mode = SSL_VERIFY_PEER | (t->require_client_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0);
    SSL_CTX_set_verify(ctx, mode, NULL);
    if (mode != SSL_VERIFY_NONE)
        SSL_CTX_set_cert_verify_callback(ctx, cert_verify_cb, src);
    return 0;
}

static int apply_params(SSL_CTX *ctx, const lg_tls_context_t *t, lg_error_t *err)
{
    char ebuf[256];
    SSL_CTX_set_min_proto_version(ctx, t->min_version);
    SSL_CTX_set_max_proto_version(ctx, t->max_version);
    if (t->min_version < TLS1_2_VERSION)
        SSL_CTX_set_security_level(ctx, 0);
    if (SSL_CTX_set_cipher_list(ctx, t->cipher_list) != 1)
        return lg_error(err, "Failed to initialize cipher suites %s: %s", t->cipher_list, crypto_error(ebuf, sizeof(ebuf)));
    SSL_CTX_set_ciphersuites(ctx, tls13_suites);
    if (SSL_CTX_set1_groups_list(ctx, t->curves) != 1)
        return lg_error(err, "Failed to initialize ECDH curves %s", t->curves);
    if (t->sigalgs != NULL && SSL_CTX_set1_sigalgs_list(ctx, t->sigalgs) != 1)
        return lg_error(err, "Failed to initialize TLS signature algorithms %s", t->sigalgs);
    ERR_clear_error();
    return 0;
}

static void apply_server_session(SSL_CTX *ctx, lg_tls_context_t *t)
{
    SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_session_id_context(ctx, t->sid_ctx, sizeof(t->sid_ctx));
    SSL_CTX_set_session_cache_mode(ctx, t->disable_session_cache ? SSL_SESS_CACHE_OFF : SSL_SESS_CACHE_SERVER);
    if (t->session_timeout_s != 0)
        SSL_CTX_set_timeout(ctx, t->session_timeout_s);
    if (t->disable_tickets) {
        /* OpenSSL would still send TLS 1.3 tickets (stateful ones); BoringSSL, and so Envoy, sends none */
        SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_num_tickets(ctx, 0);
    } else if (t->n_ticket_keys != 0)
        SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticket_key_cb);
    if (t->alpn.len != 0)
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select_cb, t);
}

/* The SSL_CTX of t with the certificates and validation of src (t itself, or the SDS compile of t). */
static SSL_CTX *build_ssl_ctx(lg_tls_context_t *t, lg_tls_context_t *src, lg_tls_watch_t **watches, size_t *n_watches,
                              lg_error_t *err)
{
    pthread_once(&ctx_index_once, init_ctx_index);
    SSL_CTX *ctx = SSL_CTX_new(t->role == LG_TLS_SERVER ? TLS_server_method() : TLS_client_method());
    int types[8];
    size_t ntypes = 0;
    *watches = NULL;
    *n_watches = 0;
    SSL_CTX_set_ex_data(ctx, ctx_index, t);
    if (src != t)
        SSL_CTX_set_ex_data(ctx, src_index, lg_tls_context_addref(src));
    if (apply_params(ctx, t, err) != 0)
        goto fail;
    cert_info_t *info = lg_calloc(1, sizeof(*info));
    SSL_CTX_set_ex_data(ctx, info_index, info); /* freed with ctx */
    for (size_t i = 0; i != src->n_certs; ++i)
        if (ntypes == LG_ARRAY_SIZE(types) || load_cert(ctx, src->certs + i, types, &ntypes, info, watches, n_watches, err) != 0)
            goto fail;
    if (load_validation(ctx, t, src, info, watches, n_watches, err) != 0)
        goto fail;
    if (t->role == LG_TLS_SERVER) {
        apply_server_session(ctx, t);
    } else {
        SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
        if (t->max_session_keys != 0) {
            SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
            SSL_CTX_sess_set_new_cb(ctx, new_session_cb);
        } else {
            SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
        }
        SSL_CTX_set_info_callback(ctx, client_info_cb);
    }
    ERR_clear_error();
    return ctx;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    watches_free(*watches, *n_watches);
    *watches = NULL;
    *n_watches = 0;
    return NULL;
}

static int not_ready_verify_cb(X509_STORE_CTX *sctx, void *arg)
{
    (void)arg;
    X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
}

/* An SDS context whose secrets have not all arrived: a server has no
 * certificate and a client accepts no peer, so every handshake fails. */
static SSL_CTX *build_not_ready(lg_tls_context_t *t)
{
    pthread_once(&ctx_index_once, init_ctx_index);
    SSL_CTX *ctx = SSL_CTX_new(t->role == LG_TLS_SERVER ? TLS_server_method() : TLS_client_method());
    SSL_CTX_set_ex_data(ctx, ctx_index, t);
    if (t->role == LG_TLS_CLIENT) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_cert_verify_callback(ctx, not_ready_verify_cb, NULL);
        SSL_CTX_set_info_callback(ctx, client_info_cb);
    }
    ERR_clear_error();
    return ctx;
}

static SSL_CTX *build(lg_tls_context_t *t, lg_tls_watch_t **watches, size_t *n_watches, int *not_ready, lg_error_t *err)
{
    *not_ready = 0;
    if (t->_common == NULL)
        return build_ssl_ctx(t, t, watches, n_watches, err);
    *watches = NULL;
    *n_watches = 0;
    lg_tls_context_t *src = context_new(t->role, t->stats_prefix);
    SSL_CTX *ctx = NULL;
    if (compile_common(src, t->_common, err) != 0) {
        path_prefix(err, "common_tls_context");
    } else if (src->_sds_missing != 0) {
        LG_DEBUG(config, "%s: waiting for %zu SDS secret(s)", t->stats_prefix, src->_sds_missing);
        ctx = build_not_ready(t);
        *not_ready = 1;
    } else if (t->role == LG_TLS_SERVER && src->n_certs == 0) {
        lg_error(err, "No TLS certificates found for server context");
    } else if (t->role == LG_TLS_CLIENT && src->n_certs > 1) {
        lg_error(err, "common_tls_context: Multiple TLS certificates are not supported for client contexts");
    } else if (check_combination(src, err) == 0) {
        ctx = build_ssl_ctx(t, src, watches, n_watches, err);
    }
    lg_tls_context_release(src);
    return ctx;
}

/* ---- runtime access ---- */

SSL_CTX *lg_tls_context_ssl_ctx(lg_tls_context_t *t)
{
    pthread_mutex_lock(&t->_mutex);
    SSL_CTX *ctx = t->_ssl_ctx;
    int not_ready = t->_not_ready;
    SSL_CTX_up_ref(ctx);
    pthread_mutex_unlock(&t->_mutex);
    if (not_ready)
        block_inc(t->factory_stats, FACTORY_not_ready);
    return ctx;
}

const h2o_iovec_t lg_tls_alpn_h2 = {"\x02h2", 3}, lg_tls_alpn_http11 = {"\x08http/1.1", 9},
                  lg_tls_alpn_auto = {"\x02h2\x08http/1.1", 12};

void lg_tls_client_handshake(lg_tls_context_t *t, h2o_socket_t *sock, SSL_CTX *ctx, const char *sni, const char *verify_name,
                             h2o_iovec_t default_alpn, h2o_socket_cb cb)
{
    client_start_t start = {t->alpn.len != 0 ? t->alpn : default_alpn, sni, verify_name};
    /* h2o builds and sends the ClientHello inside this call; the info callback
     * applies `start` to the new SSL. An empty name sends no SNI. */
    client_start = &start;
    h2o_socket_ssl_handshake(sock, ctx, sni != NULL ? sni : "", cb);
    client_start = NULL;
}

/* ---- reload ---- */

static int watch_changed(const lg_tls_watch_t *x)
{
    struct stat st;
    if (stat(x->path, &st) != 0)
        return 0; /* a file being replaced: wait for it to come back */
    int64_t mtime = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
    return !x->exists || st.st_dev != x->dev || st.st_ino != x->ino || st.st_size != x->size || mtime != x->mtime_ns;
}

static int rebuild(lg_tls_context_t *t)
{
    lg_error_t err = {{0}};
    lg_tls_watch_t *watches;
    size_t n;
    int not_ready;
    SSL_CTX *ctx = build(t, &watches, &n, &not_ready, &err);
    if (ctx == NULL) {
        LG_WARN(config, "%s: failed to reload certificates (keeping the current ones): %s", t->stats_prefix, err.msg);
        return 0;
    }
    pthread_mutex_lock(&t->_mutex);
    SSL_CTX *old = t->_ssl_ctx;
    lg_tls_watch_t *old_watches = t->_watches;
    size_t old_n = t->_n_watches;
    t->_ssl_ctx = ctx;
    t->_watches = watches;
    t->_n_watches = n;
    t->_not_ready = not_ready;
    ++t->_generation;
    sessions_clear(t); /* sessions of the old certificates and trust */
    pthread_mutex_unlock(&t->_mutex);
    SSL_CTX_free(old);
    watches_free(old_watches, old_n);
    LG_INFO(config, "%s: certificates reloaded", t->stats_prefix);
    return 1;
}

/* The cert_info_t of t's live SSL_CTX with a reference on the SSL_CTX (NULL: none); registry_mutex held. */
static SSL_CTX *live_info(lg_tls_context_t *t, const cert_info_t **info)
{
    pthread_mutex_lock(&t->_mutex);
    SSL_CTX *ctx = t->_ssl_ctx;
    *info = ctx != NULL && info_index >= 0 ? SSL_CTX_get_ex_data(ctx, info_index) : NULL;
    if (*info != NULL)
        SSL_CTX_up_ref(ctx);
    pthread_mutex_unlock(&t->_mutex);
    return *info != NULL ? ctx : NULL;
}

/* Envoy's Utility::getDaysUntilExpiration: whole days left, 0 once expired. */
static uint64_t days_left(const X509 *x, int64_t now)
{
    int64_t left = not_after(x) - now;
    return left < 0 ? 0 : (uint64_t)left / 86400;
}

uint32_t lg_tls_days_until_first_cert_expiring(void)
{
    uint64_t days = UINT32_MAX;
    int64_t now = (int64_t)time(NULL);
    pthread_mutex_lock(&registry_mutex);
    for (lg_tls_context_t *t = registry_head; t != NULL; t = t->_next) {
        const cert_info_t *info;
        SSL_CTX *ctx = live_info(t, &info);
        if (ctx == NULL)
            continue;
        for (size_t i = 0; i <= info->n; ++i) { /* the chain's leaves, then the first CA */
            X509 *x = i != info->n ? info->chain[i].leaf : info->ca;
            if (x != NULL && days_left(x, now) < days)
                days = days_left(x, now);
        }
        SSL_CTX_free(ctx);
    }
    pthread_mutex_unlock(&registry_mutex);
    return (uint32_t)days;
}

static void json_time(lg_strbuf_t *out, const ASN1_TIME *t)
{
    struct tm tm;
    if (ASN1_TIME_to_tm(t, &tm) != 1)
        memset(&tm, 0, sizeof(tm));
    lg_strbuf_printf(out, "\"%04d-%02d-%02dT%02d:%02d:%02dZ\"", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec);
}

/* Envoy's CertificateDetails (admin/v3/certs.proto) as its admin prints it. */
static void json_cert(lg_strbuf_t *out, const char *path, X509 *x, int64_t now, const char *indent)
{
    lg_strbuf_printf(out, "%s{\n%s \"path\": ", indent, indent);
    lg_strbuf_json_string(out, path, strlen(path));
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
    for (char *p = hex; p != NULL && *p != '\0'; ++p)
        *p = (char)tolower((unsigned char)*p);
    lg_strbuf_printf(out, ",\n%s \"serial_number\": \"%s\",\n%s \"subject_alt_names\": [", indent, hex != NULL ? hex : "", indent);
    OPENSSL_free(hex);
    BN_free(bn);
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    static const struct {
        int type;
        const char *key;
    } kinds[] = {{GEN_DNS, "dns"}, {GEN_URI, "uri"}, {GEN_IPADD, "ip_address"}};
    int any = 0;
    for (size_t k = 0; k != LG_ARRAY_SIZE(kinds); ++k)
        for (int i = 0; names != NULL && i != sk_GENERAL_NAME_num(names); ++i) {
            const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
            if (g->type != kinds[k].type)
                continue;
            char text[INET6_ADDRSTRLEN];
            const char *v;
            size_t len;
            if (g->type == GEN_IPADD) {
                int af = g->d.iPAddress->length == 4 ? AF_INET : g->d.iPAddress->length == 16 ? AF_INET6 : 0;
                if (af == 0 || inet_ntop(af, g->d.iPAddress->data, text, sizeof(text)) == NULL)
                    continue;
                v = text, len = strlen(text);
            } else {
                v = (const char *)ASN1_STRING_get0_data(g->d.ia5), len = (size_t)ASN1_STRING_length(g->d.ia5);
            }
            lg_strbuf_printf(out, "%s\n%s  {\n%s   \"%s\": ", any++ ? "," : "", indent, indent, kinds[k].key);
            lg_strbuf_json_string(out, v, len);
            lg_strbuf_printf(out, "\n%s  }", indent);
        }
    GENERAL_NAMES_free(names);
    if (any)
        lg_strbuf_printf(out, "\n%s ", indent);
    lg_strbuf_printf(out, "],\n%s \"days_until_expiration\": \"%llu\",\n%s \"valid_from\": ", indent,
                     (unsigned long long)days_left(x, now), indent);
    json_time(out, X509_get0_notBefore(x));
    lg_strbuf_printf(out, ",\n%s \"expiration_time\": ", indent);
    json_time(out, X509_get0_notAfter(x));
    lg_strbuf_printf(out, "\n%s}", indent);
}

void lg_tls_certs_json(lg_strbuf_t *out)
{
    int64_t now = (int64_t)time(NULL);
    int first = 1;
    lg_strbuf_puts(out, "{\n \"certificates\": [");
    pthread_mutex_lock(&registry_mutex);
    for (lg_tls_context_t *t = registry_head; t != NULL; t = t->_next) {
        const cert_info_t *info;
        SSL_CTX *ctx = live_info(t, &info);
        lg_strbuf_printf(out, "%s\n  {\n   \"ca_cert\": [", first ? "" : ",");
        first = 0;
        if (ctx != NULL && info->ca != NULL) {
            lg_strbuf_puts(out, "\n");
            json_cert(out, info->ca_path, info->ca, now, "    ");
            lg_strbuf_puts(out, "\n   ");
        }
        lg_strbuf_puts(out, "],\n   \"cert_chain\": [");
        for (size_t i = 0; ctx != NULL && i != info->n; ++i) {
            lg_strbuf_puts(out, i == 0 ? "\n" : ",\n");
            json_cert(out, info->chain[i].path, info->chain[i].leaf, now, "    ");
        }
        lg_strbuf_puts(out, ctx != NULL && info->n != 0 ? "\n   ]\n  }" : "]\n  }");
        if (ctx != NULL)
            SSL_CTX_free(ctx);
    }
    pthread_mutex_unlock(&registry_mutex);
    lg_strbuf_puts(out, first ? "]\n}\n" : "\n ]\n}\n");
}

size_t lg_tls_reload_poll(void)
{
    size_t rebuilt = 0;
    pthread_mutex_lock(&registry_mutex);
    for (lg_tls_context_t *t = registry_head; t != NULL; t = t->_next) {
        int changed = 0;
        /* _watches is replaced only here, on this thread */
        for (size_t i = 0; i != t->_n_watches && !changed; ++i)
            changed = watch_changed(t->_watches + i);
        if (!changed)
            continue;
        if (rebuild(t)) {
            ++rebuilt;
        } else {
            /* remember the broken state so that the next change triggers a retry */
            for (size_t i = 0; i != t->_n_watches; ++i) {
                char *path = t->_watches[i].path;
                lg_tls_watch_t *ws = NULL;
                size_t nw = 0;
                watch_add(&ws, &nw, path);
                free(t->_watches[i].path);
                t->_watches[i] = ws[0];
                free(ws);
            }
        }
    }
    pthread_mutex_unlock(&registry_mutex);
    return rebuilt;
}

/* ---- handshakes ---- */

/* libh2o 2.2.5 has no accessor for a socket's SSL, nor for the TLS bytes it
 * has not written yet: this mirrors its private struct st_h2o_socket_ssl_t
 * (lib/common/socket.c, as Debian builds it: without picotls). */
#if H2O_LIBRARY_VERSION_MAJOR != 0 || H2O_LIBRARY_VERSION_MINOR != 13
#error "struct st_h2o_socket_ssl_mirror_t mirrors libh2o 0.13 (h2o 2.2): check lib/common/socket.c"
#endif
struct st_h2o_socket_ssl_mirror_t {
    SSL_CTX *ssl_ctx;
    SSL *ossl;
    int *did_write_in_read;
    size_t record_overhead;
    struct {
        h2o_socket_cb cb;
        union {
            struct {
                int async_resumption_state;
                SSL_SESSION *async_resumption_session_data;
            } server;
            struct {
                char *server_name;
                h2o_cache_t *session_cache;
                h2o_iovec_t session_cache_key;
                h2o_cache_hashcode_t session_cache_key_hash;
            } client;
        };
    } handshake;
    struct {
        h2o_buffer_t *encrypted;
    } input;
    struct {
        H2O_VECTOR(h2o_iovec_t) bufs;
        h2o_mem_pool_t pool;
    } output;
};

static SSL *ssl_of(h2o_socket_t *sock)
{
    return sock->ssl != NULL ? ((struct st_h2o_socket_ssl_mirror_t *)sock->ssl)->ossl : NULL;
}

/* libh2o 2.2.5 ends a failed handshake without writing what OpenSSL produced
 * last, which is the alert ("handshake failure", "certificate required",
 * "unknown ca"...): a peer saw the connection close without a reason. The
 * bytes are written here, directly (a few bytes: the socket takes them), and
 * dropped from h2o's queue so that nothing sends them twice. */
void lg_tls_send_pending_alert(h2o_socket_t *sock)
{
    struct st_h2o_socket_ssl_mirror_t *ssl = (struct st_h2o_socket_ssl_mirror_t *)sock->ssl;
    if (ssl == NULL || h2o_socket_is_writing(sock))
        return;
    int fd = h2o_socket_get_fd(sock);
    for (size_t i = 0; i != ssl->output.bufs.size; ++i) {
        h2o_iovec_t b = ssl->output.bufs.entries[i];
        for (size_t off = 0; off != b.len;) {
            ssize_t n = send(fd, b.base + off, b.len - off, MSG_NOSIGNAL);
            if (n <= 0 && errno == EINTR)
                continue;
            if (n <= 0)
                goto done;
            off += (size_t)n;
        }
    }
done:
    ssl->output.bufs.size = 0;
}

const char *lg_tls_read(h2o_socket_t *sock, size_t max)
{
    struct st_h2o_socket_ssl_mirror_t *ssl = (struct st_h2o_socket_ssl_mirror_t *)sock->ssl;
    if (ssl->handshake.cb != NULL)
        return NULL; /* h2o reads during its handshake */
    const char *err = lg_sock_recv(h2o_socket_get_fd(sock), &ssl->input.encrypted, max);
    if (err != NULL)
        return err;
    /* libh2o's decode_ssl_input: decrypt all of it (no readiness would come back for
     * bytes left here), a record at a time; a write from inside SSL_read is a
     * renegotiation, which h2o does not support either */
    /* the plaintext is smaller: one reservation, no regrowth; an empty input buffer
     * becomes one of the size the owner reads (a body's: LG_SOCK_READ_MAX), which
     * the small records of a slow client then share */
    size_t room_for = ssl->input.encrypted->size;
    while (ssl->input.encrypted->size != 0 || SSL_pending(ssl->ossl)) {
        h2o_iovec_t buf = lg_sock_room(&sock->input, room_for > max ? room_for : max);
        if (buf.base == NULL)
            return h2o_socket_error_out_of_memory;
        int did_write_in_read = 0;
        ssl->did_write_in_read = &did_write_in_read;
        ERR_clear_error();
        int rlen = SSL_read(ssl->ossl, buf.base, (int)buf.len);
        ssl->did_write_in_read = NULL;
        if (did_write_in_read)
            return "ssl renegotation not supported";
        if (rlen == -1) {
            if (SSL_get_error(ssl->ossl, rlen) != SSL_ERROR_WANT_READ)
                return h2o_socket_error_ssl_decode;
            break;
        }
        if (rlen == 0)
            break;
        sock->input->size += (size_t)rlen;
        room_for = room_for > (size_t)rlen ? room_for - (size_t)rlen : 0;
    }
    return NULL;
}

/* Names of the dynamic counters; the index is the slot in lg_tls_context_t.dyn. */
static const lg_stat_def_t dyn_defs[] = {
    {"TLSv1", LG_STAT_COUNTER},
    {"TLSv1.1", LG_STAT_COUNTER},
    {"TLSv1.2", LG_STAT_COUNTER},
    {"TLSv1.3", LG_STAT_COUNTER},
    {"TLS_AES_128_GCM_SHA256", LG_STAT_COUNTER},
    {"TLS_AES_256_GCM_SHA384", LG_STAT_COUNTER},
    {"TLS_CHACHA20_POLY1305_SHA256", LG_STAT_COUNTER},
    {"ECDHE-ECDSA-AES128-GCM-SHA256", LG_STAT_COUNTER},
    {"ECDHE-ECDSA-AES256-GCM-SHA384", LG_STAT_COUNTER},
    {"ECDHE-ECDSA-CHACHA20-POLY1305", LG_STAT_COUNTER},
    {"ECDHE-RSA-AES128-GCM-SHA256", LG_STAT_COUNTER},
    {"ECDHE-RSA-AES256-GCM-SHA384", LG_STAT_COUNTER},
    {"ECDHE-RSA-CHACHA20-POLY1305", LG_STAT_COUNTER},
    {"ECDHE-ECDSA-AES128-SHA", LG_STAT_COUNTER},
    {"ECDHE-ECDSA-AES256-SHA", LG_STAT_COUNTER},
    {"ECDHE-RSA-AES128-SHA", LG_STAT_COUNTER},
    {"ECDHE-RSA-AES256-SHA", LG_STAT_COUNTER},
    {"AES128-GCM-SHA256", LG_STAT_COUNTER},
    {"AES256-GCM-SHA384", LG_STAT_COUNTER},
    {"AES128-SHA", LG_STAT_COUNTER},
    {"AES256-SHA", LG_STAT_COUNTER},
    {"X25519", LG_STAT_COUNTER},
    {"P-256", LG_STAT_COUNTER},
    {"P-384", LG_STAT_COUNTER},
    {"P-521", LG_STAT_COUNTER},
    {"X448", LG_STAT_COUNTER},
};
enum { DYN_FIRST_VERSION = 0, DYN_FIRST_CIPHER = 4, DYN_FIRST_CURVE = 21, DYN_END = LG_ARRAY_SIZE(dyn_defs) };
_Static_assert(LG_ARRAY_SIZE(dyn_defs) <= LG_TLS_DYN_MAX, "LG_TLS_DYN_MAX too small");

/* Counts <prefix><kind>.<name>; names outside the table are not counted. The
 * block is created on first use (a rare, locked path) and kept by the context. */
static void dyn_inc(lg_tls_context_t *t, const char *kind, size_t from, size_t to, const char *name)
{
    static pthread_mutex_t create_mutex = PTHREAD_MUTEX_INITIALIZER;
    size_t i = from;
    while (i != to && (name == NULL || strcmp(dyn_defs[i].name, name) != 0))
        ++i;
    if (i == to)
        return;
    lg_stats_block_t *b = __atomic_load_n(&t->dyn[i], __ATOMIC_ACQUIRE);
    if (b == NULL) {
        pthread_mutex_lock(&create_mutex);
        if ((b = __atomic_load_n(&t->dyn[i], __ATOMIC_ACQUIRE)) == NULL) {
            char prefix[512];
            snprintf(prefix, sizeof(prefix), "%s%s.", t->stats_prefix, kind);
            b = lg_stats_block_new(prefix, dyn_defs + i, 1);
            __atomic_store_n(&t->dyn[i], b, __ATOMIC_RELEASE);
        }
        pthread_mutex_unlock(&create_mutex);
    }
    size_t row = lg_current_worker != NULL ? lg_current_worker->index : lg_stats_nworkers;
    if (row == lg_stats_nworkers)
        lg_stats_control_add(b, 0, 1);
    else
        LG_STAT_INC(b, row, 0);
}

static const char *curve_name(int nid)
{
    switch (nid) {
    case NID_X25519:
        return "X25519";
    case NID_X9_62_prime256v1:
        return "P-256";
    case NID_secp384r1:
        return "P-384";
    case NID_secp521r1:
        return "P-521";
    case NID_X448:
        return "X448";
    default:
        return NULL;
    }
}

/* BoringSSL's reason codes for the errors Envoy users see most, so that
 * failure reasons read as Envoy's ("268435581:...:CERTIFICATE_VERIFY_FAILED"). */
static const struct {
    const char *name;
    int code;
} boring_reasons[] = {
    {"CERTIFICATE_VERIFY_FAILED", 125},
    {"DECRYPTION_FAILED_OR_BAD_RECORD_MAC", 139},
    {"HTTP_REQUEST", 156},
    {"NO_SHARED_CIPHER", 184},
    {"PEER_DID_NOT_RETURN_A_CERTIFICATE", 192},
    {"UNEXPECTED_MESSAGE", 223},
    {"UNEXPECTED_RECORD", 225},
    {"UNKNOWN_PROTOCOL", 233},
    {"UNSUPPORTED_PROTOCOL", 240},
    {"WRONG_VERSION_NUMBER", 247},
    {"NO_COMMON_SIGNATURE_ALGORITHMS", 253},
    {"NO_SHARED_GROUP", 266},
    {"NO_APPLICATION_PROTOCOL", 307},
};

/* "certificate verify failed" -> "CERTIFICATE_VERIFY_FAILED" */
static void reason_token(unsigned long e, char *out, size_t cap)
{
    const char *r = ERR_reason_error_string(e);
    size_t n = 0;
    for (; r != NULL && *r != '\0' && n + 1 < cap; ++r)
        out[n++] = *r == ' ' ? '_' : (char)toupper((unsigned char)*r);
    out[n] = '\0';
    /* OpenSSL says TLSV13_ALERT_*, BoringSSL TLSV1_ALERT_* */
    if (strncmp(out, "TLSV13_ALERT_", 13) == 0)
        memmove(out + 5, out + 6, strlen(out + 6) + 1);
}

static void format_one(lg_strbuf_t *b, unsigned long e)
{
    char reason[128];
    reason_token(e, reason, sizeof(reason));
    if (ERR_GET_LIB(e) == ERR_LIB_SSL) {
        int code = ERR_GET_REASON(e) >= SSL_AD_REASON_OFFSET ? ERR_GET_REASON(e) : -1;
        for (size_t i = 0; code < 0 && i != LG_ARRAY_SIZE(boring_reasons); ++i)
            if (strcmp(boring_reasons[i].name, reason) == 0)
                code = boring_reasons[i].code;
        if (code >= 0) {
            lg_strbuf_printf(b, "|%lu:SSL routines:OPENSSL_internal:%s", (16UL << 24) | (unsigned long)code, reason);
            return;
        }
    }
    const char *lib = ERR_lib_error_string(e);
    lg_strbuf_printf(b, "|%lu:%s:OPENSSL_internal:%s", e, lib != NULL ? lib : "", reason);
}

size_t lg_tls_format_error_queue(char *buf, size_t cap)
{
    lg_strbuf_t b = {NULL};
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        if (b.len == 0)
            lg_strbuf_puts(&b, "TLS_error:");
        format_one(&b, e);
    }
    if (b.len != 0)
        lg_strbuf_puts(&b, ":TLS_error_end");
    size_t n = b.len < cap ? b.len : cap - 1;
    if (cap != 0) {
        memcpy(buf, b.base != NULL ? b.base : "", n);
        buf[n] = '\0';
    }
    lg_strbuf_free(&b);
    return n;
}

/* Envoy's drainErrorQueue: verification failures and syscall errors are
 * counted where they happen; anything else is a connection_error. */
static void count_failure(lg_tls_context_t *t, char *reason, size_t cap)
{
    int saw_error = 0, counted = 0;
    unsigned long e;
    lg_strbuf_t b = {NULL};
    while ((e = ERR_get_error()) != 0) {
        if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
            stat_inc(t, LG_TLS_STAT_fail_verify_no_cert);
            counted = 1;
        } else if ((ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED) ||
                   ERR_GET_LIB(e) == ERR_LIB_SYS) {
            counted = 1;
        }
        if (!saw_error)
            lg_strbuf_puts(&b, "TLS_error:");
        saw_error = 1;
        format_one(&b, e);
    }
    if (saw_error)
        lg_strbuf_puts(&b, ":TLS_error_end");
    if (saw_error && !counted)
        stat_inc(t, LG_TLS_STAT_connection_error);
    size_t n = b.len < cap ? b.len : cap - 1;
    if (cap != 0) {
        memcpy(reason, b.base != NULL ? b.base : "", n);
        reason[n] = '\0';
    }
    lg_strbuf_free(&b);
}

static void count_success(lg_tls_context_t *t, SSL *ssl)
{
    stat_inc(t, LG_TLS_STAT_handshake);
    if (SSL_session_reused(ssl))
        stat_inc(t, LG_TLS_STAT_session_reused);
    X509 *peer = SSL_get0_peer_certificate(ssl);
    if (peer == NULL)
        stat_inc(t, LG_TLS_STAT_no_certificate);
    dyn_inc(t, "versions", DYN_FIRST_VERSION, DYN_FIRST_CIPHER, SSL_get_version(ssl));
    dyn_inc(t, "ciphers", DYN_FIRST_CIPHER, DYN_FIRST_CURVE, SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)));
    dyn_inc(t, "curves", DYN_FIRST_CURVE, DYN_END, curve_name(SSL_get_negotiated_group(ssl)));
}

int lg_tls_handshake_done(lg_tls_context_t *t, h2o_socket_t *sock, const char *err, char *reason, size_t cap)
{
    if (cap != 0)
        reason[0] = '\0';
    SSL *ssl = ssl_of(sock);
    /* h2o checks the SNI against the server certificate on some client paths;
     * Envoy does not (its validation ran in cert_verify_cb) */
    if (err != NULL && t->role == LG_TLS_CLIENT && ssl != NULL && SSL_is_init_finished(ssl) &&
        (err == h2o_socket_error_ssl_cert_name_mismatch || err == h2o_socket_error_ssl_cert_invalid ||
         err == h2o_socket_error_ssl_no_cert))
        err = NULL;
    if (err != NULL || ssl == NULL) {
        count_failure(t, reason, cap);
        return -1;
    }
    ERR_clear_error();
    count_success(t, ssl);
    return 0;
}

h2o_iovec_t lg_tls_alpn(h2o_socket_t *sock)
{
    if (sock->ssl == NULL)
        return h2o_iovec_init("", 0);
    const unsigned char *p = NULL;
    unsigned len = 0;
    SSL_get0_alpn_selected(ssl_of(sock), &p, &len);
    return p != NULL ? h2o_iovec_init(p, len) : h2o_iovec_init("", 0);
}

const char *lg_tls_server_name(h2o_socket_t *sock)
{
    SSL *ssl = ssl_of(sock);
    return ssl != NULL ? SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) : NULL;
}
