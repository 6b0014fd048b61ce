/* Runtime layering (src/core/runtime.c): value parsing, layer order, the
 * admin and RTDS layers, featureEnabled, the /runtime JSON. */
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include "test.h"
#include "legate/pbjson.h"
#include "legate/runtime.h"
#include "legate/stats.h"
#include "google/protobuf/struct.pb-c.h"

static Envoy__Config__Bootstrap__V3__LayeredRuntime *load(const char *yaml)
{
    lg_error_t err = {{0}};
    ProtobufCMessage *m = lg_pbjson_load_file(&envoy__config__bootstrap__v3__layered_runtime__descriptor, NULL, yaml, 0, &err);
    ok(m != NULL, "yaml: %s", err.msg);
    return (void *)m;
}

static Google__Protobuf__Struct *layer_struct(const char *yaml)
{
    lg_error_t err = {{0}};
    ProtobufCMessage *m = lg_pbjson_load_file(&google__protobuf__struct__descriptor, NULL, yaml, 0, &err);
    ok(m != NULL, "yaml: %s", err.msg);
    return (void *)m;
}

static const char *raw(const lg_runtime_t *rt, const char *key)
{
    const lg_runtime_value_t *v = lg_runtime_get(rt, key);
    return v != NULL ? v->raw : NULL;
}

static void test_layers(const char *dir)
{
    char yaml[1024];
    snprintf(yaml, sizeof(yaml),
             "layers:\n"
             "- name: base\n"
             "  static_layer: {a: 1, s: hello, nested: {b: {c: 'true'}}, f: {numerator: 5, denominator: TEN_THOUSAND}, "
             "half: 50, neg: -3}\n"
             "- name: disk\n"
             "  disk_layer: {symlink_root: %s, subdirectory: envoy}\n"
             "- name: missing\n"
             "  disk_layer: {symlink_root: %s, subdirectory: nope}\n"
             "- name: rtds\n"
             "  rtds_layer: {name: my-rtds, rtds_config: {ads: {}}}\n"
             "- name: admin\n"
             "  admin_layer: {}\n",
             dir, dir);
    Envoy__Config__Bootstrap__V3__LayeredRuntime *lr = load(yaml);
    lg_error_t err = {{0}};
    uint64_t g0 = lg_runtime_loader_generation();
    ok(lg_runtime_init(lr, "svc", &err) == 0, "init: %s", err.msg);
    ok(lg_runtime_loader_generation() > g0, "init loads a snapshot");
    lg_runtime_t *rt = lg_runtime_loader_snapshot();
    ok(rt != NULL && rt->n_layers == 5, "five layers");
    ok_str(raw(rt, "a"), "1");
    ok(lg_runtime_get(rt, "a")->has_uint && lg_runtime_get(rt, "a")->uint_value == 1, "a number is a uint");
    ok_str(raw(rt, "nested.b.c"), "true");
    ok(lg_runtime_get(rt, "nested.b.c")->has_bool && lg_runtime_get(rt, "nested.b.c")->bool_value, "\"true\" is a bool");
    ok(lg_runtime_get(rt, "nested") == NULL, "a nested struct is not a key itself");
    const lg_runtime_value_t *f = lg_runtime_get(rt, "f");
    ok(f != NULL && f->has_fraction && f->numerator == 5 && f->denominator == 10000, "a FractionalPercent struct");
    ok(!lg_runtime_get(rt, "neg")->has_uint && lg_runtime_get(rt, "neg")->has_double, "a negative number is no uint");
    ok_str(raw(rt, "s"), "from-disk");
    ok_str(raw(rt, "deep.key"), "42");
    ok(lg_runtime_get(rt, "commented") != NULL && strcmp(raw(rt, "commented"), "7") == 0, "'#' lines are comments");
    uint64_t v;
    ok(lg_stats_lookup("runtime.override_dir_not_exists", &v) == 0 && v == 1, "the missing disk layer is counted");
    ok(lg_stats_lookup("runtime.num_layers", &v) == 0 && v == 5, "num_layers");

    /* featureEnabled: the key's fraction or percentage, else the default */
    ok(lg_runtime_feature_enabled(rt, "f", 0, 100, 4) && !lg_runtime_feature_enabled(rt, "f", 100, 100, 5), "5/10000");
    ok(lg_runtime_feature_enabled(rt, "half", 0, 100, 49) && !lg_runtime_feature_enabled(rt, "half", 100, 100, 50),
       "an integer is a percentage");
    ok(lg_runtime_feature_enabled(rt, "absent", 1, 100, 100) && !lg_runtime_feature_enabled(rt, "absent", 1, 100, 101),
       "absent: the default");
    ok(lg_runtime_feature_enabled(rt, "s", 1, 100, 0) && !lg_runtime_feature_enabled(rt, "s", 1, 100, 1),
       "a non-numeric value: the default");
    ok(lg_runtime_get_integer(rt, "a", 9) == 1 && lg_runtime_get_integer(rt, "s", 9) == 9, "getInteger");

    /* RTDS overrides the lower layers; a bad layer changes nothing */
    Google__Protobuf__Struct *good = layer_struct("{a: 2, r: x}"), *bad = layer_struct("{a: 3, l: [1]}");
    ok(lg_runtime_apply_rtds("my-rtds", &good->base, &err) == 0, "rtds: %s", err.msg);
    ok(lg_runtime_apply_rtds("my-rtds", &bad->base, &err) != 0 && strstr(err.msg, "Invalid runtime entry value for l") != NULL,
       "bad rtds: %s", err.msg);
    lg_runtime_t *rt2 = lg_runtime_loader_snapshot();
    ok(rt2 != rt && rt2->generation > rt->generation, "a new snapshot");
    ok_str(raw(rt2, "a"), "2");
    ok_str(raw(rt2, "r"), "x");
    ok_str(raw(rt, "a"), "1"); /* the old snapshot is immutable */

    /* the admin layer is last; an empty value removes the override */
    const char *keys[] = {"a", "z"}, *vals[] = {"5", "zz"}, *clear[] = {""};
    ok(lg_runtime_merge_admin(keys, vals, 2, &err) == 0, "admin: %s", err.msg);
    lg_runtime_t *rt3 = lg_runtime_loader_snapshot();
    ok_str(raw(rt3, "a"), "5");
    ok(lg_stats_lookup("runtime.admin_overrides_active", &v) == 0 && v == 2, "admin_overrides_active");
    ok(lg_runtime_merge_admin(keys, clear, 1, &err) == 0, "admin clear");
    lg_runtime_t *rt4 = lg_runtime_loader_snapshot();
    ok_str(raw(rt4, "a"), "2");
    ok_str(raw(rt4, "z"), "zz");

    lg_strbuf_t json = {NULL};
    lg_runtime_dump_json(rt4, &json);
    ok(strstr(json.base, "\"a\":{\"layer_values\":[\"1\",\"\",\"\",\"2\",\"\"],\"final_value\":\"2\"}") != NULL, "dump: %s",
       json.base);
    ok(strstr(json.base, "\"layers\":[\"base\",\"disk\",\"missing\",\"rtds\",\"admin\"]") != NULL, "dump layers");
    lg_strbuf_free(&json);

    /* removal of the RTDS resource empties its layer */
    ok(lg_runtime_apply_rtds("my-rtds", NULL, &err) == 0, "rtds removal");
    lg_runtime_t *rt5 = lg_runtime_loader_snapshot();
    ok_str(raw(rt5, "a"), "1");
    ok(lg_runtime_get(rt5, "r") == NULL, "r gone with its layer");

    lg_runtime_set_thread_override(rt5);
    ok(lg_runtime_current() == rt5, "the thread override");
    lg_runtime_set_thread_override(NULL);

    lg_runtime_release(rt);
    lg_runtime_release(rt2);
    lg_runtime_release(rt3);
    lg_runtime_release(rt4);
    lg_runtime_release(rt5);
    protobuf_c_message_free_unpacked(&good->base, NULL);
    protobuf_c_message_free_unpacked(&bad->base, NULL);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
    lg_runtime_shutdown();
}

