/*
 * SDS through the xDS client's apply path (no transport): a cluster whose
 * UpstreamTlsContext names a secret with an sds_config warms until the
 * secret arrives, a bad secret is NACKed with its name, a rotation swaps the
 * SSL_CTX of the same compiled context, and initial_fetch_timeout activates
 * the cluster with a context that fails every handshake.
 */
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include "test.h"
#include "../../../src/xds/xds_internal.h"
#include "legate/pbjson.h"
#include "legate/server.h"
#include "legate/tls.h"

typedef Envoy__Extensions__TransportSockets__Tls__V3__Secret secret_proto_t;

static lg_options_t opts;

static ProtobufCMessage *decode_yaml(const ProtobufCMessageDescriptor *d, const char *yaml)
{
    lg_error_t err = {{0}};
    lg_node_t *n = lg_yaml_parse(yaml, strlen(yaml), "test", &err);
    ProtobufCMessage *m = n != NULL ? lg_pbjson_decode(d, n, 0, &err) : NULL;
    lg_node_free(n);
    if (m == NULL)
        fprintf(stderr, "decode: %s\n", err.msg);
    return m;
}

static Google__Protobuf__Any *any_of(lg_xds_type_t type, const ProtobufCMessage *m)
{
    Google__Protobuf__Any *a = lg_malloc(sizeof(*a));
    google__protobuf__any__init(a);
    a->type_url = lg_strdup(lg_xds_type_urls[type]);
    a->value.len = protobuf_c_message_get_packed_size(m);
    a->value.data = lg_malloc(a->value.len + 1);
    protobuf_c_message_pack(m, a->value.data);
    return a;
}

/* A STATIC cluster with TLS whose client certificate is the SDS secret `secret`
 * (the subscription, and its initial_fetch_timeout, is per config source). */
static Google__Protobuf__Any *tls_cluster(const char *name, const char *secret, const char *timeout)
{
    char yaml[1024];
    snprintf(yaml, sizeof(yaml),
             "{name: %s, type: STATIC, connect_timeout: 1s,"
             " load_assignment: {cluster_name: %s, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: "
             "127.0.0.1, port_value: 1}}}}]}]},"
             " transport_socket: {name: envoy.transport_sockets.tls, typed_config: {'@type': "
             "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext,"
             " common_tls_context: {tls_certificate_sds_secret_configs: [{name: %s, sds_config: {initial_fetch_timeout: %s,"
             " path_config_source: {path: /nonexistent/sds-%s}}}]}}}}",
             name, name, secret, timeout, timeout);
    ProtobufCMessage *m = decode_yaml(&envoy__config__cluster__v3__cluster__descriptor, yaml);
    Google__Protobuf__Any *a = any_of(LG_XDS_CDS, m);
    protobuf_c_message_free_unpacked(m, NULL);
    return a;
}

/* A self-signed certificate for `cn` and its key, as PEM. */
static void make_pem(const char *cn, char **cert, char **key)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -86400);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, k);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_sign(x, k, EVP_sha256());
    BIO *b = BIO_new(BIO_s_mem());
    char *p;
    PEM_write_bio_X509(b, x);
    long n = BIO_get_mem_data(b, &p);
    *cert = lg_strndup(p, (size_t)n);
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
    n = BIO_get_mem_data(b, &p);
    *key = lg_strndup(p, (size_t)n);
    BIO_free(b);
    X509_free(x);
    EVP_PKEY_free(k);
}

static Google__Protobuf__Any *secret(const char *name, const char *cert, const char *key)
{
    secret_proto_t s = ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__INIT;
    Envoy__Extensions__TransportSockets__Tls__V3__TlsCertificate tc =
        ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__TLS_CERTIFICATE__INIT;
    Envoy__Config__Core__V3__DataSource chain = ENVOY__CONFIG__CORE__V3__DATA_SOURCE__INIT, pk = chain;
    chain.specifier_case = pk.specifier_case = ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING;
    chain.inline_string = (char *)cert;
    pk.inline_string = (char *)key;
    tc.certificate_chain = &chain;
    tc.private_key = &pk;
    s.name = (char *)name;
    s.type_case = ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_TLS_CERTIFICATE;
    s.tls_certificate = &tc;
    return any_of(LG_XDS_SDS, &s.base);
}

