/* Filter chain matching with the server-name index: for listeners of many
 * chains, random server names (exact and wildcard, several per chain, chains
 * without names) and transport protocols, every connection gets the chain the
 * step-by-step match over all chains picks (the index replaces only that
 * pass); listeners that match on destination port get no index. */
#include <stdlib.h>
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

int main(void)
{
    test_index_picks_as_the_full_match();
    test_no_index_for_port_matches();
    return done();
}
