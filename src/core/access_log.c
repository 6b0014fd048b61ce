/*
 * Access logs. Not implemented yet: configuring one is an error rather than
 * a silently missing log.
 */
#include "legate/access_log.h"

int lg_access_logs_compile(Envoy__Config__Accesslog__V3__AccessLog *const *m, size_t n, lg_access_logs_t *out, lg_error_t *err)
{
    *out = (lg_access_logs_t){NULL, 0};
    if (n != 0)
        return lg_error(err, "access_log: access logs are not supported yet");
    return 0;
}

void lg_access_logs_dispose(lg_access_logs_t *logs)
{
    free(logs->logs);
    *logs = (lg_access_logs_t){NULL, 0};
}

void lg_access_logs_emit(const lg_access_logs_t *logs, const lg_stream_info_t *info)
{
    (void)logs, (void)info;
}
