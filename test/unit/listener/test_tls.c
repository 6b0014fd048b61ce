/* TLS contexts: compile errors with their field paths, certificates and keys
 * from files and inline, handshakes between compiled server and client
 * contexts over memory BIOs (ALPN, mTLS, SAN/hash/SPKI checks and their
 * stats), Envoy's failure reason text, certificate reload, static secrets,
 * and the tls_inspector ClientHello parser. Certificates are made here. */
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "test.h"
#include "legate/pbjson.h"
#include "legate/stats.h"
#include "legate/tls.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb-c.h"

static char dir[64];

/* ---- certificates ---- */

typedef struct st_pair_t {
    EVP_PKEY *key;
    X509 *cert;
} pair_t;

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
}

/* A certificate for `cn` with `san` (NULL = none), signed by `ca` (NULL = self-signed CA). */
static pair_t make_cert(int ec, const char *cn, const char *san, const pair_t *ca, long from_days, long to_days)
{
    static long serial = 1;
    pair_t p;
    p.key = ec ? EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256") : EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    p.cert = X509_new();
    X509_set_version(p.cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(p.cert), serial++);
    X509_gmtime_adj(X509_getm_notBefore(p.cert), from_days * 86400);
    X509_gmtime_adj(X509_getm_notAfter(p.cert), to_days * 86400);
    X509_set_pubkey(p.cert, p.key);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(p.cert), "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(p.cert, X509_get_subject_name(ca != NULL ? ca->cert : p.cert));
    X509 *issuer = ca != NULL ? ca->cert : p.cert;
    add_ext(p.cert, issuer, NID_basic_constraints, ca == NULL ? "critical,CA:TRUE" : "CA:FALSE");
    if (san != NULL)
        add_ext(p.cert, issuer, NID_subject_alt_name, san);
    X509_sign(p.cert, ca != NULL ? ca->key : p.key, EVP_sha256());
    return p;
}

static void pair_free(pair_t *p)
{
    EVP_PKEY_free(p->key);
    X509_free(p->cert);
}

/* Writes <dir>/<name>.pem and <dir>/<name>.key. */
static void write_pair(const pair_t *p, const char *name)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s.pem", dir, name);
    FILE *f = fopen(path, "w");
    PEM_write_X509(f, p->cert);
    fclose(f);
    snprintf(path, sizeof(path), "%s/%s.key", dir, name);
    f = fopen(path, "w");
    PEM_write_PrivateKey(f, p->key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
}

/* ---- compiling from YAML ---- */

static char *expand(const char *yaml)
{
    /* @D stands for the certificate directory */
    lg_strbuf_t b = {NULL};
    for (const char *p = yaml; *p; ++p)
        if (p[0] == '@' && p[1] == 'D') {
            lg_strbuf_puts(&b, dir);
            ++p;
        } else {
            lg_strbuf_append(&b, p, 1);
        }
    return b.base;
}

static lg_tls_context_t *compile_ts(const char *yaml, lg_tls_role_t role, lg_error_t *err)
{
    char *text = expand(yaml);
    lg_node_t *node = lg_yaml_parse(text, strlen(text), "test", err);
    free(text);
    ok(node != NULL, "yaml: %s", err->msg);
    ProtobufCMessage *m = lg_pbjson_decode(&envoy__config__core__v3__transport_socket__descriptor, node, 0, err);
    lg_node_free(node);
    ok(m != NULL, "decode: %s", err->msg);
    if (m == NULL)
        return NULL;
    lg_tls_context_t *t = NULL;
    int r = lg_tls_transport_socket_compile((void *)m, role, "listener.test.", &t, err);
    protobuf_c_message_free_unpacked(m, NULL);
    ok((r == 0) == (t != NULL) || (r == 0 && t == NULL), "return value and context agree");
    return t;
}

#define DOWNSTREAM                                                  \
    "name: envoy.transport_sockets.tls\ntyped_config:\n  '@type': " \
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n"
#define UPSTREAM                                                    \
    "name: envoy.transport_sockets.tls\ntyped_config:\n  '@type': " \
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n"
#define CERT_ITEM(name) "    - {certificate_chain: {filename: '@D/" name ".pem'}, private_key: {filename: '@D/" name ".key'}}\n"
#define SERVER_CERT "  common_tls_context:\n    tls_certificates:\n" CERT_ITEM("server")

static void expect_error(const char *yaml, lg_tls_role_t role, const char *want)
{
    lg_error_t err = {{0}};
    lg_tls_context_t *t = compile_ts(yaml, role, &err);
    ok(t == NULL, "expected an error (%s) for:\n%s", want, yaml);
    lg_tls_context_release(t);
    ok_str(err.msg, want);
}

