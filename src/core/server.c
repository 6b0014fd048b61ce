/*
 * The process: loads the bootstrap, starts the admin thread and the workers,
 * handles signals, drains and exits.
 *
 * Threads: the main thread is the control thread (signals, config); each
 * worker runs its own loop; the admin server runs on its own thread. Config
 * reaches workers only as snapshots posted through their message queues.
 */
#include <errno.h>
#include <signal.h>
#include <unistd.h>
#include "legate/address.h"
#include "legate/admin.h"
#include "legate/cluster.h"
#include "legate/config_dump.h"
#include "legate/hcm.h"
#include "legate/listener.h"
#include "legate/listener_runtime.h"
#include "legate/pbjson.h"
#include "legate/server.h"
#include "legate/stats.h"
#include "legate/timer.h"

typedef enum en_msg_type_t { MSG_SNAPSHOT, MSG_DRAIN, MSG_STOP } msg_type_t;

typedef struct st_worker_msg_t {
    h2o_multithread_message_t super;
    msg_type_t type;
    lg_snapshot_t *snapshot;
} worker_msg_t;

typedef struct st_worker_listener_t {
    lg_listener_config_t *config;
    h2o_socket_t *sock;
    lg_worker_t *worker;
    int fd; /* bound before the workers start; the worker wraps it */
} worker_listener_t;

typedef struct st_worker_state_t {
    worker_listener_t *listeners;
    size_t n_listeners;
    h2o_linklist_t conns;
    size_t n_conns; /* written by the worker, read by the control thread */
    lg_worker_clusters_t *clusters;
    int stop;
} worker_state_t;

static struct {
    lg_options_t opts;
    lg_worker_t *workers;
    size_t n_workers;
    lg_snapshot_t *snapshot; /* current; control thread */
    pthread_mutex_t snapshot_mutex; /* guards `snapshot` for the admin thread */
    volatile sig_atomic_t quit;
    uint64_t next_conn_id;
    lg_stats_block_t *server_stats, *listener_manager_stats, *cluster_manager_stats;
    uint64_t start_wall_us;
} srv = {.snapshot_mutex = PTHREAD_MUTEX_INITIALIZER};


uint64_t lg_server_next_connection_id(void)
{
    return __atomic_fetch_add(&srv.next_conn_id, 1, __ATOMIC_RELAXED);
}

static worker_state_t *state_of(lg_worker_t *w)
{
    return w->data;
}

void lg_worker_add_connection(lg_worker_t *w, h2o_linklist_t *link)
{
    worker_state_t *st = state_of(w);
    h2o_linklist_insert(&st->conns, link);
    __atomic_store_n(&st->n_conns, st->n_conns + 1, __ATOMIC_RELAXED);
}

/* Called by the HCM when a connection is gone (its link is already unlinked). */
static void count_conns(lg_worker_t *w)
{
    worker_state_t *st = state_of(w);
    size_t n = 0;
    for (h2o_linklist_t *l = st->conns.next; l != &st->conns; l = l->next)
        ++n;
    __atomic_store_n(&st->n_conns, n, __ATOMIC_RELAXED);
}

void lg_server_log_access(lg_worker_t *w, const lg_listener_config_t *l, const lg_hcm_config_t *hcm, const lg_stream_info_t *info)
{
    lg_access_logs_emit(&hcm->access_logs, info);
}

lg_worker_clusters_t *lg_worker_cluster_view(lg_worker_t *w)
{
    return state_of(w)->clusters;
}

/* ---- workers ---- */

static void on_listener_accept(h2o_socket_t *sock, const char *err)
{
    worker_listener_t *wl = sock->data;
    if (err != NULL)
        return;
    lg_listener_accept(wl->worker, wl->config, wl->worker->snapshot, sock);
}

static void worker_apply_snapshot(lg_worker_t *w, lg_snapshot_t *snap)
{
    worker_state_t *st = state_of(w);
    lg_worker_clusters_t *prev = st->clusters;
    st->clusters = lg_worker_clusters_new(w, snap->clusters, snap->n_clusters, prev);
    if (prev != NULL)
        lg_worker_clusters_free(prev);
    lg_snapshot_t *old = w->snapshot;
    w->snapshot = snap;
    lg_snapshot_hold(w, snap);
    if (old != NULL)
        lg_snapshot_release(w, old);
}

