#ifndef LEGATE_TLS_H
#define LEGATE_TLS_H

#include <h2o/socket.h>
#include "legate/common.h"
#include "legate/tls-t.h"
#include "envoy/config/core/v3/base.pb-c.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb-c.h"
#include "envoy/extensions/transport_sockets/tls/v3/secret.pb-c.h"

/* ---- config ---- */

/* Compiles a transport_socket. Returns 0 with *out = NULL for raw_buffer (or
 * no transport socket), 0 with a context for envoy.transport_sockets.tls
 * (DownstreamTlsContext for LG_TLS_SERVER, UpstreamTlsContext for
 * LG_TLS_CLIENT), -1 with err relative to the transport_socket message.
 * stats_prefix is the owner's ("listener.127.0.0.1_443." or "cluster.x."). */
int lg_tls_transport_socket_compile(const Envoy__Config__Core__V3__TransportSocket *ts, lg_tls_role_t role,
                                    const char *stats_prefix, lg_tls_context_t **out, lg_error_t *err);
lg_tls_context_t *lg_tls_downstream_compile(const Envoy__Extensions__TransportSockets__Tls__V3__DownstreamTlsContext *m,
                                            const char *stats_prefix, lg_error_t *err);
lg_tls_context_t *lg_tls_upstream_compile(const Envoy__Extensions__TransportSockets__Tls__V3__UpstreamTlsContext *m,
                                          const char *stats_prefix, lg_error_t *err);
lg_tls_context_t *lg_tls_context_addref(lg_tls_context_t *t);
/* Whether two client contexts were compiled from the same UpstreamTlsContext
 * for the same owner (connections made with one may serve the other). */
int lg_tls_context_same(const lg_tls_context_t *a, const lg_tls_context_t *b);
/* Drops a reference from any thread (NULL is fine). */
void lg_tls_context_release(lg_tls_context_t *t);

/* Static secrets (static_resources.secrets), which sds_config-less
 * SdsSecretConfigs refer to by name, for the life of the process (a new
 * bootstrap replaces them). Checks names and types and copies the messages;
 * -1 with err relative to static_resources. Control thread. */
int lg_tls_secrets_install(Envoy__Extensions__TransportSockets__Tls__V3__Secret **secrets, size_t n, lg_error_t *err);
void lg_tls_secrets_clear(void);
/* Adds or replaces one secret by name (an SDS update): SdsSecretConfigs with
 * an sds_config resolve against the same names. The secret is loaded first
 * (PEM, key matching the certificate, CA bundle): -1 with err when it cannot
 * be used, and nothing changes. Then every live context that names it with
 * an sds_config gets a new SSL_CTX for new handshakes (those under way keep
 * theirs); a context still missing another secret stays not ready.
 * Control thread. */
int lg_tls_secret_upsert(const Envoy__Extensions__TransportSockets__Tls__V3__Secret *secret, lg_error_t *err);

/* ---- runtime ---- */

/* The SSL_CTX for a new handshake, with a reference the caller drops with
 * SSL_CTX_free() once the handshake is over. */
SSL_CTX *lg_tls_context_ssl_ctx(lg_tls_context_t *t);

/* Accounts a finished handshake on `sock` (err from h2o, NULL = success) in
 * the context's stats (row: the current worker) and decides its outcome as
 * Envoy does: returns 0 when the connection may proceed, -1 otherwise with
 * Envoy's transport failure reason in `reason` ("TLS_error:|...:TLS_error_end",
 * possibly empty). On the client side h2o's own host name check is ignored:
 * the context's verification ran inside the handshake. */
int lg_tls_handshake_done(lg_tls_context_t *t, h2o_socket_t *sock, const char *err, char *reason, size_t cap);
/* The ALPN protocol negotiated on sock ("" when none). */
h2o_iovec_t lg_tls_alpn(h2o_socket_t *sock);
/* After a failed handshake, before the socket is closed: writes the alert
 * OpenSSL queued, which libh2o 2.2.5 would drop. */
void lg_tls_send_pending_alert(h2o_socket_t *sock);
/* Bounded reading of a TLS socket (see legate/sock.h): once its handshake is
 * done, reads at most `max` encrypted bytes and decrypts them all into
 * sock->input, as libh2o's decode_ssl_input does. Returns the read's error, or NULL. */
const char *lg_tls_read(h2o_socket_t *sock, size_t max);
/* The SNI the client sent on a server-side TLS socket, or NULL. */
const char *lg_tls_server_name(h2o_socket_t *sock);
/* Wire-format ALPN list for a client handshake when the context has none:
 * "h2", "http/1.1" or both (auto). */
extern const h2o_iovec_t lg_tls_alpn_h2, lg_tls_alpn_http11, lg_tls_alpn_auto;
/* Starts a client handshake with the ALPN offer and SNI set (after
 * h2o_socket_ssl_handshake would be too late: it sends the ClientHello).
 * `sni` may be NULL. `verify_name` (auto_san_validation; may be NULL)
 * replaces the context's SAN matchers: the certificate must have a DNS SAN
 * covering it (wildcards as Envoy) or an IP SAN equal to it. The handshake
 * offers the newest session kept for the same SNI and verify_name
 * (max_session_keys); a TLS 1.3 session is offered once. */
void lg_tls_client_handshake(lg_tls_context_t *t, h2o_socket_t *sock, SSL_CTX *ctx, const char *sni, const char *verify_name,
                             h2o_iovec_t default_alpn, h2o_socket_cb cb);

/* ---- certificate reload ---- */

/* Checks (control thread, about once a second) the files every live context
 * was built from; a context whose files changed gets a new SSL_CTX for new
 * handshakes. A rebuild that fails (a half-written file) keeps the old one
 * and is retried on the next change. Returns the number of contexts rebuilt. */
size_t lg_tls_reload_poll(void);

/* Envoy's server.days_until_first_cert_expiring: whole days until the earliest
 * expiry among the certificates (and each context's first trusted CA) of every
 * live TLS context; 0 once one has expired; UINT32_MAX when there is none. */
uint32_t lg_tls_days_until_first_cert_expiring(void);

/* Envoy's /certs body: for every live TLS context, its first trusted CA and
 * its certificates (path, serial_number, subject_alt_names,
 * days_until_expiration, valid_from, expiration_time), as pretty JSON. */
void lg_tls_certs_json(lg_strbuf_t *out);

/* ---- tls_inspector ---- */

/* Parses a ClientHello from the first bytes of a connection (one or more TLS
 * records). Pure: no allocation, safe on any input. */
lg_tls_hello_status_t lg_tls_client_hello_parse(const uint8_t *buf, size_t len, size_t max_size, lg_tls_client_hello_t *out);

/* Envoy's failure reason text for OpenSSL's error queue (drained). */
size_t lg_tls_format_error_queue(char *buf, size_t cap);

#endif
