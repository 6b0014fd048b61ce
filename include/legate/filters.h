#ifndef LEGATE_FILTERS_H
#define LEGATE_FILTERS_H

#include "legate/filter-t.h"

/* The filter type for a configured filter: by typed_config's type URL when
 * there is one, else by name. NULL when Legate has no such filter. */
const lg_http_filter_type_t *lg_http_filter_find(const char *name, const char *type_url);

#endif