static void worker_stop_listening(lg_worker_t *w)
{
    worker_state_t *st = state_of(w);
    for (size_t i = 0; i != st->n_listeners; ++i) {
        if (st->listeners[i].sock != NULL) {
            h2o_socket_read_stop(st->listeners[i].sock);
            h2o_socket_close(st->listeners[i].sock);
            st->listeners[i].sock = NULL;
        }
    }
}

static void worker_drain(lg_worker_t *w)
{
    worker_state_t *st = state_of(w);
    worker_stop_listening(w);
    for (h2o_linklist_t *l = st->conns.next, *next; l != &st->conns; l = next) {
        next = l->next;
        lg_hcm_conn_drain(H2O_STRUCT_FROM_MEMBER(lg_hcm_conn_t, worker_link, l));
    }
}

static void on_worker_message(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    lg_worker_t *w = H2O_STRUCT_FROM_MEMBER(lg_worker_t, config_receiver, receiver);
    while (!h2o_linklist_is_empty(messages)) {
        worker_msg_t *m = H2O_STRUCT_FROM_MEMBER(worker_msg_t, super.link, messages->next);
        h2o_linklist_unlink(&m->super.link);
        switch (m->type) {
        case MSG_SNAPSHOT:
            worker_apply_snapshot(w, m->snapshot);
            lg_snapshot_unref(m->snapshot);
            break;
        case MSG_DRAIN:
            worker_drain(w);
            break;
        case MSG_STOP:
            state_of(w)->stop = 1;
            break;
        }
        free(m);
    }
}

static void post(lg_worker_t *w, msg_type_t type, lg_snapshot_t *snap)
{
    worker_msg_t *m = lg_calloc(1, sizeof(*m));
    m->type = type;
    m->snapshot = snap != NULL ? lg_snapshot_ref(snap) : NULL;
    h2o_multithread_send_message(&w->config_receiver, &m->super);
}

static void *worker_main(void *arg)
{
    lg_worker_t *w = arg;
    worker_state_t *st = state_of(w);
    lg_current_worker = w;
    for (size_t i = 0; i != st->n_listeners; ++i) {
        worker_listener_t *wl = st->listeners + i;
        wl->sock = h2o_evloop_socket_create((h2o_evloop_t *)w->loop.loop, wl->fd, H2O_SOCKET_FLAG_DONT_READ);
        wl->sock->data = wl;
        h2o_socket_read_start(wl->sock, on_listener_accept);
    }
    while (!st->stop || !h2o_linklist_is_empty(&st->conns)) {
        h2o_evloop_run(w->loop.loop, st->stop ? 10 : INT32_MAX);
        count_conns(w);
        if (st->stop) {
            /* hard stop: close what is left */
            for (h2o_linklist_t *l = st->conns.next, *next; l != &st->conns; l = next) {
                next = l->next;
                lg_hcm_conn_t *c = H2O_STRUCT_FROM_MEMBER(lg_hcm_conn_t, worker_link, l);
                c->codec->ops->close(c->codec);
            }
        }
    }
    worker_stop_listening(w);
    /* let closed sockets' callbacks run */
    for (int i = 0; i != 4; ++i)
        h2o_evloop_run(w->loop.loop, 0);
    lg_worker_clusters_free(st->clusters);
    st->clusters = NULL;
    for (int i = 0; i != 4; ++i)
        h2o_evloop_run(w->loop.loop, 0);
    if (w->snapshot != NULL)
        lg_snapshot_release(w, w->snapshot);
    /* libh2o keeps recycled socket buffers in a thread-local list that dies with the thread */
    while (h2o_socket_buffer_prototype.allocator.cnt != 0)
        free(h2o_mem_alloc_recycle(&h2o_socket_buffer_prototype.allocator, 0));
    return NULL;
}

