// RE2 behind a C interface (include/legate/regex.h).
#include <cstring>
#include <string>
#include <re2/re2.h>
extern "C" {
#include "legate/common.h" /* C declarations (lg_error) without extern "C" of their own */
}
#include "legate/regex.h"

struct st_lg_regex_t {
    re2::RE2 re;
    explicit st_lg_regex_t(const re2::StringPiece &p) : re(p, re2::RE2::Quiet)
    {
    }
};

extern "C" lg_regex_t *lg_regex_compile(const char *pattern, size_t len, const uint32_t *max_program_size, lg_error_t *err)
{
    lg_regex_t *r = new st_lg_regex_t(re2::StringPiece(pattern, len));
    if (!r->re.ok()) {
        lg_error(err, "invalid regex '%.*s': %s", (int)len, pattern, r->re.error().c_str());
        delete r;
        return NULL;
    }
    uint32_t size = (uint32_t)r->re.ProgramSize();
    if (max_program_size == NULL && size > LG_REGEX_DEFAULT_MAX_PROGRAM_SIZE) {
        lg_error(err,
                 "regex '%.*s' RE2 program size of %u > max program size of %u set for the error level threshold. Increase "
                 "configured max program size if necessary.",
                 (int)len, pattern, size, (unsigned)LG_REGEX_DEFAULT_MAX_PROGRAM_SIZE);
        delete r;
        return NULL;
    }
    if (max_program_size != NULL && size > *max_program_size) {
        lg_error(err,
                 "regex '%.*s' RE2 program size of %u > max program size of %u. Increase configured max program size if necessary.",
                 (int)len, pattern, size, *max_program_size);
        delete r;
        return NULL;
    }
    return r;
}

extern "C" void lg_regex_free(lg_regex_t *re)
{
    delete re;
}

extern "C" const char *lg_regex_pattern(const lg_regex_t *re)
{
    return re->re.pattern().c_str();
}

extern "C" int lg_regex_groups(const lg_regex_t *re)
{
    return re->re.NumberOfCapturingGroups();
}

extern "C" int lg_regex_full_match(const lg_regex_t *re, const char *s, size_t len)
{
    return re2::RE2::FullMatch(re2::StringPiece(s, len), re->re);
}

extern "C" int lg_regex_partial_match(const lg_regex_t *re, const char *s, size_t len)
{
    return re2::RE2::PartialMatch(re2::StringPiece(s, len), re->re);
}

extern "C" h2o_iovec_t lg_regex_replace_all(const lg_regex_t *re, const char *s, size_t len, const char *rewrite,
                                            size_t rewrite_len, h2o_mem_pool_t *pool)
{
    std::string out(s, len);
    re2::RE2::GlobalReplace(&out, re->re, re2::StringPiece(rewrite, rewrite_len));
    char *p = static_cast<char *>(h2o_mem_alloc_pool(pool, out.size() + 1));
    memcpy(p, out.data(), out.size());
    p[out.size()] = '\0';
    return h2o_iovec_init(p, out.size());
}

extern "C" int lg_regex_check_rewrite(const lg_regex_t *re, const char *rewrite, size_t rewrite_len, lg_error_t *err)
{
    std::string msg;
    if (re->re.CheckRewriteString(re2::StringPiece(rewrite, rewrite_len), &msg))
        return 0;
    return lg_error(err, "%s", msg.c_str());
}