static char *sotw(lg__xds_sub_t *sub, const char *version, Google__Protobuf__Any *a)
{
    lg_strbuf_t nack = {NULL};
    lg_strbuf_reserve(&nack, 1);
    lg__xds_sotw_update(sub, version, &a, 1, &nack);
    protobuf_c_message_free_unpacked(&a->base, NULL);
    lg_strbuf_append(&nack, "", 1);
    return nack.base;
}

static const lg_cluster_config_t *find_cluster(const char *name)
{
    lg_snapshot_t *s = lg_server_current_snapshot();
    const lg_cluster_config_t *found = NULL;
    for (size_t i = 0; i != s->n_clusters; ++i)
        if (strcmp(s->clusters[i]->name, name) == 0)
            found = s->clusters[i];
    lg_snapshot_unref(s);
    return found; /* the xDS client keeps it alive */
}

/* The CN of the client certificate new handshakes of `t` use ("" when none). */
static void cert_cn(lg_tls_context_t *t, char *out, size_t cap)
{
    SSL_CTX *ctx = lg_tls_context_ssl_ctx(t);
    X509 *x = SSL_CTX_get0_certificate(ctx);
    out[0] = '\0';
    if (x != NULL)
        X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, out, (int)cap);
    SSL_CTX_free(ctx);
}

static void test_warm_reject_rotate(lg_xds_t *x)
{
    char cn[64], *nack, *crt1, *key1, *crt2, *key2;
    make_pem("one", &crt1, &key1);
    make_pem("two", &crt2, &key2);

    nack = sotw(x->cds, "c1", tls_cluster("tls", "client-cert", "0s"));
    ok_str(nack, "");
    free(nack);
    ok(find_cluster("tls") == NULL, "a cluster warms until its SDS secret arrives");
    lg__xds_dep_t *d = lg__xds_dep_find(x, LG_XDS_SDS, "client-cert");
    ok(d != NULL && d->wanted && d->sub != NULL && d->sub->type == LG_XDS_SDS, "the secret name is subscribed");
    if (d == NULL)
        return;
    const char **names;
    size_t n = lg__xds_sub_names(d->sub, &names);
    ok(n == 1 && strcmp(names[0], "client-cert") == 0, "the SDS request names it");
    free(names);
    ok(d->n_stats == 1 && strcmp(lg_stats_block_prefix(d->stats[0]), "sds.client-cert.") == 0, "stats under sds.<name>.");
    lg_snapshot_t *s = lg_server_current_snapshot();
    ok(s->xds != NULL && s->xds->n_items[LG_XDS_SDS] == 1 && s->xds->items[LG_XDS_SDS][0].active == NULL,
       "the dump lists it as warming");
    lg_snapshot_unref(s);

    nack = sotw(d->sub, "s1", secret("client-cert", "not a certificate", key1));
    ok(strstr(nack, "client-cert: Failed to load certificate chain") == nack, "a bad PEM is NACKed with the secret name: %s", nack);
    free(nack);
    ok(lg_stats_block_value(d->stats[0], LG__XDS_SUB_update_rejected) == 1, "sds.client-cert.update_rejected");
    ok(find_cluster("tls") == NULL, "still warming after a rejected secret");
    nack = sotw(d->sub, "s1", secret("client-cert", crt1, key2));
    ok(strstr(nack, "client-cert: Failed to load private key") == nack, "a key of another certificate is NACKed: %s", nack);
    free(nack);

    nack = sotw(d->sub, "s2", secret("client-cert", crt1, key1));
    ok_str(nack, "");
    free(nack);
    const lg_cluster_config_t *c = find_cluster("tls");
    ok(c != NULL && c->tls != NULL, "the secret warms the cluster");
    if (c == NULL || c->tls == NULL)
        return;
    cert_cn(c->tls, cn, sizeof(cn));
    ok_str(cn, "one");
    ok(lg_stats_block_value(d->stats[0], LG__XDS_SUB_update_success) == 1, "sds.client-cert.update_success");
    s = lg_server_current_snapshot();
    ok(s->xds->n_items[LG_XDS_SDS] == 1 && s->xds->items[LG_XDS_SDS][0].active != NULL &&
           strcmp(s->xds->items[LG_XDS_SDS][0].active->version, "s2") == 0,
       "the dump lists it as active with its version");
    lg_snapshot_unref(s);

    SSL_CTX *before = lg_tls_context_ssl_ctx(c->tls);
    nack = sotw(d->sub, "s3", secret("client-cert", crt2, key2));
    ok_str(nack, "");
    free(nack);
    ok(find_cluster("tls") == c, "a rotation keeps the compiled cluster (its pools and connections)");
    ok(strcmp(lg_stats_block_prefix(c->tls->factory_stats), "cluster.tls.client_ssl_socket_factory.") == 0 &&
           lg_stats_block_value(c->tls->factory_stats, 0) == 2,
       "cluster.tls.client_ssl_socket_factory.ssl_context_update_by_sds counts the arrival and the rotation");
    cert_cn(c->tls, cn, sizeof(cn));
    ok_str(cn, "two");
    X509_NAME_get_text_by_NID(X509_get_subject_name(SSL_CTX_get0_certificate(before)), NID_commonName, cn, sizeof(cn));
    ok_str(cn, "one");
    SSL_CTX_free(before);

    /* the same bytes again: accepted, nothing rebuilt */
    nack = sotw(d->sub, "s4", secret("client-cert", crt2, key2));
    ok_str(nack, "");
    free(nack);
    ok(lg_stats_block_value(d->stats[0], LG__XDS_SUB_update_success) == 3, "three successful updates");
    free(crt1), free(key1), free(crt2), free(key2);
}