static void expect_error_contains(const char *yaml, lg_tls_role_t role, const char *want)
{
    lg_error_t err = {{0}};
    lg_tls_context_t *t = compile_ts(yaml, role, &err);
    ok(t == NULL, "expected an error for:\n%s", yaml);
    lg_tls_context_release(t);
    ok(strstr(err.msg, want) != NULL, "error \"%s\" should contain \"%s\"", err.msg, want);
}

static void test_compile_errors(void)
{
    expect_error(DOWNSTREAM "  common_tls_context: {}\n", LG_TLS_SERVER,
                 "typed_config: No TLS certificates found for server context");
    expect_error(UPSTREAM SERVER_CERT, LG_TLS_SERVER,
                 "typed_config: expected a envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext, got type URL "
                 "\"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\"");
    expect_error(DOWNSTREAM SERVER_CERT "    tls_params: {cipher_suites: [ECDHE-RSA-AES128-GCM-SHA256, BOGUS-CIPHER]}\n",
                 LG_TLS_SERVER,
                 "typed_config.common_tls_context.tls_params.cipher_suites: Failed to initialize cipher suites "
                 "ECDHE-RSA-AES128-GCM-SHA256:BOGUS-CIPHER. The following ciphers were rejected when tried individually: "
                 "BOGUS-CIPHER");
    expect_error(DOWNSTREAM SERVER_CERT
                 "    tls_params: {tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_2}\n",
                 LG_TLS_SERVER,
                 "typed_config.common_tls_context.tls_params: tls_minimum_protocol_version is greater than "
                 "tls_maximum_protocol_version");
    expect_error(DOWNSTREAM SERVER_CERT "    tls_params: {ecdh_curves: [P-999]}\n", LG_TLS_SERVER,
                 "typed_config: Failed to initialize ECDH curves P-999");
    expect_error(DOWNSTREAM SERVER_CERT "    validation_context: {verify_certificate_hash: [zz]}\n", LG_TLS_SERVER,
                 "typed_config.common_tls_context.validation_context.verify_certificate_hash[0]: Invalid hex-encoded SHA-256 zz");
    expect_error(
        DOWNSTREAM SERVER_CERT "    validation_context: {verify_certificate_spki: [abc]}\n", LG_TLS_SERVER,
        "typed_config.common_tls_context.validation_context.verify_certificate_spki[0]: Invalid base64-encoded SHA-256 abc");
    expect_error(DOWNSTREAM SERVER_CERT
                 "    validation_context: {match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: a.example.com}}]}\n",
                 LG_TLS_SERVER,
                 "typed_config: SAN-based verification of peer certificates without trusted CA is insecure and not allowed");
    expect_error(DOWNSTREAM SERVER_CERT "    validation_context: {match_typed_subject_alt_names: [{matcher: {exact: x}}]}\n",
                 LG_TLS_SERVER,
                 "typed_config.common_tls_context.validation_context.match_typed_subject_alt_names[0].san_type: value must not be "
                 "in list [SAN_TYPE_UNSPECIFIED]");
    expect_error(DOWNSTREAM "  common_tls_context:\n    tls_certificate_sds_secret_configs: [{name: nope}]\n", LG_TLS_SERVER,
                 "typed_config.common_tls_context.tls_certificate_sds_secret_configs[0]: Unknown static secret: nope");
    expect_error(DOWNSTREAM SERVER_CERT "    validation_context_sds_secret_config: {name: nope}\n", LG_TLS_SERVER,
                 "typed_config.common_tls_context.validation_context_sds_secret_config: Unknown static certificate validation "
                 "context: nope");
    expect_error(DOWNSTREAM SERVER_CERT "    alpn_protocols: ['']\n", LG_TLS_SERVER,
                 "typed_config.common_tls_context.alpn_protocols[0]: Invalid ALPN protocol string");
    expect_error(DOWNSTREAM "  common_tls_context:\n    tls_certificates: [{certificate_chain: {filename: '@D/server.pem'}}]\n",
                 LG_TLS_SERVER,
                 "typed_config.common_tls_context.tls_certificates[0].private_key: a TlsCertificate needs a private key");
    expect_error(DOWNSTREAM "  common_tls_context:\n    tls_certificates:\n"
                            "    - {certificate_chain: {environment_variable: LG_TEST_NO_SUCH_VAR}, private_key: {filename: x}}\n",
                 LG_TLS_SERVER,
                 "typed_config.common_tls_context.tls_certificates[0].certificate_chain.environment_variable: Environment "
                 "variable doesn't exist: LG_TEST_NO_SUCH_VAR");
    expect_error(
        DOWNSTREAM SERVER_CERT "  session_ticket_keys: {keys: [{inline_string: short}]}\n", LG_TLS_SERVER,
        "typed_config.session_ticket_keys.keys[0]: Incorrect TLS session ticket key length. Length 5, expected length 80.");
    expect_error_contains(DOWNSTREAM SERVER_CERT CERT_ITEM("server2"), LG_TLS_SERVER,
                          "server2.pem, at most one certificate of a given type may be specified");
    expect_error_contains(DOWNSTREAM
                          "  common_tls_context:\n    tls_certificates:\n"
                          "    - {certificate_chain: {filename: '@D/missing.pem'}, private_key: {filename: '@D/server.key'}}\n",
                          LG_TLS_SERVER, "missing.pem");
    expect_error_contains(DOWNSTREAM
                          "  common_tls_context:\n    tls_certificates:\n"
                          "    - {certificate_chain: {filename: '@D/server.pem'}, private_key: {filename: '@D/server-ec.key'}}\n",
                          LG_TLS_SERVER, "Failed to load private key from ");
    expect_error_contains(DOWNSTREAM
                          "  common_tls_context:\n    tls_certificates:\n"
                          "    - {certificate_chain: {inline_string: 'not a pem'}, private_key: {filename: '@D/server.key'}}\n",
                          LG_TLS_SERVER, "Failed to load certificate chain from <inline>");
    expect_error_contains(DOWNSTREAM SERVER_CERT "    validation_context: {trusted_ca: {inline_string: 'nothing'}}\n",
                          LG_TLS_SERVER, "Failed to load trusted CA certificates from <inline>");
    expect_error(UPSTREAM "  sni: ''\n  common_tls_context: {tls_params: {cipher_suites: [TLS_AES_128_GCM_SHA256]}}\n",
                 LG_TLS_CLIENT,
                 "typed_config.common_tls_context.tls_params.cipher_suites: Failed to initialize cipher suites "
                 "TLS_AES_128_GCM_SHA256. The following ciphers were rejected when tried individually: TLS_AES_128_GCM_SHA256");
}

