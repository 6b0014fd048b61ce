/*
 * The HTTP filters Legate knows, looked up as Envoy does: by the type URL of
 * typed_config first, then by the filter's name.
 */
#include "legate/filters.h"
#include "legate/pbjson.h"

extern const lg_http_filter_type_t lg_filter_router;

static const lg_http_filter_type_t *const types[] = {
    &lg_filter_router,
};

static const char *const aliases[][2] = {
    {"envoy.router", "envoy.filters.http.router"},
};

const lg_http_filter_type_t *lg_http_filter_find(const char *name, const char *type_url)
{
    if (type_url != NULL && type_url[0] != '\0') {
        const char *full = lg_type_url_name(type_url);
        for (size_t i = 0; i != LG_ARRAY_SIZE(types); ++i)
            if (types[i]->config_type != NULL && strcmp(types[i]->config_type->name, full) == 0)
                return types[i];
        return NULL;
    }
    for (size_t i = 0; i != LG_ARRAY_SIZE(aliases); ++i)
        if (strcmp(name, aliases[i][0]) == 0)
            name = aliases[i][1];
    for (size_t i = 0; i != LG_ARRAY_SIZE(types); ++i)
        if (strcmp(types[i]->name, name) == 0)
            return types[i];
    return NULL;
}
