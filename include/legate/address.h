/*
 * Socket addresses from envoy.config.core.v3.Address (socket_address with an
 * IPv4/IPv6 literal and port_value, or pipe) and their printed forms as
 * Envoy prints them ("127.0.0.1:80", "[::1]:80", "/path/to/socket").
 */
#ifndef LEGATE_ADDRESS_H
#define LEGATE_ADDRESS_H

#include <sys/socket.h>
#include "legate/common.h"
#include "envoy/config/core/v3/address.pb-c.h"
#include "legate/listener-t.h"

/* Fills ss/len from the proto. Names that are not IP literals are an error
 * (DNS is for cluster types that resolve). Errors are relative to the Address
 * ("socket_address.address: ..."). */
int lg_address_from_proto(const Envoy__Config__Core__V3__Address *a, struct sockaddr_storage *ss, socklen_t *len, lg_error_t *err);
/* Envoy's printed form into buf; returns the length. */
size_t lg_address_format(const struct sockaddr *sa, socklen_t len, char *buf, size_t cap);
/* Same, without the port. */
size_t lg_address_format_ip(const struct sockaddr *sa, char *buf, size_t cap);
/* The port, 0 for a pipe. */
uint16_t lg_address_port(const struct sockaddr *sa);
/* A CidrRange as Envoy reads it (an unset prefix_len is 0); errors as in lg_address_from_proto. */
int lg_cidr_parse(const Envoy__Config__Core__V3__CidrRange *r, lg_cidr_t *out, lg_error_t *err);
/* True if the address's IP lies in the range. */
int lg_cidr_contains(const lg_cidr_t *c, const struct sockaddr *sa);
/* True for loopback addresses (and pipes). */
int lg_address_is_loopback(const struct sockaddr *sa);

#endif