static void test_compile_ok(void)
{
    lg_error_t err = {{0}};
    lg_tls_context_t *t = compile_ts("name: envoy.transport_sockets.raw_buffer\n", LG_TLS_SERVER, &err);
    ok(t == NULL && err.msg[0] == '\0', "raw_buffer compiles to no context: %s", err.msg);
    t = compile_ts(DOWNSTREAM SERVER_CERT CERT_ITEM(
                       "server-ec") "    alpn_protocols: [h2, http/1.1]\n"
                                    "    tls_params: {tls_minimum_protocol_version: TLSv1_3, ecdh_curves: [X25519]}\n"
                                    "  require_client_certificate: true\n",
                   LG_TLS_SERVER, &err);
    ok(t != NULL, "server context with RSA and ECDSA certificates: %s", err.msg);
    if (t != NULL) {
        ok(t->n_certs == 2, "two certificates");
        ok(t->alpn.len == 12 && memcmp(t->alpn.base, "\x02h2\x08http/1.1", 12) == 0, "ALPN in wire format");
        ok(t->min_version == TLS1_3_VERSION && t->max_version == TLS1_3_VERSION, "versions");
        ok(t->require_client_cert, "require_client_certificate");
        ok(t->_n_watches == 4, "four files watched, got %zu", t->_n_watches);
        ok_str(lg_stats_block_prefix(t->stats), "listener.test.ssl.");
        lg_tls_context_release(t);
    }
    t = compile_ts(UPSTREAM "  sni: upstream.example.com\n", LG_TLS_CLIENT, &err);
    ok(t != NULL, "an upstream context needs nothing: %s", err.msg);
    if (t != NULL) {
        ok_str(t->sni, "upstream.example.com");
        ok(t->min_version == TLS1_2_VERSION && t->max_version == TLS1_2_VERSION, "Envoy's client defaults: TLS 1.2 only");
        ok(t->_n_watches == 0, "nothing to watch");
        lg_tls_context_release(t);
    }
    /* inline certificates */
    char *pem = lg_read_file(strcat(strcpy((char[256]){0}, dir), "/server.pem"), &(size_t){0}, &err);
    char *key = lg_read_file(strcat(strcpy((char[256]){0}, dir), "/server.key"), &(size_t){0}, &err);
    lg_strbuf_t y = {NULL};
    lg_strbuf_puts(&y, DOWNSTREAM "  common_tls_context:\n    tls_certificates:\n    - certificate_chain: {inline_string: ");
    lg_strbuf_json_string(&y, pem, strlen(pem));
    lg_strbuf_puts(&y, "}\n      private_key: {inline_bytes: ");
    /* inline_bytes is base64 in proto3 JSON */
    unsigned char b64[8192];
    EVP_EncodeBlock(b64, (unsigned char *)key, (int)strlen(key));
    lg_strbuf_puts(&y, (char *)b64);
    lg_strbuf_puts(&y, "}\n");
    t = compile_ts(y.base, LG_TLS_SERVER, &err);
    ok(t != NULL, "inline_string chain and inline_bytes key: %s", err.msg);
    if (t != NULL)
        ok(t->_n_watches == 0, "inline sources are not watched");
    lg_tls_context_release(t);
    lg_strbuf_free(&y);
    free(pem);
    free(key);
}