static int start_workers(lg_snapshot_t *snap, lg_error_t *err)
{
    srv.workers = lg_calloc(srv.n_workers, sizeof(*srv.workers));
    int **fds = lg_calloc(snap->n_listeners ? snap->n_listeners : 1, sizeof(*fds));
    for (size_t i = 0; i != snap->n_listeners; ++i) {
        fds[i] = lg_calloc(srv.n_workers, sizeof(int));
        size_t socks = snap->listeners[i]->addr.ss_family == AF_UNIX ? 1 : srv.n_workers;
        for (size_t k = 0; k != socks; ++k)
            if ((fds[i][k] = lg_listen_socket_open(snap->listeners[i], err)) < 0)
                return lg_error_prefix(err, "listener '%s'", snap->listeners[i]->name);
        for (size_t k = socks; k != srv.n_workers; ++k)
            fds[i][k] = dup(fds[i][0]);
    }
    for (size_t k = 0; k != srv.n_workers; ++k) {
        lg_worker_t *w = srv.workers + k;
        worker_state_t *st = lg_calloc(1, sizeof(*st));
        w->index = k;
        w->data = st;
        lg_loop_init(&w->loop, (h2o_loop_t *)h2o_evloop_create());
        w->queue = h2o_multithread_create_queue(w->loop.loop);
        h2o_multithread_register_receiver(w->queue, &w->config_receiver, on_worker_message);
        h2o_linklist_init_anchor(&st->conns);
        st->n_listeners = snap->n_listeners;
        st->listeners = lg_calloc(snap->n_listeners ? snap->n_listeners : 1, sizeof(*st->listeners));
        for (size_t i = 0; i != snap->n_listeners; ++i)
            st->listeners[i] = (worker_listener_t){snap->listeners[i], NULL, w, fds[i][k]};
        lg_current_worker = w;
        worker_apply_snapshot(w, snap);
        lg_current_worker = NULL;
    }
    for (size_t k = 0; k != srv.n_workers; ++k)
        pthread_create(&srv.workers[k].thread, NULL, worker_main, srv.workers + k);
    for (size_t i = 0; i != snap->n_listeners; ++i)
        free(fds[i]);
    free(fds);
    return 0;
}

static void stop_workers(void)
{
    for (size_t k = 0; k != srv.n_workers; ++k)
        post(srv.workers + k, MSG_STOP, NULL);
    for (size_t k = 0; k != srv.n_workers; ++k) {
        lg_worker_t *w = srv.workers + k;
        pthread_join(w->thread, NULL);
        h2o_multithread_unregister_receiver(w->queue, &w->config_receiver);
        h2o_multithread_destroy_queue(w->queue);
        free(w->queue); /* libh2o 2.2.5's evloop build does not free it */
        lg_loop_dispose(&w->loop);
        h2o_evloop_destroy((h2o_evloop_t *)w->loop.loop);
        free(state_of(w)->listeners);
        free(w->data);
    }
    free(srv.workers);
}

static size_t total_connections(void)
{
    size_t n = 0;
    for (size_t k = 0; k != srv.n_workers; ++k)
        n += __atomic_load_n(&state_of(srv.workers + k)->n_conns, __ATOMIC_RELAXED);
    return n;
}

/* ---- admin endpoints that read the config ---- */

static lg_snapshot_t *current_snapshot(void)
{
    pthread_mutex_lock(&srv.snapshot_mutex);
    lg_snapshot_t *s = srv.snapshot != NULL ? lg_snapshot_ref(srv.snapshot) : NULL;
    pthread_mutex_unlock(&srv.snapshot_mutex);
    return s;
}

static void admin_clusters(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg_snapshot_t *s = current_snapshot();
    const char *format = lg_admin_param(req, "format");
    if (format != NULL && strcmp(format, "json") == 0) {
        res->content_type = LG_ADMIN_CONTENT_JSON;
        lg_clusters_admin_json(&res->body, s->clusters, s->n_clusters);
    } else {
        lg_clusters_admin_text(&res->body, s->clusters, s->n_clusters);
    }
    lg_snapshot_unref(s);
}

static void admin_listeners(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg_snapshot_t *s = current_snapshot();
    const char *format = lg_admin_param(req, "format");
    if (format != NULL && strcmp(format, "json") == 0) {
        res->content_type = LG_ADMIN_CONTENT_JSON;
        lg_strbuf_puts(&res->body, "{\"listener_statuses\":[");
        for (size_t i = 0; i != s->n_listeners; ++i) {
            const lg_listener_config_t *l = s->listeners[i];
            char ip[128];
            lg_address_format_ip((const struct sockaddr *)&l->addr, ip, sizeof(ip));
            lg_strbuf_puts(&res->body, i ? ",{\"name\":" : "{\"name\":");
            lg_strbuf_json_string(&res->body, l->name, strlen(l->name));
            if (l->addr.ss_family == AF_UNIX) {
                lg_strbuf_puts(&res->body, ",\"local_address\":{\"pipe\":{\"path\":");
                lg_strbuf_json_string(&res->body, ip, strlen(ip));
                lg_strbuf_puts(&res->body, "}}}");
            } else {
                lg_strbuf_puts(&res->body, ",\"local_address\":{\"socket_address\":{\"address\":");
                lg_strbuf_json_string(&res->body, ip, strlen(ip));
                lg_strbuf_printf(&res->body, ",\"port_value\":%u}}}", lg_address_port((const struct sockaddr *)&l->addr));
            }
        }
        lg_strbuf_puts(&res->body, "]}");
    } else {
        for (size_t i = 0; i != s->n_listeners; ++i)
            lg_strbuf_printf(&res->body, "%s::%s\n", s->listeners[i]->name, s->listeners[i]->address_str);
    }
    lg_snapshot_unref(s);
}

