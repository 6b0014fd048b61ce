/* Filter chain matching with the server-name index: for listeners of many
 * chains, random server names (exact and wildcard, several per chain, chains
 * without names) and transport protocols, every connection gets the chain the
 * step-by-step match over all chains picks (the index replaces only that
 * pass); listeners that match on destination port get no index. And the
 * overlap check against a pairwise comparison of random matches on every
 * criterion. */
#include <stdlib.h>
#include <sys/socket.h>
#include "test.h"
#include "legate/common.h"
#include "legate/listener.h"

static const char *const names[] = {"a.example.com", "b.example.com", "x.y.example.com", "*.example.com", "*.y.example.com",
                                    "*.com",         "foo.org",       "*.org",           "a.example.com"};
static const char *const snis[] = {"a.example.com",
                                   "A.Example.COM",
                                   "b.example.com",
                                   "q.example.com",
                                   "z.x.y.example.com",
                                   "x.y.example.com",
                                   "example.com",
                                   "foo.com",
                                   "foo.org",
                                   "bar.org",
                                   "nothing.net",
                                   ".example.com",
                                   "com",
                                   "",
                                   NULL};

static lg_listener_config_t *random_listener(size_t n, unsigned *seed)
{
    lg_listener_config_t *l = lg_calloc(1, sizeof(*l));
    l->chains = lg_calloc(n, sizeof(*l->chains));
    l->n_chains = n;
    for (size_t i = 0; i != n; ++i) {
        lg_filter_chain_match_t *m = &l->chains[i].match;
        m->n_server_names = (size_t)(rand_r(seed) % 3);
        m->server_names = lg_calloc(m->n_server_names + 1, sizeof(char *));
        for (size_t k = 0; k != m->n_server_names; ++k)
            m->server_names[k] = lg_strdup(names[rand_r(seed) % (sizeof(names) / sizeof(names[0]))]);
        m->transport_protocol = lg_strdup(rand_r(seed) % 3 == 0 ? "tls" : "");
    }
    return l;
}

static void listener_free(lg_listener_config_t *l)
{
    for (size_t i = 0; i != l->n_chains; ++i) {
        lg_filter_chain_match_t *m = &l->chains[i].match;
        for (size_t k = 0; k != m->n_server_names; ++k)
            free(m->server_names[k]);
        free(m->server_names);
        free(m->transport_protocol);
    }
    lg_listener_sni_index_free(l->sni_index);
    free(l->chains);
    free(l);
}

static const lg_filter_chain_t *match_without_index(lg_listener_config_t *l, const lg_conn_match_info_t *info)
{
    struct st_lg_sni_index_t *x = l->sni_index;
    l->sni_index = NULL;
    const lg_filter_chain_t *c = lg_listener_match_chain(l, info);
    l->sni_index = x;
    return c;
}