/* ---- handshakes over memory BIOs ---- */

typedef struct st_hs_t {
    SSL *server, *client;
    int server_rc, client_rc;
} hs_t;

/* Runs both sides until neither makes progress. */
static void handshake(hs_t *h, lg_tls_context_t *server, lg_tls_context_t *client, const char *sni, const char *alpn,
                      size_t alpn_len)
{
    SSL_CTX *sc = lg_tls_context_ssl_ctx(server), *cc = lg_tls_context_ssl_ctx(client);
    BIO *sb, *cb;
    BIO_new_bio_pair(&sb, 0, &cb, 0);
    h->server = SSL_new(sc);
    h->client = SSL_new(cc);
    SSL_CTX_free(sc);
    SSL_CTX_free(cc);
    SSL_set_bio(h->server, sb, sb);
    SSL_set_bio(h->client, cb, cb);
    SSL_set_accept_state(h->server);
    SSL_set_connect_state(h->client);
    if (sni != NULL)
        SSL_set_tlsext_host_name(h->client, sni);
    if (alpn != NULL)
        SSL_set_alpn_protos(h->client, (const unsigned char *)alpn, (unsigned)alpn_len);
    h->server_rc = h->client_rc = -1;
    /* stop at the first failure, so that the error queue holds that side's errors */
    for (int i = 0; i != 20 && !(h->client_rc == 1 && h->server_rc == 1); ++i) {
        if (h->client_rc != 1 && (h->client_rc = SSL_do_handshake(h->client)) <= 0 &&
            SSL_get_error(h->client, h->client_rc) == SSL_ERROR_SSL)
            break;
        if (h->server_rc != 1 && (h->server_rc = SSL_do_handshake(h->server)) <= 0 &&
            SSL_get_error(h->server, h->server_rc) == SSL_ERROR_SSL)
            break;
    }
    /* TLS 1.3: the server sees the client certificate after the client thinks it is done */
    char buf[1];
    if (h->client_rc == 1 && h->server_rc == 1)
        SSL_read(h->client, buf, 0);
}

static void hs_free(hs_t *h)
{
    SSL_free(h->server);
    SSL_free(h->client);
}

static uint64_t stat(lg_tls_context_t *t, size_t idx)
{
    return lg_stats_block_value(t->stats, idx);
}

#define SERVER_MTLS(extra)                                                                               \
    DOWNSTREAM "  require_client_certificate: true\n" SERVER_CERT "    alpn_protocols: [h2, http/1.1]\n" \
               "    validation_context:\n"                                                               \
               "      trusted_ca: {filename: '@D/ca.pem'}\n" extra

#define CLIENT_WITH(cert, extra)                                                                                           \
    UPSTREAM "  common_tls_context:\n"                                                                                     \
             "    tls_certificates: [{certificate_chain: {filename: '@D/" cert ".pem'}, private_key: {filename: '@D/" cert \
             ".key'}}]\n"                                                                                                  \
             "    validation_context:\n"                                                                                   \
             "      trusted_ca: {filename: '@D/ca.pem'}\n" extra