/* Envoy's ConfigDump: bootstrap, clusters, listeners, routes, in this order. */
static void admin_config_dump(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    lg_snapshot_t *s = current_snapshot();
    lg_config_dump_src_t src = {s->bootstrap, s->last_updated_wall_us};
    res->content_type = LG_ADMIN_CONTENT_JSON;
    lg_config_dump(&res->body, &src);
    lg_snapshot_unref(s);
}

static void admin_drain_listeners(const lg_admin_request_t *req, lg_admin_response_t *res, void *ctx)
{
    for (size_t k = 0; k != srv.n_workers; ++k)
        post(srv.workers + k, MSG_DRAIN, NULL);
    lg_strbuf_puts(&res->body, "OK\n");
}

static void on_quit(void)
{
    srv.quit = 2;
}

static void register_admin(void)
{
    lg_admin_register("/clusters", "upstream cluster status", 0, admin_clusters, NULL);
    lg_admin_add_param("/clusters", "format", "File format to use; text or json");
    lg_admin_register("/listeners", "print listener info", 0, admin_listeners, NULL);
    lg_admin_add_param("/listeners", "format", "File format to use; text or json");
    lg_admin_register("/config_dump", "dump current Envoy configs (experimental)", 0, admin_config_dump, NULL);
    lg_admin_register("/drain_listeners", "drain listeners", 1, admin_drain_listeners, NULL);
    lg_admin_add_param("/drain_listeners", "graceful", "When draining listeners, enter a graceful drain period prior to closing");
    lg_admin_on_quit(on_quit);
}

/* ---- startup ---- */

static int start_admin(const Envoy__Config__Bootstrap__V3__Bootstrap *b, lg_error_t *err)
{
    if (b->admin == NULL || b->admin->address == NULL)
        return 0; /* Envoy runs without an admin listener when none is configured */
    const Envoy__Config__Core__V3__Address *a = b->admin->address;
    if (a->address_case == ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_PIPE) {
        if (lg_admin_start_pipe(a->pipe->path, a->pipe->mode, err) != 0)
            return -1;
    } else {
        struct sockaddr_storage ss;
        socklen_t len;
        if (lg_address_from_proto(a, &ss, &len, err) != 0)
            return lg_error_prefix(err, "admin.address");
        if (lg_admin_start(a->socket_address->address, (uint16_t)a->socket_address->port_value, err) != 0)
            return -1;
    }
    if (srv.opts.admin_address_path != NULL && lg_admin_write_address_file(srv.opts.admin_address_path, err) != 0)
        return -1;
    return 0;
}

static ProtobufCMessage *load_bootstrap(const lg_options_t *o, lg_error_t *err)
{
    int flags = (o->allow_unknown_static_fields ? LG_PBJSON_ALLOW_UNKNOWN_FIELDS : 0) |
                (o->mode == LG_MODE_VALIDATE ? LG_PBJSON_COLLECT_UNKNOWN_FIELDS : 0);
    return lg_pbjson_load_file(&envoy__config__bootstrap__v3__bootstrap__descriptor, o->config_path, o->config_yaml, flags, err);
}

static int apply_component_levels(const char *spec, lg_error_t *err)
{
    char *copy = lg_strdup(spec), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok != NULL; tok = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(tok, ':');
        int level = colon != NULL ? lg_log_level_parse(colon + 1) : -1;
        size_t c;
        if (colon != NULL)
            *colon = '\0';
        for (c = 0; c != LG_LOGC__COUNT; ++c)
            if (strcmp(lg_log_component_names[c], tok) == 0)
                break;
        if (level < 0 || c == LG_LOGC__COUNT) {
            lg_error(err, "error: invalid component specified '%s'", tok);
            free(copy);
            return -1;
        }
        lg_log_levels[c] = (lg_log_level_t)level;
    }
    free(copy);
    return 0;
}

