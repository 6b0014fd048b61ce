/*
 * /stats (text, json, prometheus), /stats/prometheus and /reset_counters, in
 * Envoy's output shapes: text readouts, then counters and gauges, then
 * histograms, each sorted by name; Prometheus groups by tag-extracted name.
 */
#include <malloc.h>
#include <math.h>
#include <regex.h>
#include "legate/stats.h"
#include "admin_internal.h"

typedef enum en_stats_format_t { FORMAT_TEXT, FORMAT_JSON, FORMAT_PROMETHEUS } stats_format_t;
typedef enum en_stats_types_t { TYPE_ALL, TYPE_COUNTERS, TYPE_GAUGES, TYPE_HISTOGRAMS, TYPE_TEXT_READOUTS } stats_types_t;

typedef struct st_stats_params_t {
    int used_only;
    int text_readouts; /* prometheus: render text readouts as gauges */
    int has_filter;
    regex_t filter;
    stats_format_t format;
    stats_types_t type;
} stats_params_t;

/* Returns 0, or -1 with a 400 response set (Envoy's messages). */
static int parse_params(const lg_admin_request_t *req, stats_params_t *p, lg_admin_response_t *res)
{
    static const char *const types[] = {"All", "Counters", "Gauges", "Histograms", "TextReadouts"};
    const char *v;
    p->used_only = lg_admin_param(req, "usedonly") != NULL;
    p->text_readouts = lg_admin_param(req, "text_readouts") != NULL;
    if ((v = lg_admin_param(req, "filter")) != NULL) {
        if (regcomp(&p->filter, v, REG_EXTENDED | REG_NOSUB) != 0) {
            lg__admin_respond_text(res, 400, "Invalid re2 regex");
            return -1;
        }
        p->has_filter = 1;
    }
    if ((v = lg_admin_param(req, "type")) != NULL) {
        size_t i = 0;
        while (i != LG_ARRAY_SIZE(types) && strcmp(types[i], v) != 0)
            ++i;
        if (i == LG_ARRAY_SIZE(types)) {
            lg__admin_respond_text(res, 400, "invalid &type= param");
            return -1;
        }
        p->type = (stats_types_t)i;
    }
    if ((v = lg_admin_param(req, "format")) != NULL) {
        if (strcmp(v, "json") == 0) {
            p->format = FORMAT_JSON;
        } else if (strcmp(v, "prometheus") == 0) {
            p->format = FORMAT_PROMETHEUS;
        } else if (strcmp(v, "text") == 0) {
            p->format = FORMAT_TEXT;
        } else if (strcmp(v, "html") == 0 || strcmp(v, "active-html") == 0) {
            lg__admin_respond_text(res, 400, "HTML output was disabled by building with --define=admin_html=disabled");
            return -1;
        } else {
            lg__admin_respond_text(res, 400, "usage: /stats?format=(html|active-html|json|prometheus|text)\n\n");
            return -1;
        }
    }
    return 0;
}

static int type_selected(stats_types_t sel, lg_stat_type_t type)
{
    switch (sel) {
    case TYPE_COUNTERS:
        return type == LG_STAT_COUNTER;
    case TYPE_GAUGES:
        return type == LG_STAT_GAUGE;
    case TYPE_HISTOGRAMS:
        return type == LG_STAT_HISTOGRAM;
    case TYPE_TEXT_READOUTS:
        return type == LG_STAT_TEXT_READOUT;
    default:
        return 1;
    }
}

static int keep_stat(const char *name, lg_stat_type_t type, int used, void *ctx)
{
    const stats_params_t *p = ctx;
    if (p->used_only && !used)
        return 0;
    if (p->format != FORMAT_PROMETHEUS && !type_selected(p->type, type))
        return 0;
    if (p->format == FORMAT_PROMETHEUS && type == LG_STAT_TEXT_READOUT && !p->text_readouts)
        return 0;
    return !p->has_filter || regexec(&p->filter, name, 0, NULL, 0) == 0;
}

/* Formats a double the way fmt's "{}" does for the values histograms produce. */
static void format_double(char *buf, size_t size, double v, const char *nan)
{
    if (isnan(v)) {
        snprintf(buf, size, "%s", nan);
    } else if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, size, "%.0f", v);
    } else {
        for (int prec = 1; prec <= 17; ++prec) {
            snprintf(buf, size, "%.*g", prec, v);
            if (strtod(buf, NULL) == v)
                break;
        }
    }
}

