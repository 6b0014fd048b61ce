/*
 * The command line, with Envoy's flags and defaults (TCLAP-style: `--flag
 * value` and `--flag=value`; an unknown flag is an error).
 */
#ifndef LEGATE_OPTIONS_H
#define LEGATE_OPTIONS_H

#include <stdint.h>
#include "legate/common.h"

typedef enum en_lg_mode_t { LG_MODE_SERVE, LG_MODE_VALIDATE, LG_MODE_INIT_ONLY } lg_mode_t;

/* How the control thread yields the CPU to the workers (see server.c, yield_to_workers). */
typedef enum en_lg_control_priority_t {
    LG_CONTROL_PRIORITY_NICE,   /* nice +10 (the default) */
    LG_CONTROL_PRIORITY_IDLE,   /* SCHED_IDLE */
    LG_CONTROL_PRIORITY_NORMAL, /* as the workers, like Envoy's main thread */
} lg_control_priority_t;

typedef struct st_lg_options_t {
    const char *config_path;
    const char *config_yaml;
    lg_mode_t mode;
    unsigned concurrency;
    lg_log_level_t log_level;
    const char *component_log_level;
    const char *log_format;
    const char *log_path;
    const char *service_node;
    const char *service_cluster;
    const char *service_zone;
    unsigned drain_time_s;
    unsigned parent_shutdown_time_s;
    int drain_strategy_immediate;
    int local_address_ip_version; /* 4 or 6 */
    uint64_t base_id;
    int disable_hot_restart;
    int allow_unknown_static_fields;
    int reject_unknown_dynamic_fields;
    int ignore_unknown_dynamic_fields;
    unsigned file_flush_interval_msec;
    const char *admin_address_path;
    unsigned restart_epoch;
    lg_control_priority_t control_thread_priority; /* --control-thread-priority (Legate's own flag) */
    int argc;
    char **argv;
} lg_options_t;

/* Parses argv. Returns 0 to run, 1 when the process should exit 0 after
 * printing (--version, --help), -1 on a bad command line (err set). */
int lg_options_parse(lg_options_t *o, int argc, char **argv, lg_error_t *err);
void lg_options_usage(FILE *fp);
extern const char lg_version_string[];

#endif