static void test_handshakes(void)
{
    lg_error_t err = {{0}};
    lg_tls_context_t *server = compile_ts(
        SERVER_MTLS("      match_typed_subject_alt_names: [{san_type: URI, matcher: {prefix: 'spiffe://cluster.local/'}}]\n"),
        LG_TLS_SERVER, &err);
    ok(server != NULL, "mTLS server: %s", err.msg);
    lg_tls_context_t *client = compile_ts(
        CLIENT_WITH("client", "      match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: a.example.com}}]\n"),
        LG_TLS_CLIENT, &err);
    ok(client != NULL, "mTLS client: %s", err.msg);
    if (server == NULL || client == NULL)
        return;
    hs_t h;
    handshake(&h, server, client, "a.example.com", "\x08http/1.1\x02h2", 12);
    ok(h.client_rc == 1 && h.server_rc == 1, "mTLS handshake succeeds");
    const unsigned char *sel;
    unsigned sel_len;
    SSL_get0_alpn_selected(h.client, &sel, &sel_len);
    ok(sel_len == 2 && memcmp(sel, "h2", 2) == 0, "the server's ALPN preference wins");
    ok(SSL_get0_peer_certificate(h.server) != NULL, "the server got the client certificate");
    hs_free(&h);
    ok(stat(client, LG_TLS_STAT_fail_verify_san) == 0, "no SAN failure yet");

    /* the server certificate's DNS SANs do not include the wanted name */
    lg_tls_context_t *bad_san = compile_ts(
        CLIENT_WITH("client", "      match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: b.example.com}}]\n"),
        LG_TLS_CLIENT, &err);
    handshake(&h, server, bad_san, NULL, NULL, 0);
    ok(h.client_rc != 1, "SAN mismatch fails the client handshake");
    char reason[512];
    lg_tls_format_error_queue(reason, sizeof(reason));
    ok_str(reason, "TLS_error:|268435581:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED:TLS_error_end");
    ok(stat(bad_san, LG_TLS_STAT_fail_verify_san) == 1, "fail_verify_san counted");
    hs_free(&h);
    lg_tls_context_release(bad_san);

    /* a wildcard SAN in the certificate covers one label */
    lg_tls_context_t *wild = compile_ts(
        CLIENT_WITH("client", "      match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: x.wild.example.com}}]\n"),
        LG_TLS_CLIENT, &err);
    handshake(&h, server, wild, NULL, NULL, 0);
    ok(h.client_rc == 1, "*.wild.example.com matches x.wild.example.com");
    hs_free(&h);
    lg_tls_context_release(wild);
    wild = compile_ts(
        CLIENT_WITH("client", "      match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: y.x.wild.example.com}}]\n"),
        LG_TLS_CLIENT, &err);
    handshake(&h, server, wild, NULL, NULL, 0);
    ok(h.client_rc != 1, "but not two labels");
    ERR_clear_error();
    hs_free(&h);
    lg_tls_context_release(wild);

    /* IP SAN */
    lg_tls_context_t *ip = compile_ts(
        CLIENT_WITH("client", "      match_typed_subject_alt_names: [{san_type: IP_ADDRESS, matcher: {exact: 127.0.0.1}}]\n"),
        LG_TLS_CLIENT, &err);
    handshake(&h, server, ip, NULL, NULL, 0);
    ok(h.client_rc == 1, "IP SAN matches");
    hs_free(&h);
    lg_tls_context_release(ip);

    /* a client certificate from another CA: the server refuses it */
    lg_tls_context_t *untrusted = compile_ts(CLIENT_WITH("untrusted", ""), LG_TLS_CLIENT, &err);
    uint64_t before = stat(server, LG_TLS_STAT_fail_verify_error);
    handshake(&h, server, untrusted, NULL, NULL, 0);
    ok(h.server_rc != 1, "untrusted client certificate refused");
    ok(stat(server, LG_TLS_STAT_fail_verify_error) == before + 1, "fail_verify_error counted");
    ERR_clear_error();
    hs_free(&h);
    lg_tls_context_release(untrusted);

    /* an expired client certificate */
    lg_tls_context_t *expired = compile_ts(CLIENT_WITH("expired", ""), LG_TLS_CLIENT, &err);
    handshake(&h, server, expired, NULL, NULL, 0);
    ok(h.server_rc != 1, "expired client certificate refused");
    ERR_clear_error();
    hs_free(&h);
    lg_tls_context_release(expired);

    /* no client certificate at all */
    lg_tls_context_t *anon = compile_ts(
        UPSTREAM "  common_tls_context: {validation_context: {trusted_ca: {filename: '@D/ca.pem'}}}\n", LG_TLS_CLIENT, &err);
    handshake(&h, server, anon, NULL, NULL, 0);
    ok(h.server_rc != 1, "no client certificate refused");
    lg_tls_format_error_queue(reason, sizeof(reason));
    ok(strstr(reason, "PEER_DID_NOT_RETURN_A_CERTIFICATE") != NULL, "reason: %s", reason);
    hs_free(&h);
    lg_tls_context_release(anon);

    /* pins: hash and SPKI of the server certificate */
    lg_tls_context_t *pinned = compile_ts(
        UPSTREAM "  common_tls_context: {validation_context: {verify_certificate_hash: ['00:11']}}\n", LG_TLS_CLIENT, &err);
    ok(pinned == NULL, "a short hash is an error");
    lg_tls_context_release(pinned);
    lg_tls_context_t *pin = compile_ts(UPSTREAM "  common_tls_context: {validation_context: {verify_certificate_hash: "
                                                "['0000000000000000000000000000000000000000000000000000000000000000']}}\n",
                                       LG_TLS_CLIENT, &err);
    ok(pin != NULL, "hash pin: %s", err.msg);
    /* the server picks its ECDSA or RSA certificate: pin neither, expect failure */
    handshake(&h, server, pin, NULL, NULL, 0);
    ok(h.client_rc != 1, "a wrong hash pin fails");
    ok(stat(pin, LG_TLS_STAT_fail_verify_cert_hash) == 1, "fail_verify_cert_hash counted");
    ERR_clear_error();
    hs_free(&h);
    lg_tls_context_release(pin);

    ok(stat(server, LG_TLS_STAT_handshake) == 0, "handshake counting is lg_tls_handshake_done's (h2o sockets)");
    lg_tls_context_release(server);
    lg_tls_context_release(client);
}