/* ---- text and json ----------------------------------------------------------------------------------------------------------- */

static void text_histogram(lg_strbuf_t *b, const lg_stat_sample_t *s)
{
    if (!s->used) {
        lg_strbuf_printf(b, "%s: No recorded values\n", s->name);
        return;
    }
    double q[LG_STATS_QUANTILES];
    char pct[32], val[32];
    lg_stats_hist_quantiles(s->hist, q);
    lg_strbuf_printf(b, "%s:", s->name);
    for (size_t i = 0; i != LG_STATS_QUANTILES; ++i) {
        format_double(pct, sizeof(pct), lg_stats_quantiles[i] * 100, "nan");
        format_double(val, sizeof(val), q[i], "nan");
        lg_strbuf_printf(b, " P%s(nan,%s)", pct, val);
    }
    lg_strbuf_puts(b, "\n");
}

static void render_text(lg_strbuf_t *b, const lg_stats_snapshot_t *snap)
{
    for (size_t i = 0; i != snap->count; ++i)
        if (snap->samples[i].type == LG_STAT_TEXT_READOUT)
            lg_strbuf_printf(b, "%s: \"%s\"\n", snap->samples[i].name, snap->samples[i].text);
    for (size_t i = 0; i != snap->count; ++i)
        if (snap->samples[i].type == LG_STAT_COUNTER || snap->samples[i].type == LG_STAT_GAUGE)
            lg_strbuf_printf(b, "%s: %llu\n", snap->samples[i].name, (unsigned long long)snap->samples[i].value);
    for (size_t i = 0; i != snap->count; ++i)
        if (snap->samples[i].type == LG_STAT_HISTOGRAM)
            text_histogram(b, snap->samples + i);
}

static void json_entry_start(lg_strbuf_t *b, int *first, const char *name)
{
    lg_strbuf_puts(b, *first ? "{\"name\":" : ",{\"name\":");
    *first = 0;
    lg_strbuf_json_string(b, name, strlen(name));
    lg_strbuf_puts(b, ",\"value\":");
}

static void json_histograms(lg_strbuf_t *b, const lg_stats_snapshot_t *snap, int *first)
{
    int first_hist = 1;
    char num[32];
    for (size_t i = 0; i != snap->count; ++i) {
        const lg_stat_sample_t *s = snap->samples + i;
        if (s->type != LG_STAT_HISTOGRAM)
            continue;
        if (first_hist) {
            lg_strbuf_puts(b,
                           *first ? "{\"histograms\":{\"supported_quantiles\":[" : ",{\"histograms\":{\"supported_quantiles\":[");
            for (size_t q = 0; q != LG_STATS_QUANTILES; ++q) {
                format_double(num, sizeof(num), lg_stats_quantiles[q] * 100, "null");
                lg_strbuf_printf(b, "%s%s", q == 0 ? "" : ",", num);
            }
            lg_strbuf_puts(b, "],\"computed_quantiles\":[");
        }
        double q[LG_STATS_QUANTILES];
        lg_stats_hist_quantiles(s->hist, q);
        lg_strbuf_puts(b, first_hist ? "{\"name\":" : ",{\"name\":");
        lg_strbuf_json_string(b, s->name, strlen(s->name));
        lg_strbuf_puts(b, ",\"values\":[");
        for (size_t j = 0; j != LG_STATS_QUANTILES; ++j) {
            format_double(num, sizeof(num), q[j], "null");
            lg_strbuf_printf(b, "%s{\"cumulative\":%s,\"interval\":null}", j == 0 ? "" : ",", num);
        }
        lg_strbuf_puts(b, "]}");
        first_hist = 0;
        *first = 0;
    }
    if (!first_hist)
        lg_strbuf_puts(b, "]}}");
}

static void render_json(lg_strbuf_t *b, const lg_stats_snapshot_t *snap)
{
    int first = 1;
    lg_strbuf_puts(b, "{\"stats\":[");
    for (size_t i = 0; i != snap->count; ++i) {
        const lg_stat_sample_t *s = snap->samples + i;
        if (s->type != LG_STAT_TEXT_READOUT)
            continue;
        json_entry_start(b, &first, s->name);
        lg_strbuf_json_string(b, s->text, strlen(s->text));
        lg_strbuf_puts(b, "}");
    }
    for (size_t i = 0; i != snap->count; ++i) {
        const lg_stat_sample_t *s = snap->samples + i;
        if (s->type != LG_STAT_COUNTER && s->type != LG_STAT_GAUGE)
            continue;
        json_entry_start(b, &first, s->name);
        lg_strbuf_printf(b, "%llu}", (unsigned long long)s->value);
    }
    json_histograms(b, snap, &first);
    lg_strbuf_puts(b, "]}");
}

