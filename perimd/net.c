/*
 * net.c - address parsing and listening sockets. Numeric addresses only:
 * no resolver is ever called here (host names go through dns.c).
 */
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

/* net_parse_port - see net.h. */
int net_parse_port(const char *s)
{
	int v = 0;
	if (*s < '1' || *s > '9')
		return -1;
	for (int i = 0; s[i]; i++) {
		if (i == 5 || s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v <= 65535 ? v : -1;
}

/* net_parse_addr - numeric address with optional port. */
int net_parse_addr(const char *s, int default_port, struct sockaddr_storage *ss, socklen_t *len,
		   const char **why)
{
	char host[256];
	const char *portstr = NULL;
	size_t hl;

	memset(ss, 0, sizeof *ss);
	if (s[0] == '[') {
		const char *e = strchr(s, ']');
		if (!e) {
			*why = "missing ]";
			return -1;
		}
		hl = (size_t)(e - s - 1);
		if (hl >= sizeof host) {
			*why = "address too long";
			return -1;
		}
		memcpy(host, s + 1, hl);
		host[hl] = 0;
		if (e[1] == ':')
			portstr = e + 2;
		else if (e[1]) {
			*why = "junk after ]";
			return -1;
		}
	} else {
		const char *c = strrchr(s, ':');
		/* More than one colon without brackets: a bare IPv6 address. */
		if (c && strchr(s, ':') == c) {
			hl = (size_t)(c - s);
			portstr = c + 1;
		} else {
			hl = strlen(s);
		}
		if (hl >= sizeof host) {
			*why = "address too long";
			return -1;
		}
		memcpy(host, s, hl);
		host[hl] = 0;
	}
	int port = default_port;
	if (portstr) {
		port = net_parse_port(portstr);
		if (port < 0) {
			*why = "bad port";
			return -1;
		}
	}
	if (port < 0) {
		*why = "port missing";
		return -1;
	}
	if (!strncasecmp(host, "IPv6:", 5))
		memmove(host, host + 5, strlen(host + 5) + 1);
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	if (!strcmp(host, "*") || !host[0]) {
		sin->sin_family = AF_INET;
		sin->sin_addr.s_addr = htonl(INADDR_ANY);
		sin->sin_port = htons((uint16_t)port);
		*len = sizeof *sin;
	} else if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		*len = sizeof *sin;
	} else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		*len = sizeof *sin6;
	} else {
		*why = "not a numeric IPv4 or IPv6 address";
		return -1;
	}
	return 0;
}

/* net_listen - bind and listen, shared per port among io threads. */
int net_listen(const struct sockaddr *sa, socklen_t len, int backlog, char *err, size_t errlen)
{
	char a[64];
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
	if (sa->sa_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	if (bind(fd, sa, len) < 0 || listen(fd, backlog) < 0) {
		snprintf(err, errlen, "bind/listen [%s]:%d: %s", net_ntop(sa, a, sizeof a), net_port(sa),
			 strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

/* net_bind_probe - is the address free for us alone? A socket without
 * SO_REUSEPORT cannot bind where another process listens with it, so a
 * second daemon is refused here instead of sharing the first one's
 * clients through SO_REUSEPORT. SO_REUSEADDR stays: connections of a
 * stopped predecessor in TIME_WAIT do not block a restart. */
int net_bind_probe(const struct sockaddr *sa, socklen_t len, char *err, size_t errlen)
{
	char a[64];
	int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (sa->sa_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
	if (bind(fd, sa, len) < 0) {
		int e = errno;
		snprintf(err, errlen, "[%s]:%d: %s%s", net_ntop(sa, a, sizeof a), net_port(sa), strerror(e),
			 e == EADDRINUSE ? " (another perimd, or another server, listens there)" : "");
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/* net_ntop - address text. */
const char *net_ntop(const struct sockaddr *sa, char *buf, size_t len)
{
	if (sa->sa_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, buf, (socklen_t)len);
	else if (sa->sa_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, buf, (socklen_t)len);
	else
		snprintf(buf, len, "unknown");
	return buf;
}

/* net_port - port number. */
int net_port(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)sa)->sin_port);
	if (sa->sa_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
	return 0;
}

/* net_addr_match - exact address or CIDR membership. */
int net_addr_match(const char *addr, const char *pattern)
{
	unsigned char a[16], p[16];
	char pat[64];
	int af = strchr(addr, ':') ? AF_INET6 : AF_INET;
	int alen = af == AF_INET ? 4 : 16;
	if (inet_pton(af, addr, a) != 1)
		return 0;
	snprintf(pat, sizeof pat, "%s", pattern);
	char *slash = strchr(pat, '/');
	int bits = alen * 8;
	if (slash) {
		/* Digits only: strtol() alone would take "10.0.0.0/" (or "/ 8",
		 * "/+8") as /0, a pattern that matches every address. */
		const char *q = slash + 1;
		int b = 0;
		*slash = 0;
		if (*q == 0 || strspn(q, "0123456789") != strlen(q) || strlen(q) > 3)
			return 0;
		for (; *q; q++)
			b = b * 10 + (*q - '0');
		if (b > bits)
			return 0;
		bits = b;
	}
	if (inet_pton(af, pat, p) != 1)
		return 0;
	int full = bits / 8, rest = bits % 8;
	if (memcmp(a, p, (size_t)full))
		return 0;
	if (rest) {
		unsigned char mask = (unsigned char)(0xff << (8 - rest));
		if ((a[full] & mask) != (p[full] & mask))
			return 0;
	}
	return 1;
}

/* net_parse_unix - see net.h. */
int net_parse_unix(const char *path, struct sockaddr_storage *ss, socklen_t *len, const char **why)
{
	struct sockaddr_un *su = (struct sockaddr_un *)ss;
	if (path[0] != '/') {
		*why = "unix: needs an absolute path (unix:/run/perimd/policy)";
		return -1;
	}
	if (strlen(path) >= sizeof su->sun_path) {
		*why = "socket path too long";
		return -1;
	}
	memset(ss, 0, sizeof *ss);
	su->sun_family = AF_UNIX;
	memcpy(su->sun_path, path, strlen(path) + 1);
	*len = (socklen_t)sizeof *su;
	return 0;
}