/* ---- reload ---- */

static void test_reload(void)
{
    lg_error_t err = {{0}};
    pair_t ca = make_cert(1, "reload CA", NULL, NULL, -1, 10);
    pair_t a = make_cert(1, "first", "DNS:reload.example.com", &ca, -1, 10);
    write_pair(&a, "reload");
    lg_tls_context_t *t =
        compile_ts(DOWNSTREAM "  common_tls_context:\n    tls_certificates:\n"
                              "    - {certificate_chain: {filename: '@D/reload.pem'}, private_key: {filename: '@D/reload.key'}}\n",
                   LG_TLS_SERVER, &err);
    ok(t != NULL, "compile: %s", err.msg);
    if (t == NULL)
        return;
    ok(lg_tls_reload_poll() == 0, "nothing changed");
    SSL_CTX *before = lg_tls_context_ssl_ctx(t);
    /* a new certificate with another key; mtimes may not move within a second, the inode does */
    pair_t b = make_cert(1, "second", "DNS:reload.example.com", &ca, -1, 10);
    char tmp[256], path[256];
    snprintf(path, sizeof(path), "%s/reload.pem", dir);
    snprintf(tmp, sizeof(tmp), "%s/reload.pem.new", dir);
    unlink(tmp);
    FILE *f = fopen(tmp, "w");
    PEM_write_X509(f, b.cert);
    fclose(f);
    rename(tmp, path);
    ok(lg_tls_reload_poll() == 0, "a certificate that does not match its key keeps the old context");
    ok(t->_generation == 0, "generation unchanged");
    snprintf(path, sizeof(path), "%s/reload.key", dir);
    snprintf(tmp, sizeof(tmp), "%s/reload.key.new", dir);
    f = fopen(tmp, "w");
    PEM_write_PrivateKey(f, b.key, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    rename(tmp, path);
    ok(lg_tls_reload_poll() == 1, "the key arrived: rebuilt");
    ok(t->_generation == 1, "generation 1");
    ok(lg_tls_reload_poll() == 0, "and stable");
    SSL_CTX *after = lg_tls_context_ssl_ctx(t);
    ok(after != before, "new handshakes use a new SSL_CTX");
    X509 *cert = SSL_CTX_get0_certificate(after);
    char cn[64] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
    ok_str(cn, "second");
    cert = SSL_CTX_get0_certificate(before);
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof(cn));
    ok_str(cn, "first");
    SSL_CTX_free(before);
    SSL_CTX_free(after);
    lg_tls_context_release(t);
    pair_free(&a);
    pair_free(&b);
    pair_free(&ca);
}

/* ---- static secrets ---- */