/* ---- prometheus -------------------------------------------------------------------------------------------------------------- */

typedef struct st_prom_entry_t {
    const lg_stat_sample_t *sample;
    char *extracted; /* "envoy_" + sanitized tag-extracted name */
    lg_stat_tag_t tags[LG_STATS_MAX_TAGS];
    size_t ntags;
} prom_entry_t;

static void sanitize_into(lg_strbuf_t *b, const char *s)
{
    for (; *s != '\0'; ++s) {
        char c = *s;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
        lg_strbuf_append(b, ok ? s : "_", 1);
    }
}

static void prom_entry_init(prom_entry_t *e, const lg_stat_sample_t *s)
{
    char *stripped = lg_malloc(strlen(s->name) + 1);
    lg_strbuf_t name = {NULL};
    e->sample = s;
    e->ntags = lg_stats_extract_tags(s->name, stripped, e->tags, LG_STATS_MAX_TAGS);
    lg_strbuf_puts(&name, "envoy_");
    sanitize_into(&name, stripped);
    e->extracted = name.base;
    free(stripped);
}

static int prom_entry_cmp(const void *a, const void *b)
{
    const prom_entry_t *x = a, *y = b;
    int c = strcmp(x->extracted, y->extracted);
    return c != 0 ? c : strcmp(x->sample->name, y->sample->name);
}

static void label_value(lg_strbuf_t *b, h2o_iovec_t v)
{
    for (size_t i = 0; i != v.len; ++i) {
        if (v.base[i] == '\\' || v.base[i] == '"')
            lg_strbuf_append(b, "\\", 1);
        if (v.base[i] == '\n')
            lg_strbuf_append(b, "\\n", 2);
        else
            lg_strbuf_append(b, v.base + i, 1);
    }
}

/* Writes the tags without braces ("envoy_cluster_name=\"x\",..."); `extra` adds a last label. */
static void prom_labels(lg_strbuf_t *b, const prom_entry_t *e, const char *extra_name, const char *extra_value)
{
    for (size_t t = 0; t != e->ntags; ++t) {
        if (t != 0)
            lg_strbuf_puts(b, ",");
        sanitize_into(b, e->tags[t].name);
        lg_strbuf_puts(b, "=\"");
        label_value(b, e->tags[t].value);
        lg_strbuf_puts(b, "\"");
    }
    if (extra_name != NULL) {
        lg_strbuf_printf(b, "%s%s=\"", e->ntags != 0 ? "," : "", extra_name);
        label_value(b, h2o_iovec_init(extra_value, strlen(extra_value)));
        lg_strbuf_puts(b, "\"");
    }
}

static void prom_histogram(lg_strbuf_t *b, const prom_entry_t *e)
{
    const uint64_t *h = e->sample->hist;
    uint64_t cumulative = 0;
    char le[32];
    for (size_t i = 0; i != LG_STATS_HIST_BUCKETS; ++i) {
        cumulative += h[i];
        format_double(le, sizeof(le), lg_stats_hist_bound(i), "nan");
        lg_strbuf_printf(b, "%s_bucket{", e->extracted);
        prom_labels(b, e, "le", le);
        lg_strbuf_printf(b, "} %llu\n", (unsigned long long)cumulative);
    }
    lg_strbuf_printf(b, "%s_bucket{", e->extracted);
    prom_labels(b, e, "le", "+Inf");
    lg_strbuf_printf(b, "} %llu\n%s_sum{", (unsigned long long)lg_stats_hist_count(h), e->extracted);
    prom_labels(b, e, NULL, NULL);
    lg_strbuf_printf(b, "} %llu\n%s_count{", (unsigned long long)lg_stats_hist_sum(h), e->extracted);
    prom_labels(b, e, NULL, NULL);
    lg_strbuf_printf(b, "} %llu\n", (unsigned long long)lg_stats_hist_count(h));
}