static void server_info_json(const lg_options_t *o, const Envoy__Config__Bootstrap__V3__Bootstrap *b)
{
    lg_strbuf_t cli = {NULL}, node = {NULL};
    lg_strbuf_puts(&cli, "{\"concurrency\":");
    lg_strbuf_printf(&cli, "%u,\"config_path\":", o->concurrency);
    lg_strbuf_json_string(&cli, o->config_path ? o->config_path : "", o->config_path ? strlen(o->config_path) : 0);
    lg_strbuf_puts(&cli, ",\"config_yaml\":");
    lg_strbuf_json_string(&cli, o->config_yaml ? o->config_yaml : "", o->config_yaml ? strlen(o->config_yaml) : 0);
    lg_strbuf_printf(&cli, ",\"log_level\":\"%s\",\"drain_time\":\"%us\",\"parent_shutdown_time\":\"%us\",\"mode\":\"%s\"",
                     lg_log_level_name(o->log_level), o->drain_time_s, o->parent_shutdown_time_s,
                     o->mode == LG_MODE_SERVE ? "Serve" : o->mode == LG_MODE_VALIDATE ? "Validate" : "InitOnly");
    lg_strbuf_printf(&cli, ",\"disable_hot_restart\":%s,\"file_flush_interval\":\"%.3fs\"}", o->disable_hot_restart ? "true" : "false",
                     o->file_flush_interval_msec / 1000.0);
    if (b->node != NULL)
        lg_pbjson_encode(&node, &b->node->base, 0);
    else
        lg_strbuf_puts(&node, "{}");
    lg_admin_set_server_info(lg_version_string, "disabled", cli.base, node.base);
    lg_strbuf_free(&cli);
    lg_strbuf_free(&node);
}

/* Envoy's node fields from the command line override the bootstrap's. */
static void apply_node_flags(const lg_options_t *o, Envoy__Config__Bootstrap__V3__Bootstrap *b)
{
    if (o->service_node == NULL && o->service_cluster == NULL && o->service_zone == NULL)
        return;
    if (b->node == NULL) {
        b->node = lg_malloc(sizeof(*b->node));
        envoy__config__core__v3__node__init(b->node);
    }
    if (o->service_node != NULL) {
        if (b->node->id != protobuf_c_empty_string)
            free(b->node->id);
        b->node->id = lg_strdup(o->service_node);
    }
    if (o->service_cluster != NULL) {
        if (b->node->cluster != protobuf_c_empty_string)
            free(b->node->cluster);
        b->node->cluster = lg_strdup(o->service_cluster);
    }
    if (o->service_zone != NULL) {
        if (b->node->locality == NULL) {
            b->node->locality = lg_malloc(sizeof(*b->node->locality));
            envoy__config__core__v3__locality__init(b->node->locality);
        }
        if (b->node->locality->zone != protobuf_c_empty_string)
            free(b->node->locality->zone);
        b->node->locality->zone = lg_strdup(o->service_zone);
    }
}

static void wait_for_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGHUP);
    uint64_t drain_deadline = 0;
    for (;;) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGUSR1) {
            lg_log_reopen();
        } else if ((sig == SIGTERM || sig == SIGINT) && drain_deadline == 0) {
            LG_INFO(main, "caught %s: draining for up to %us", sig == SIGTERM ? "SIGTERM" : "SIGINT", srv.opts.drain_time_s);
            lg_stats_server_set_state(LG_SERVER_DRAINING);
            for (size_t k = 0; k != srv.n_workers; ++k)
                post(srv.workers + k, MSG_DRAIN, NULL);
            drain_deadline = lg_now_ms() + (uint64_t)srv.opts.drain_time_s * 1000;
        } else if (sig == SIGTERM || sig == SIGINT) {
            LG_INFO(main, "caught a second signal: exiting now");
            return;
        }
        if (srv.quit) {
            LG_INFO(main, "shutting down: /quitquitquit");
            return;
        }
        if (drain_deadline != 0 && (total_connections() == 0 || lg_now_ms() >= drain_deadline))
            return;
    }
}

