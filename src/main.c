/*
 * legate: an Envoy-compatible data plane. Envoy's command line; see
 * src/core/server.c for what happens next.
 */
#include "legate/options.h"
#include "legate/server.h"

int main(int argc, char **argv)
{
    lg_options_t opts;
    lg_error_t err = {{0}};
    switch (lg_options_parse(&opts, argc, argv, &err)) {
    case 1:
        return 0;
    case 0:
        break;
    default:
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    return lg_server_run(&opts);
}
