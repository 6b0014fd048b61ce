/* Shared between the admin server (admin.c) and its built-in handlers. */
#ifndef LEGATE_ADMIN_INTERNAL_H
#define LEGATE_ADMIN_INTERNAL_H

#include "legate/admin.h"

/* Envoy's help text: "admin commands are:\n" and one line per endpoint, sorted. */
void lg__admin_help(lg_strbuf_t *out);
/* The admin home page (HTML table of the endpoints). */
void lg__admin_home(lg_strbuf_t *out);

void lg__admin_register_basic_handlers(void);
void lg__admin_register_stats_handlers(void);
/* Frees what the basic handlers keep (server info). */
void lg__admin_basic_handlers_dispose(void);

/* Brings the server.* gauges read on demand up to date (lg_stats_server_refresh,
 * days_until_first_cert_expiring). */
void lg__admin_refresh_server_stats(void);

/* Sets a response to a status and a plain-text body. */
void lg__admin_respond_text(lg_admin_response_t *res, int status, const char *body);

#endif