static void test_secrets(void)
{
    lg_error_t err = {{0}};
    char *text =
        expand("secrets:\n"
               "- name: server_cert\n"
               "  tls_certificate: {certificate_chain: {filename: '@D/server.pem'}, private_key: {filename: '@D/server.key'}}\n"
               "- name: ca\n"
               "  validation_context: {trusted_ca: {filename: '@D/ca.pem'}}\n");
    lg_node_t *node = lg_yaml_parse(text, strlen(text), "test", &err);
    free(text);
    Envoy__Config__Bootstrap__V3__Bootstrap__StaticResources *sr =
        (void *)lg_pbjson_decode(&envoy__config__bootstrap__v3__bootstrap__static_resources__descriptor, node, 0, &err);
    lg_node_free(node);
    ok(sr != NULL, "decode: %s", err.msg);
    if (sr == NULL)
        return;
    ok(lg_tls_secrets_install(sr->secrets, sr->n_secrets, &err) == 0, "install: %s", err.msg);
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    lg_tls_context_t *t = compile_ts(DOWNSTREAM "  require_client_certificate: true\n  common_tls_context:\n"
                                                "    tls_certificate_sds_secret_configs: [{name: server_cert}]\n"
                                                "    validation_context_sds_secret_config: {name: ca}\n",
                                     LG_TLS_SERVER, &err);
    ok(t != NULL, "secrets resolve by name: %s", err.msg);
    if (t != NULL)
        ok(t->n_certs == 1 && t->trusted_ca.kind == LG_TLS_SOURCE_FILE, "certificate and CA from the secrets");
    lg_tls_context_release(t);
    expect_error(DOWNSTREAM "  common_tls_context:\n    tls_certificate_sds_secret_configs: [{name: ca}]\n", LG_TLS_SERVER,
                 "typed_config.common_tls_context.tls_certificate_sds_secret_configs[0]: Unknown static secret: ca");
    /* a secret still to come over SDS: compiled, not ready (Envoy warms on it, then resets connections) */
    t = compile_ts(DOWNSTREAM "  common_tls_context:\n    tls_certificate_sds_secret_configs:\n"
                              "    - {name: x, sds_config: {ads: {}}}\n",
                   LG_TLS_SERVER, &err);
    ok(t != NULL && t->n_sds_names == 1 && strcmp(t->sds_names[0], "x") == 0, "an SDS secret not received yet: %s", err.msg);
    if (t != NULL) {
        SSL_CTX *ctx = lg_tls_context_ssl_ctx(t);
        ok(SSL_CTX_get0_certificate(ctx) == NULL, "no certificate until the secret arrives");
        SSL_CTX_free(ctx);
    }
    lg_tls_context_release(t);
    /* an SDS update makes the name resolvable */
    {
        Envoy__Extensions__TransportSockets__Tls__V3__Secret sec = ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__INIT;
        Envoy__Extensions__TransportSockets__Tls__V3__CertificateValidationContext cvc =
            ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__CERTIFICATE_VALIDATION_CONTEXT__INIT;
        sec.name = "pushed";
        sec.type_case = ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_VALIDATION_CONTEXT;
        sec.validation_context = &cvc;
        ok(lg_tls_secret_upsert(&sec, &err) == 0, "upsert: %s", err.msg);
        ok(lg_tls_secret_upsert(&sec, &err) == 0, "upsert again replaces: %s", err.msg);
        lg_tls_context_t *pushed = compile_ts(DOWNSTREAM SERVER_CERT "    validation_context_sds_secret_config:\n"
                                                                     "      {name: pushed, sds_config: {ads: {}}}\n",
                                              LG_TLS_SERVER, &err);
        ok(pushed != NULL && pushed->has_validation, "an SDS-named validation context resolves once pushed: %s", err.msg);
        lg_tls_context_release(pushed);
    }
    /* duplicates */
    text = expand("secrets:\n- {name: a, validation_context: {}}\n- {name: a, validation_context: {}}\n");
    node = lg_yaml_parse(text, strlen(text), "test", &err);
    free(text);
    sr = (void *)lg_pbjson_decode(&envoy__config__bootstrap__v3__bootstrap__static_resources__descriptor, node, 0, &err);
    lg_node_free(node);
    ok(lg_tls_secrets_install(sr->secrets, sr->n_secrets, &err) != 0, "duplicate names are refused");
    ok_str(err.msg, "secrets[1]: Duplicate static secret name a");
    protobuf_c_message_free_unpacked(&sr->base, NULL);
    lg_tls_secrets_clear();
}

/* ---- ClientHello parser ---- */

/* A real ClientHello from OpenSSL's client. */
static size_t client_hello(uint8_t *out, size_t cap, const char *sni, const char *alpn, size_t alpn_len)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = SSL_new(ctx);
    BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl, rb, wb);
    if (sni != NULL)
        SSL_set_tlsext_host_name(ssl, sni);
    if (alpn != NULL)
        SSL_set_alpn_protos(ssl, (const unsigned char *)alpn, (unsigned)alpn_len);
    SSL_connect(ssl);
    size_t n = (size_t)BIO_read(wb, out, (int)cap);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return n;
}

/* Splits the handshake of one record into records of `chunk` bytes. */
static size_t refragment(const uint8_t *in, size_t len, size_t chunk, uint8_t *out)
{
    size_t body = (size_t)in[3] << 8 | in[4], n = 0;
    for (size_t off = 0; off < body; off += chunk) {
        size_t k = body - off < chunk ? body - off : chunk;
        out[n++] = 0x16;
        out[n++] = in[1];
        out[n++] = in[2];
        out[n++] = (uint8_t)(k >> 8);
        out[n++] = (uint8_t)k;
        memcpy(out + n, in + 5 + off, k);
        n += k;
    }
    (void)len;
    return n;
}

