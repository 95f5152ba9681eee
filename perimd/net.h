/*
 * net.h - socket addresses and listening sockets.
 */
#ifndef PERIMD_NET_H
#define PERIMD_NET_H

#include <stddef.h>
#include <sys/socket.h>

/* net_parse_addr - "1.2.3.4:25", "[::1]:25", "[1.2.3.4]:25", "*:25",
 * "[addr]" or "addr" (port = default_port; -1 = port required). Numeric
 * only. Returns 0, or -1 with *why set. */
int net_parse_addr(const char *s, int default_port, struct sockaddr_storage *ss, socklen_t *len,
		   const char **why);
/* net_parse_unix - an absolute socket path (the part after "unix:") as
 * a socket address; 0, or -1 with why. */
int net_parse_unix(const char *path, struct sockaddr_storage *ss, socklen_t *len, const char **why);

/* net_parse_port - a TCP port: decimal digits only, no sign, space or
 * leading zero, 1..65535 ("25"; not "025", "+25", "0", "65536"). The one
 * rule of every port perimd reads: listen and backend addresses, relay
 * targets, the PROXY header. Returns the port, or -1. */
int net_parse_port(const char *s);

/* net_listen - a non-blocking listening socket with SO_REUSEADDR and
 * SO_REUSEPORT (one per io thread on the same address), IPV6_V6ONLY for
 * IPv6. Returns the fd, or -1 with err filled. */
int net_listen(const struct sockaddr *sa, socklen_t len, int backlog, char *err, size_t errlen);

/* net_bind_probe - 0 when sa can be bound without SO_REUSEPORT (the
 * probe socket is closed again), else -1 with err naming the address
 * (EADDRINUSE: someone listens there). Before net_listen() at start. */
int net_bind_probe(const struct sockaddr *sa, socklen_t len, char *err, size_t errlen);

/* net_ntop - address (without port) as text into buf; returns buf. */
const char *net_ntop(const struct sockaddr *sa, char *buf, size_t len);
/* net_port - the port of an AF_INET/AF_INET6 address. */
int net_port(const struct sockaddr *sa);

/* net_addr_match - addr (numeric text) equals pattern, or lies in the
 * pattern's CIDR network ("10.0.0.0/8", "2001:db8::/32"). */
int net_addr_match(const char *addr, const char *pattern);

#endif
