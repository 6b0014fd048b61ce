#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>
#include "legate/address.h"
#include "legate/protobuf.h"

static int parse_ip(const char *s, uint16_t port, int ipv4_compat, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    memset(ss, 0, sizeof(*ss));
    if (inet_pton(AF_INET, s, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons(port);
        *len = sizeof(*sin);
        return 0;
    }
    if (inet_pton(AF_INET6, s, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons(port);
        *len = sizeof(*sin6);
        return 0;
    }
    return -1;
}

int lg_address_from_proto(const Envoy__Config__Core__V3__Address *a, struct sockaddr_storage *ss, socklen_t *len, lg_error_t *err)
{
    if (a == NULL)
        return lg_error(err, "missing address");
    switch (a->address_case) {
    case ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_SOCKET_ADDRESS: {
        const Envoy__Config__Core__V3__SocketAddress *s = a->socket_address;
        if (s->protocol != ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PROTOCOL__TCP)
            return lg_error(err, "socket_address.protocol: only TCP is supported");
        if (s->port_specifier_case == ENVOY__CONFIG__CORE__V3__SOCKET_ADDRESS__PORT_SPECIFIER_NAMED_PORT)
            return lg_error(err, "socket_address.named_port: named ports are not supported");
        if (s->port_value > 65535)
            return lg_error(err, "socket_address.port_value: invalid port %u", s->port_value);
        if (s->resolver_name != NULL && s->resolver_name[0] != '\0')
            return lg_error(err, "socket_address.resolver_name: custom resolvers are not supported");
        if (parse_ip(s->address, (uint16_t)s->port_value, s->ipv4_compat, ss, len) != 0)
            return lg_error(err, "socket_address.address: malformed IP address: %s", s->address);
        return 0;
    }
    case ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_PIPE: {
        struct sockaddr_un *sun = (struct sockaddr_un *)ss;
        const char *path = a->pipe->path;
        size_t n = strlen(path);
        if (n == 0)
            return lg_error(err, "pipe.path: must not be empty");
        if (n >= sizeof(sun->sun_path))
            return lg_error(err, "pipe.path: path \"%s\" exceeds maximal length %zu", path, sizeof(sun->sun_path) - 1);
        memset(ss, 0, sizeof(*ss));
        sun->sun_family = AF_UNIX;
        memcpy(sun->sun_path, path, n);
        /* "@name" is an abstract socket, as in Envoy */
        if (path[0] == '@')
            sun->sun_path[0] = '\0';
        *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '@' ? 0 : 1));
        return 0;
    }
    case ENVOY__CONFIG__CORE__V3__ADDRESS__ADDRESS_ENVOY_INTERNAL_ADDRESS:
        return lg_error(err, "envoy_internal_address: internal addresses are not supported");
    default:
        return lg_error(err, "address: one of socket_address or pipe must be set");
    }
}

size_t lg_address_format_ip(const struct sockaddr *sa, char *buf, size_t cap)
{
    switch (sa->sa_family) {
    case AF_INET:
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)cap);
        break;
    case AF_INET6:
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, (socklen_t)cap);
        break;
    case AF_UNIX: {
        const struct sockaddr_un *sun = (const struct sockaddr_un *)sa;
        snprintf(buf, cap, "%s%s", sun->sun_path[0] == '\0' ? "@" : "", sun->sun_path + (sun->sun_path[0] == '\0'));
        break;
    }
    default:
        snprintf(buf, cap, "-");
    }
    return strlen(buf);
}

size_t lg_address_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t cap)
{
    char ip[INET6_ADDRSTRLEN + 8];
    lg_address_format_ip(sa, ip, sizeof(ip));
    switch (sa->sa_family) {
    case AF_INET:
        snprintf(buf, cap, "%s:%u", ip, lg_address_port(sa));
        break;
    case AF_INET6:
        snprintf(buf, cap, "[%s]:%u", ip, lg_address_port(sa));
        break;
    default:
        snprintf(buf, cap, "%s", ip);
    }
    return strlen(buf);
}

uint16_t lg_address_port(const struct sockaddr *sa)
{
    switch (sa->sa_family) {
    case AF_INET:
        return ntohs(((const struct sockaddr_in *)sa)->sin_port);
    case AF_INET6:
        return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    default:
        return 0;
    }
}

int lg_cidr_parse(const Envoy__Config__Core__V3__CidrRange *r, lg_cidr_t *out, lg_error_t *err)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(out, 0, sizeof(*out));
    if (parse_ip(r->address_prefix, 0, 0, &ss, &sl) != 0)
        return lg_error(err, "address_prefix: malformed IP address: %s", r->address_prefix);
    unsigned len = LG_WRAPPED(r->prefix_len, 0), max = ss.ss_family == AF_INET ? 32 : 128;
    if (len > 128)
        return lg_error(err, "prefix_len: value must be less than or equal to 128");
    out->family = ss.ss_family;
    if (ss.ss_family == AF_INET)
        memcpy(out->addr, &((struct sockaddr_in *)&ss)->sin_addr, 4);
    else
        memcpy(out->addr, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
    /* Envoy's CidrRange: an unset length is 0, a longer one than the family's is the whole
     * address, and the bits past the length are cleared (10.1.2.3/8 is 10.0.0.0/8). */
    out->prefix_len = len < max ? len : max;
    for (unsigned bit = out->prefix_len; bit != max; ++bit)
        out->addr[bit / 8] &= (uint8_t) ~(0x80u >> bit % 8);
    return 0;
}

int lg_cidr_contains(const lg_cidr_t *c, const struct sockaddr *sa)
{
    const uint8_t *ip;
    if (sa->sa_family != c->family)
        return 0;
    ip = sa->sa_family == AF_INET ? (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr
                                  : (const uint8_t *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
    unsigned full = c->prefix_len / 8, rest = c->prefix_len % 8;
    if (memcmp(ip, c->addr, full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (ip[full] & mask) == (c->addr[full] & mask);
}

int lg_address_is_loopback(const struct sockaddr *sa)
{
    switch (sa->sa_family) {
    case AF_INET:
        return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
    case AF_INET6:
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)sa)->sin6_addr);
    default:
        return 1;
    }
}