static void test_client_hello(void)
{
    uint8_t buf[4096], frag[8192];
    lg_tls_client_hello_t h;
    size_t n = client_hello(buf, sizeof(buf), "API.Example.com", "\x02h2\x08http/1.1", 12);
    ok(n > 100, "a ClientHello of %zu bytes", n);
    ok(lg_tls_client_hello_parse(buf, n, 65536, &h) == LG_TLS_HELLO_FOUND, "parsed");
    ok_str(h.server_name, "api.example.com");
    ok(h.n_alpn == 2, "two ALPN protocols");
    if (h.n_alpn == 2) {
        ok_str(h.alpn[0], "h2");
        ok_str(h.alpn[1], "http/1.1");
    }
    int prefixes_ok = 1;
    for (size_t i = 0; i != n; ++i)
        prefixes_ok &= lg_tls_client_hello_parse(buf, i, 65536, &h) == LG_TLS_HELLO_NEED_MORE;
    ok(prefixes_ok, "every prefix needs more");
    size_t fn = refragment(buf, n, 7, frag);
    ok(lg_tls_client_hello_parse(frag, fn, 65536, &h) == LG_TLS_HELLO_FOUND, "split over 7-byte records");
    ok_str(h.server_name, "api.example.com");
    ok(h.n_alpn == 2, "ALPN across records");
    ok(lg_tls_client_hello_parse(buf, n, 64, &h) == LG_TLS_HELLO_TOO_LARGE, "over the limit");
    n = client_hello(buf, sizeof(buf), NULL, NULL, 0);
    ok(lg_tls_client_hello_parse(buf, n, 65536, &h) == LG_TLS_HELLO_FOUND && h.server_name[0] == '\0' && h.n_alpn == 0,
       "no SNI, no ALPN");
    ok(lg_tls_client_hello_parse((const uint8_t *)"GET / HTTP/1.1\r\n", 16, 65536, &h) == LG_TLS_HELLO_NOT_TLS, "plaintext");
    ok(lg_tls_client_hello_parse((const uint8_t *)"\x16\x03\x01\x00\x00", 5, 65536, &h) == LG_TLS_HELLO_NOT_TLS, "empty record");
    ok(lg_tls_client_hello_parse((const uint8_t *)"\x16\x03\x01\x00\x04\x02\x00\x00\x00", 9, 65536, &h) == LG_TLS_HELLO_NOT_TLS,
       "a ServerHello is not a ClientHello");
    ok(lg_tls_client_hello_parse((const uint8_t *)"\x16\x02", 2, 65536, &h) == LG_TLS_HELLO_NEED_MORE, "short header");
    /* corrupt every byte in turn: never a crash, never a read past the end (ASan) */
    n = client_hello(buf, sizeof(buf), "a.example.com", "\x02h2", 3);
    int sane = 1;
    for (size_t i = 0; i != n; ++i)
        for (int v = 0; v < 256; v += 51) {
            uint8_t *copy = malloc(n);
            memcpy(copy, buf, n);
            copy[i] = (uint8_t)v;
            lg_tls_hello_status_t st = lg_tls_client_hello_parse(copy, n, 65536, &h);
            sane &= st == LG_TLS_HELLO_FOUND || st == LG_TLS_HELLO_NOT_TLS || st == LG_TLS_HELLO_NEED_MORE ||
                    st == LG_TLS_HELLO_TOO_LARGE;
            sane &= strlen(h.server_name) < sizeof(h.server_name) && h.n_alpn <= LG_TLS_HELLO_MAX_ALPN;
            free(copy);
        }
    ok(sane, "corrupted ClientHellos are handled");
}

int main(void)
{
    strcpy(dir, "/tmp/lg-tls-XXXXXX");
    if (mkdtemp(dir) == NULL)
        return 1;
    pair_t ca = make_cert(1, "Test CA", NULL, NULL, -1, 10);
    pair_t other = make_cert(1, "Other CA", NULL, NULL, -1, 10);
    pair_t server = make_cert(0, "server", "DNS:a.example.com,DNS:*.wild.example.com,IP:127.0.0.1", &ca, -1, 10);
    pair_t server2 = make_cert(0, "server2", "DNS:a.example.com", &ca, -1, 10);
    pair_t server_ec = make_cert(1, "server-ec", "DNS:a.example.com,DNS:*.wild.example.com,IP:127.0.0.1", &ca, -1, 10);
    pair_t client = make_cert(1, "client", "URI:spiffe://cluster.local/ns/default/sa/client", &ca, -1, 10);
    pair_t untrusted = make_cert(1, "untrusted", "URI:spiffe://cluster.local/ns/default/sa/client", &other, -1, 10);
    pair_t expired = make_cert(1, "expired", "URI:spiffe://cluster.local/ns/default/sa/client", &ca, -30, -20);
    write_pair(&ca, "ca");
    write_pair(&server, "server");
    write_pair(&server2, "server2");
    write_pair(&server_ec, "server-ec");
    write_pair(&client, "client");
    write_pair(&untrusted, "untrusted");
    write_pair(&expired, "expired");

    test_compile_errors();
    test_compile_ok();
    test_handshakes();
    test_reload();
    test_secrets();
    test_client_hello();

    pair_t all[] = {ca, other, server, server2, server_ec, client, untrusted, expired};
    for (size_t i = 0; i != sizeof(all) / sizeof(all[0]); ++i)
        pair_free(all + i);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return done();
}