static void test_errors(void)
{
    lg_error_t err = {{0}};
    Envoy__Config__Bootstrap__V3__LayeredRuntime *lr = load("layers: [{name: a, admin_layer: {}}, {name: b, admin_layer: {}}]");
    ok(lg_runtime_init(lr, NULL, &err) != 0 && strstr(err.msg, "layered_runtime.layers[1]") != NULL, "two admin layers: %s",
       err.msg);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
    lr = load("layers: [{name: a, static_layer: {x: {y: [1]}}}]");
    ok(lg_runtime_init(lr, NULL, &err) != 0 && strstr(err.msg, "layered_runtime.layers[0].static_layer") != NULL &&
           strstr(err.msg, "x.y") != NULL,
       "a list value: %s", err.msg);
    protobuf_c_message_free_unpacked(&lr->base, NULL);
    lr = load("layers: [{name: a, static_layer: {k: v}}]");
    ok(lg_runtime_init(lr, NULL, &err) == 0, "no admin layer");
    const char *keys[] = {"k"}, *vals[] = {"w"};
    ok(lg_runtime_merge_admin(keys, vals, 1, &err) != 0 && strcmp(err.msg, "No admin layer specified") == 0, "%s", err.msg);
    lg_runtime_shutdown();
    protobuf_c_message_free_unpacked(&lr->base, NULL);
    ok(lg_runtime_init(NULL, NULL, &err) == 0, "no layered_runtime: the null runtime");
    lg_runtime_t *rt = lg_runtime_loader_snapshot();
    ok(rt != NULL && rt->n_layers == 0 && lg_runtime_get(rt, "x") == NULL, "empty");
    lg_runtime_release(rt);
    lg_runtime_shutdown();
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

int main(void)
{
    char dir[] = "/tmp/lg-runtime-XXXXXX", path[256];
    lg_stats_init(1);
    ok(mkdtemp(dir) != NULL, "mkdtemp");
    snprintf(path, sizeof(path), "%s/envoy", dir);
    mkdir(path, 0700);
    snprintf(path, sizeof(path), "%s/envoy/deep", dir);
    mkdir(path, 0700);
    snprintf(path, sizeof(path), "%s/envoy/s", dir);
    write_file(path, "from-disk\n");
    snprintf(path, sizeof(path), "%s/envoy/deep/key", dir);
    write_file(path, "42");
    snprintf(path, sizeof(path), "%s/envoy/commented", dir);
    write_file(path, "# a comment\n7\n");
    test_layers(dir);
    test_errors();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    ok(system(cmd) == 0, "cleanup");
    lg_stats_shutdown();
    return done();
}