static void prom_line(lg_strbuf_t *b, const prom_entry_t *e)
{
    switch (e->sample->type) {
    case LG_STAT_HISTOGRAM:
        prom_histogram(b, e);
        break;
    case LG_STAT_TEXT_READOUT:
        lg_strbuf_printf(b, "%s{", e->extracted);
        prom_labels(b, e, "text_value", e->sample->text);
        lg_strbuf_puts(b, "} 1\n");
        break;
    default:
        lg_strbuf_printf(b, "%s{", e->extracted);
        prom_labels(b, e, NULL, NULL);
        lg_strbuf_printf(b, "} %llu\n", (unsigned long long)e->sample->value);
    }
}

/* One metric type: groups by tag-extracted name, "# TYPE" line first, blank line after. */
static void prom_section(lg_strbuf_t *b, const lg_stats_snapshot_t *snap, lg_stat_type_t type, const char *type_name)
{
    prom_entry_t *entries = lg_malloc((snap->count + 1) * sizeof(*entries));
    size_t n = 0;
    for (size_t i = 0; i != snap->count; ++i)
        if (snap->samples[i].type == type)
            prom_entry_init(entries + n++, snap->samples + i);
    qsort(entries, n, sizeof(*entries), prom_entry_cmp);
    for (size_t i = 0; i != n; ++i) {
        if (i == 0 || strcmp(entries[i - 1].extracted, entries[i].extracted) != 0)
            lg_strbuf_printf(b, "# TYPE %s %s\n", entries[i].extracted, type_name);
        prom_line(b, entries + i);
        if (i + 1 == n || strcmp(entries[i + 1].extracted, entries[i].extracted) != 0)
            lg_strbuf_puts(b, "\n");
    }
    for (size_t i = 0; i != n; ++i)
        free(entries[i].extracted);
    free(entries);
}

static void render_prometheus(lg_strbuf_t *b, const lg_stats_snapshot_t *snap)
{
    prom_section(b, snap, LG_STAT_COUNTER, "counter");
    prom_section(b, snap, LG_STAT_GAUGE, "gauge");
    prom_section(b, snap, LG_STAT_TEXT_READOUT, "gauge");
    prom_section(b, snap, LG_STAT_HISTOGRAM, "histogram");
}

/* ---- handlers ---------------------------------------------------------------------------------------------------------------- */

static void render(const lg_admin_request_t *req, lg_admin_response_t *res, stats_params_t *p)
{
    lg_stats_snapshot_t snap;
    lg__admin_refresh_server_stats();
    lg_stats_snapshot(&snap, keep_stat, p);
    size_t snap_count = snap.count;
    switch (p->format) {
    case FORMAT_TEXT:
        render_text(&res->body, &snap);
        break;
    case FORMAT_JSON:
        res->content_type = LG_ADMIN_CONTENT_JSON;
        render_json(&res->body, &snap);
        break;
    case FORMAT_PROMETHEUS:
        render_prometheus(&res->body, &snap);
        break;
    }
    lg_stats_snapshot_free(&snap);
    /* a snapshot of 10,000 clusters takes tens of MB for a moment: give the pages back */
    if (snap_count > 10000)
        malloc_trim(0);
}

static void handle_stats(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    stats_params_t p = {0};
    if (parse_params(req, &p, res) != 0)
        return;
    if (ctx != NULL)
        p.format = FORMAT_PROMETHEUS;
    render(req, res, &p);
    if (p.has_filter)
        regfree(&p.filter);
}

static void handle_reset_counters(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg_stats_reset_counters();
    lg_strbuf_puts(&res->body, "OK\n");
}

void lg__admin_register_stats_handlers(void)
{
    lg_admin_register("/stats", "print server stats", 0, handle_stats, NULL);
    lg_admin_add_param("/stats", "usedonly", "Only include stats that have been written by system since restart");
    lg_admin_add_param("/stats", "filter", "Regular expression (Google re2) for filtering stats");
    lg_admin_add_param("/stats", "format", "Format to use; One of (html, active-html, text, json)");
    lg_admin_add_param("/stats", "type", "Stat types to include.; One of (All, Counters, Histograms, Gauges, TextReadouts)");
    lg_admin_register("/stats/prometheus", "print server stats in prometheus format", 0, handle_stats, (void *)1);
    lg_admin_add_param("/stats/prometheus", "usedonly", "Only include stats that have been written by system since restart");
    lg_admin_add_param("/stats/prometheus", "text_readouts",
                       "Render text_readouts as new gaugues with value 0 (increases Prometheus data size)");
    lg_admin_add_param("/stats/prometheus", "filter", "Regular expression (Google re2) for filtering stats");
    lg_admin_register("/reset_counters", "reset all counters to zero", 1, handle_reset_counters, NULL);
}