static void test_initial_fetch_timeout(lg_xds_t *x)
{
    Google__Protobuf__Any *a[2] = {tls_cluster("tls", "client-cert", "0s"), tls_cluster("late", "never", "1s")};
    lg_strbuf_t nack = {NULL};
    lg_strbuf_reserve(&nack, 1);
    lg__xds_sotw_update(x->cds, "c2", a, 2, &nack);
    ok(nack.len == 0, "both clusters accepted");
    lg_strbuf_free(&nack);
    for (size_t i = 0; i != 2; ++i)
        protobuf_c_message_free_unpacked(&a[i]->base, NULL);
    ok(find_cluster("late") == NULL, "warming on its secret");
    lg__xds_dep_t *d = lg__xds_dep_find(x, LG_XDS_SDS, "never");
    ok(d != NULL, "subscribed");
    if (d == NULL)
        return;
    ok(lg__xds_check_timeouts(x, lg_now_ms() + 2000) != 0, "initial_fetch_timeout passes");
    lg__xds_after_update(x);
    ok(lg_stats_block_value(d->stats[0], LG__XDS_SUB_init_fetch_timeout) == 1, "sds.never.init_fetch_timeout");
    const lg_cluster_config_t *c = find_cluster("late");
    ok(c != NULL && c->tls != NULL, "the cluster is used after the timeout (Envoy: its requests fail)");
    if (c != NULL && c->tls != NULL) {
        SSL_CTX *ctx = lg_tls_context_ssl_ctx(c->tls);
        ok(SSL_CTX_get0_certificate(ctx) == NULL && SSL_CTX_get_verify_mode(ctx) == SSL_VERIFY_PEER,
           "its context has no certificate and fails verification");
        SSL_CTX_free(ctx);
        ok(lg_stats_block_value(c->tls->factory_stats, 1) == 1, "upstream_context_secrets_not_ready counts the attempt");
    }
}

/* A downstream context naming its certificate and, in a combined validation
 * context, its CA over SDS: not ready until both arrived, then built from them. */