int lg_server_run(const lg_options_t *o)
{
    lg_error_t err = {{0}};
    srv.opts = *o;
    signal(SIGPIPE, SIG_IGN);
    srv.n_workers = o->concurrency;
    srv.start_wall_us = lg_wall_us();
    lg_log_levels[0] = o->log_level;
    for (size_t c = 0; c != LG_LOGC__COUNT; ++c)
        lg_log_levels[c] = o->log_level;
    if (o->component_log_level != NULL && apply_component_levels(o->component_log_level, &err) != 0)
        goto fail_early;
    if (lg_log_configure(o->log_format, o->log_path, &err) != 0)
        goto fail_early;
    lg_stats_init(srv.n_workers);

    ProtobufCMessage *bootstrap = load_bootstrap(o, &err);
    if (bootstrap == NULL)
        goto fail_config;
    apply_node_flags(o, (Envoy__Config__Bootstrap__V3__Bootstrap *)bootstrap);
    lg_snapshot_t *snap = lg_snapshot_compile_bootstrap(bootstrap, o, &err);
    if (snap == NULL) {
        protobuf_c_message_free_unpacked(bootstrap, NULL);
        goto fail_config;
    }
    if (o->mode == LG_MODE_VALIDATE) {
        printf("configuration '%s' OK\n", o->config_path != NULL ? o->config_path : "(--config-yaml)");
        lg_snapshot_unref(snap);
        lg_stats_shutdown();
        return 0;
    }
    srv.server_stats = lg_stats_server;
    srv.listener_manager_stats = lg_stats_listener_manager;
    srv.cluster_manager_stats = lg_stats_cluster_manager;
    lg_stats_gauge_set(srv.server_stats, LG_SERVER_STAT_concurrency, srv.n_workers);
    lg_stats_server_set_state(LG_SERVER_PRE_INITIALIZING);
    server_info_json(o, (Envoy__Config__Bootstrap__V3__Bootstrap *)bootstrap);
    srv.snapshot = snap;
    register_admin();
    if (start_admin((Envoy__Config__Bootstrap__V3__Bootstrap *)bootstrap, &err) != 0)
        goto fail_running;

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    lg_stats_server_set_state(LG_SERVER_INITIALIZING);
    if (start_workers(snap, &err) != 0)
        goto fail_running;
    for (size_t i = 0; i != snap->n_listeners; ++i) {
        lg_stats_control_add(srv.listener_manager_stats, LG_LISTENER_MANAGER_STAT_listener_added, 1);
        lg_stats_control_add(srv.listener_manager_stats, LG_LISTENER_MANAGER_STAT_listener_create_success, srv.n_workers);
    }
    lg_stats_gauge_set(srv.listener_manager_stats, LG_LISTENER_MANAGER_STAT_total_listeners_active, snap->n_listeners);
    lg_stats_gauge_set(srv.cluster_manager_stats, LG_CLUSTER_MANAGER_STAT_active_clusters, snap->n_clusters);
    lg_stats_control_add(srv.cluster_manager_stats, LG_CLUSTER_MANAGER_STAT_cluster_added, (int64_t)snap->n_clusters);
    lg_stats_gauge_set(srv.listener_manager_stats, LG_LISTENER_MANAGER_STAT_workers_started, 1);
    lg_stats_server_set_state(LG_SERVER_LIVE);
    LG_INFO(main, "all dependencies initialized. starting workers");

    wait_for_signals();

    lg_stats_server_set_state(LG_SERVER_DRAINING);
    stop_workers();
    lg_admin_stop();
    pthread_mutex_lock(&srv.snapshot_mutex);
    lg_snapshot_unref(srv.snapshot);
    srv.snapshot = NULL;
    pthread_mutex_unlock(&srv.snapshot_mutex);
    lg_stats_shutdown();
    LG_INFO(main, "exiting");
    return 0;

fail_running:
    LG_CRITICAL(main, "error initializing configuration '%s': %s", o->config_path ? o->config_path : "", err.msg);
    fprintf(stderr, "error initializing configuration '%s': %s\n", o->config_path ? o->config_path : "", err.msg);
    lg_admin_stop();
    _exit(1);
fail_config:
    fprintf(stderr, "error initializing configuration '%s': %s\n", o->config_path ? o->config_path : "", err.msg);
    lg_stats_shutdown();
    return 1;
fail_early:
    fprintf(stderr, "%s\n", err.msg);
    return 1;
}