static void test_index_picks_as_the_full_match(void)
{
    unsigned seed = 1;
    char long_name[300];
    memset(long_name, 'a', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';
    size_t checked = 0, differ = 0, found = 0;
    for (int round = 0; round != 200; ++round) {
        lg_listener_config_t *l = random_listener(16 + (size_t)(rand_r(&seed) % 48), &seed);
        lg_listener_index_chains(l);
        if (l->sni_index == NULL) {
            ++differ;
            listener_free(l);
            continue;
        }
        for (size_t s = 0; s <= sizeof(snis) / sizeof(snis[0]); ++s) {
            for (int tls = 0; tls != 2; ++tls) {
                const char *sni = s == sizeof(snis) / sizeof(snis[0]) ? long_name : snis[s];
                lg_conn_match_info_t info = {.server_name = sni, .transport_protocol = tls ? "tls" : "raw_buffer"};
                const lg_filter_chain_t *want = match_without_index(l, &info), *got = lg_listener_match_chain(l, &info);
                differ += got != want;
                found += got != NULL;
                ++checked;
            }
        }
        listener_free(l);
    }
    ok(differ == 0, "%zu of %zu connections matched another chain with the index", differ, checked);
    ok(found > checked / 2, "most connections find a chain (%zu of %zu)", found, checked);
}

static void test_no_index_for_port_matches(void)
{
    unsigned seed = 7;
    lg_listener_config_t *l = random_listener(32, &seed);
    l->chains[5].match.has_destination_port = 1;
    l->chains[5].match.destination_port = 443;
    lg_listener_index_chains(l);
    ok(l->sni_index == NULL, "a chain matching on destination port: no server-name index");
    listener_free(l);
    l = random_listener(8, &seed);
    lg_listener_index_chains(l);
    ok(l->sni_index == NULL, "a few chains: no index");
    listener_free(l);
}

/* ---- overlapping matches, checked pairwise ---- */

#define N_CRITERIA 9

/* The values of criterion d as text ("any" for an empty list), written independently of the tree's keys. */
static size_t criterion_values(const lg_filter_chain_match_t *m, int d, char out[][64])
{
    const lg_cidr_t *cidrs = d == 1 ? m->prefix_ranges : d == 5 ? m->direct_source_prefix_ranges : m->source_prefix_ranges;
    size_t n = d == 1 ? m->n_prefix_ranges : d == 5 ? m->n_direct_source_prefix_ranges : m->n_source_prefix_ranges;
    switch (d) {
    case 0:
        snprintf(out[0], 64, "%u", m->has_destination_port ? m->destination_port : 0);
        return 1;
    case 2:
        for (size_t k = 0; k != m->n_server_names; ++k)
            snprintf(out[k], 64, "%s", m->server_names[k][0] == '*' ? m->server_names[k] + 1 : m->server_names[k]);
        break;
    case 3:
        snprintf(out[0], 64, "%s", m->transport_protocol);
        return 1;
    case 4:
        for (size_t k = 0; k != m->n_application_protocols; ++k)
            snprintf(out[k], 64, "%s", m->application_protocols[k]);
        n = m->n_application_protocols;
        break;
    case 6:
        snprintf(out[0], 64, "%d", m->source_type);
        return 1;
    case 8:
        for (size_t k = 0; k != m->n_source_ports; ++k)
            snprintf(out[k], 64, "%u", m->source_ports[k]);
        if (m->n_source_ports == 0)
            snprintf(out[0], 64, "0");
        return m->n_source_ports != 0 ? m->n_source_ports : 1;
    default:
        for (size_t k = 0; k != n; ++k)
            snprintf(out[k], 64, "%d/%u.%u/%u", cidrs[k].family, cidrs[k].addr[0], cidrs[k].addr[1], cidrs[k].prefix_len);
        if (n == 0)
            snprintf(out[0], 64, "any");
        return n != 0 ? n : 1;
    }
    if (d == 2 && m->n_server_names == 0)
        out[0][0] = '\0';
    if (d == 4 && n == 0)
        out[0][0] = '\0';
    return d == 2 ? (m->n_server_names != 0 ? m->n_server_names : 1) : (n != 0 ? n : 1);
}

static int criteria_overlap(const lg_filter_chain_match_t *a, const lg_filter_chain_match_t *b)
{
    static char x[8][64], y[8][64];
    for (int d = 0; d != N_CRITERIA; ++d) {
        size_t na = criterion_values(a, d, x), nb = criterion_values(b, d, y), hit = 0;
        for (size_t i = 0; i != na; ++i)
            for (size_t j = 0; j != nb; ++j)
                hit |= strcmp(x[i], y[j]) == 0;
        if (!hit)
            return 0;
    }
    return 1;
}

static int repeats_a_value(const lg_filter_chain_match_t *a)
{
    static char x[8][64];
    for (int d = 0; d != N_CRITERIA; ++d) {
        size_t n = criterion_values(a, d, x);
        for (size_t i = 0; i != n; ++i)
            for (size_t j = i + 1; j < n; ++j)
                if (strcmp(x[i], x[j]) == 0)
                    return 1;
    }
    return 0;
}

static const char *const alpns[] = {"h2", "http/1.1"};

static void random_cidrs(lg_cidr_t **out, size_t *n, unsigned *seed)
{
    *n = rand_r(seed) % 4 == 0 ? 1 + (size_t)(rand_r(seed) % 2) : 0;
    *out = lg_calloc(*n + 1, sizeof(**out));
    for (size_t k = 0; k != *n; ++k) {
        (*out)[k].family = AF_INET;
        (*out)[k].addr[0] = 10;
        (*out)[k].addr[1] = (uint8_t)(rand_r(seed) % 2);
        (*out)[k].prefix_len = 16;
    }
}

/* Random matches on every criterion, from small pools so that overlaps are common. */
static lg_listener_config_t *random_matches(size_t n, unsigned *seed)
{
    lg_listener_config_t *l = random_listener(n, seed);
    for (size_t i = 0; i != n; ++i) {
        lg_filter_chain_match_t *m = &l->chains[i].match;
        m->has_destination_port = rand_r(seed) % 4 == 0;
        m->destination_port = m->has_destination_port ? 443 : 0;
        m->n_application_protocols = rand_r(seed) % 3 == 0 ? 1 + (size_t)(rand_r(seed) % 2) : 0;
        m->application_protocols = lg_calloc(m->n_application_protocols + 1, sizeof(char *));
        for (size_t k = 0; k != m->n_application_protocols; ++k)
            m->application_protocols[k] = lg_strdup(alpns[rand_r(seed) % 2]);
        m->source_type = rand_r(seed) % 4 == 0 ? 1 + rand_r(seed) % 2 : 0;
        m->n_source_ports = rand_r(seed) % 3 == 0 ? 1 + (size_t)(rand_r(seed) % 3) : 0;
        m->source_ports = lg_calloc(m->n_source_ports + 1, sizeof(uint32_t));
        for (size_t k = 0; k != m->n_source_ports; ++k)
            m->source_ports[k] = 1 + (uint32_t)(rand_r(seed) % 4);
        random_cidrs(&m->prefix_ranges, &m->n_prefix_ranges, seed);
        random_cidrs(&m->direct_source_prefix_ranges, &m->n_direct_source_prefix_ranges, seed);
        random_cidrs(&m->source_prefix_ranges, &m->n_source_prefix_ranges, seed);
    }
    return l;
}

static void free_matches(lg_listener_config_t *l)
{
    for (size_t i = 0; i != l->n_chains; ++i) {
        lg_filter_chain_match_t *m = &l->chains[i].match;
        for (size_t k = 0; k != m->n_application_protocols; ++k)
            free(m->application_protocols[k]);
        free(m->application_protocols);
        free(m->source_ports);
        free(m->prefix_ranges);
        free(m->direct_source_prefix_ranges);
        free(m->source_prefix_ranges);
    }
    listener_free(l);
}

static void test_overlaps_as_pairwise(void)
{
    unsigned seed = 11;
    size_t rounds = 0, wrong = 0, refused = 0, accepted = 0;
    for (; rounds != 2000; ++rounds) {
        lg_listener_config_t *l = random_matches(2 + (size_t)(rand_r(&seed) % 6), &seed);
        lg_match_tree_t *t = lg_match_tree_new();
        size_t i = 0;
        for (; i != l->n_chains; ++i) {
            const lg_filter_chain_match_t *m = &l->chains[i].match;
            int want = repeats_a_value(m);
            for (size_t j = 0; j != i; ++j)
                want |= criteria_overlap(&l->chains[j].match, m);
            ssize_t got = lg_match_tree_add(t, l->chains, i);
            if (want != (got >= 0) ||
                (got >= 0 && !((size_t)got == i ? repeats_a_value(m) : criteria_overlap(&l->chains[got].match, m)))) {
                ++wrong;
                break;
            }
            if (got >= 0) {
                ++refused;
                break;
            }
        }
        accepted += i == l->n_chains;
        lg_match_tree_free(t);
        free_matches(l);
    }
    ok(wrong == 0, "%zu of %zu listeners checked otherwise than pairwise", wrong, rounds);
    ok(refused > rounds / 10 && accepted > rounds / 10, "both outcomes are common (%zu refused, %zu accepted)", refused, accepted);
}

int main(void)
{
    test_index_picks_as_the_full_match();
    test_no_index_for_port_matches();
    test_overlaps_as_pairwise();
    return done();
}