static void test_context_with_two_secrets(void)
{
    lg_error_t err = {{0}};
    char *crt, *key, cn[64];
    make_pem("server", &crt, &key);
    ProtobufCMessage *m = decode_yaml(
        &envoy__extensions__transport_sockets__tls__v3__downstream_tls_context__descriptor,
        "{require_client_certificate: true, common_tls_context: {"
        " tls_certificate_sds_secret_configs: [{name: srv, sds_config: {ads: {}}}],"
        " combined_validation_context: {default_validation_context: {match_typed_subject_alt_names: [{san_type: DNS, matcher: "
        "{exact: client.example}}]}, validation_context_sds_secret_config: {name: ca, sds_config: {ads: {}}}}}}");
    lg_tls_context_t *t = lg_tls_downstream_compile((void *)m, "listener.test.", &err);
    protobuf_c_message_free_unpacked(m, NULL);
    ok(t != NULL && t->n_sds_names == 2, "compiled while both secrets are missing: %s", err.msg);
    if (t == NULL)
        return;
    cert_cn(t, cn, sizeof(cn));
    ok_str(cn, "");

    Google__Protobuf__Any *a = secret("srv", crt, key);
    secret_proto_t *s = (void *)protobuf_c_message_unpack(&envoy__extensions__transport_sockets__tls__v3__secret__descriptor, NULL,
                                                          a->value.len, a->value.data);
    ok(lg_tls_secret_upsert(s, &err) == 0, "certificate secret: %s", err.msg);
    protobuf_c_message_free_unpacked(&s->base, NULL);
    protobuf_c_message_free_unpacked(&a->base, NULL);
    cert_cn(t, cn, sizeof(cn));
    ok_str(cn, ""); /* the CA is still missing: the context is not ready */

    secret_proto_t ca = ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__INIT;
    Envoy__Extensions__TransportSockets__Tls__V3__CertificateValidationContext cvc =
        ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__CERTIFICATE_VALIDATION_CONTEXT__INIT;
    Envoy__Config__Core__V3__DataSource ds = ENVOY__CONFIG__CORE__V3__DATA_SOURCE__INIT;
    ds.specifier_case = ENVOY__CONFIG__CORE__V3__DATA_SOURCE__SPECIFIER_INLINE_STRING;
    ds.inline_string = "garbage";
    cvc.trusted_ca = &ds;
    ca.name = "ca";
    ca.type_case = ENVOY__EXTENSIONS__TRANSPORT_SOCKETS__TLS__V3__SECRET__TYPE_VALIDATION_CONTEXT;
    ca.validation_context = &cvc;
    ok(lg_tls_secret_upsert(&ca, &err) != 0 && strstr(err.msg, "Failed to load trusted CA certificates") != NULL,
       "a CA bundle without certificates is refused: %s", err.msg);
    ds.inline_string = crt;
    ok(lg_tls_secret_upsert(&ca, &err) == 0, "CA secret: %s", err.msg);
    cert_cn(t, cn, sizeof(cn));
    ok_str(cn, "server");
    SSL_CTX *ctx = lg_tls_context_ssl_ctx(t);
    ok(SSL_CTX_get_verify_mode(ctx) == (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT), "client certificates required");
    STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(SSL_CTX_get_cert_store(ctx));
    ok(sk_X509_OBJECT_num(objs) == 1, "the CA of the secret is trusted");
    SSL_CTX_free(ctx);
    lg_tls_context_release(t);
    free(crt);
    free(key);
}

int main(void)
{
    lg_error_t err = {{0}};
    lg_stats_init(1);
    const char *boot = "{node: {id: n1}, dynamic_resources: {cds_config: {path_config_source: {path: /nonexistent/cds.yaml}}}}";
    ProtobufCMessage *b = decode_yaml(&envoy__config__bootstrap__v3__bootstrap__descriptor, boot);
    lg_snapshot_t *snap = lg_snapshot_compile_bootstrap(b, &opts, &err);
    size_t failed;
    ok(snap != NULL && lg_server_publish(snap, &failed, &err) == 0, "static snapshot published: %s", err.msg);
    lg_xds_t *x = lg_xds_new((void *)b, &opts, snap, &err);
    lg_snapshot_unref(snap);
    ok(x != NULL && x->cds != NULL, "xDS client created: %s", err.msg);
    lg_xds_start(x);
    test_warm_reject_rotate(x);
    test_initial_fetch_timeout(x);
    test_context_with_two_secrets();
    lg_xds_free(x);
    lg_snapshot_t *last = lg_server_current_snapshot();
    lg_snapshot_unref(last);
    lg_snapshot_unref(last);
    protobuf_c_message_free_unpacked(b, NULL);
    lg_tls_secrets_clear();
    lg_stats_shutdown();
    return done();
}
