/*
 * test_stats.c - the HTTP request parser (whole and byte by byte), counters
 * summed over threads, the exposition format's shape, histograms, the
 * per-minute history (sampling, text round trip, bad files) and the SVGs.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graph.h"
#include "history.h"
#include "http.h"
#include "stats.h"
#include "t.h"

/* parse_trickle - feed a request one byte more at a time: AGAIN until the
 * last byte, then the same verdict as whole. */
static enum parse_result parse_trickle(const char *req, struct http_req *rq, size_t *used)
{
	size_t n = strlen(req);
	for (size_t i = 1; i < n; i++) {
		enum parse_result r = http_request_parse(req, i, rq, used);
		if (r != PARSE_AGAIN)
			return r == PARSE_OK ? PARSE_BAD /* too early */ : r;
	}
	return http_request_parse(req, n, rq, used);
}

/* test_http_good - valid heads, whole and trickled. */
TEST(test_http_good)
{
	static const char *good[] = {
		"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
		"GET / HTTP/1.0\r\n\r\n",
		"GET /healthz?probe=1 HTTP/1.1\nHost: lb\n\n",
		"HEAD /metrics HTTP/1.1\r\nContent-Length: 0\r\nX-Empty:\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		struct http_req rq;
		size_t used = 0;
		CHECK_INT(http_request_parse(good[i], strlen(good[i]), &rq, &used), PARSE_OK);
		CHECK_INT(used, strlen(good[i]));
		CHECK_INT(parse_trickle(good[i], &rq, &used), PARSE_OK);
	}
	struct http_req rq;
	size_t used;
	const char *r = "GET /healthz?probe=1 HTTP/1.0\r\n\r\n";
	CHECK_INT(http_request_parse(r, strlen(r), &rq, &used), PARSE_OK);
	CHECK_STR(rq.method, "GET");
	CHECK_STR(rq.path, "/healthz");
	CHECK_INT(rq.minor, 0);
}

/* test_http_bad - malformed heads are PARSE_BAD, whole and trickled. */
TEST(test_http_bad)
{
	static const char *bad[] = {
		"GARBAGE\r\n\r\n", "GET / HTTP/2.0\r\n\r\n", "GET  / HTTP/1.1\r\n\r\n",
		"GET metrics HTTP/1.1\r\n\r\n", "GET / HTTP/1.1 \r\n\r\n", " GET / HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\n folded\r\n\r\n", "GET / HTTP/1.1\r\nNo colon\r\n\r\n",
		"GET / HTTP/1.1\r\n: empty name\r\n\r\n", "GET / HTTP/1.1\r\nX: a\x01\r\n\r\n",
		"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
		"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "GET /\xff HTTP/1.1\r\n\r\n",
		"GET\r\n\r\n", "\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct http_req rq;
		size_t used;
		CHECK_INT(http_request_parse(bad[i], strlen(bad[i]), &rq, &used), PARSE_BAD);
		CHECK_INT(parse_trickle(bad[i], &rq, &used), PARSE_BAD);
	}
	/* NUL inside a header value. */
	const char nul[] = "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n";
	struct http_req rq;
	size_t used;
	CHECK_INT(http_request_parse(nul, sizeof nul - 1, &rq, &used), PARSE_BAD);
}

/* test_http_too_long - no end within HTTP_REQ_MAX bytes. */
TEST(test_http_too_long)
{
	size_t n = HTTP_REQ_MAX + 100;
	char *b = malloc(n);
	memcpy(b, "GET / HTTP/1.1\r\nX: ", 19);
	memset(b + 19, 'a', n - 19);
	struct http_req rq;
	size_t used;
	CHECK_INT(http_request_parse(b, n, &rq, &used), PARSE_TOO_LONG);
	CHECK_INT(http_request_parse(b, 100, &rq, &used), PARSE_AGAIN);
	memset(b, 'a', n);
	CHECK_INT(http_request_parse(b, n, &rq, &used), PARSE_TOO_LONG);
	free(b);
}

static void *count_thread(void *arg)
{
	(void)arg;
	for (int i = 0; i < 100000; i++)
		stats_inc(ST_msg_received);
	stats_add(ST_inflight, 3);
	stats_add(ST_inflight, -1);
	stats_observe(SH_latency, 7);
	return NULL;
}

/* test_counters_threads - counts from many threads add up exactly. */
TEST(test_counters_threads)
{
	int64_t before = stats_value(ST_msg_received), inf = stats_value(ST_inflight);
	pthread_t t[4];
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, count_thread, NULL);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	CHECK_INT(stats_value(ST_msg_received) - before, 400000);
	CHECK_INT(stats_value(ST_inflight) - inf, 8);
}

/* test_render - HELP/TYPE once per name, histogram shape, labels escaped. */
TEST(test_render)
{
	stats_observe(SH_backend, 3);
	stats_observe(SH_backend, 3000000);
	stats_family_add("perimd_test_total", "name", "a\"b\\c\nd", 2);
	stats_family_set("perimd_backend_up", "backend", "127.0.0.1:25", 1);
	struct strbuf out = {0};
	stats_render_metrics(&out);
	CHECK(strstr(out.p, "# TYPE perimd_messages_rejected_total counter\n") != NULL);
	const char *first = strstr(out.p, "# HELP perimd_messages_rejected_total");
	CHECK(first && !strstr(first + 1, "# HELP perimd_messages_rejected_total"));
	CHECK(strstr(out.p, "perimd_backend_transaction_seconds_bucket{le=\"0.005\"} 1\n") != NULL);
	CHECK(strstr(out.p, "perimd_backend_transaction_seconds_bucket{le=\"300\"} 1\n") != NULL);
	CHECK(strstr(out.p, "perimd_backend_transaction_seconds_bucket{le=\"+Inf\"} 2\n") != NULL);
	CHECK(strstr(out.p, "perimd_backend_transaction_seconds_count 2\n") != NULL);
	CHECK(strstr(out.p, "perimd_backend_transaction_seconds_sum 3000.003\n") != NULL);
	CHECK(strstr(out.p, "perimd_test_total{name=\"a\\\"b\\\\c\\nd\"} 2\n") != NULL);
	CHECK(strstr(out.p, "# TYPE perimd_backend_up gauge\nperimd_backend_up{backend=\"127.0.0.1:25\"} 1\n") != NULL);
	sb_free(&out);
}

/* test_history - sums per minute, maxima for gauges, text round trip. */
TEST(test_history)
{
	struct history *h = calloc(1, sizeof *h);
	double last[HS__COUNT] = {0}, cur[HS__COUNT] = {0};
	uint64_t m = 29000000;
	cur[HS_RECEIVED] = 5, cur[HS_SESSIONS] = 7;
	history_sample(h, m, cur, last);
	cur[HS_RECEIVED] = 8, cur[HS_SESSIONS] = 2;
	history_sample(h, m, cur, last);
	cur[HS_RECEIVED] = 9;
	history_sample(h, m + 1, cur, last);
	size_t s = m % HIST_MINUTES;
	CHECK(h->v[s][HS_RECEIVED] == 8 && h->v[s][HS_SESSIONS] == 7);
	CHECK(h->v[(m + 1) % HIST_MINUTES][HS_RECEIVED] == 1);
	/* A restart: counters start again from 0 (the delta is the value). */
	double last2[HS__COUNT] = {0};
	cur[HS_RECEIVED] = 4;
	history_sample(h, m + 1, cur, last2);
	CHECK(h->v[(m + 1) % HIST_MINUTES][HS_RECEIVED] == 5);

	struct strbuf text = {0};
	history_serialize(h, &text);
	struct history *h2 = calloc(1, sizeof *h2);
	CHECK_INT(history_parse(h2, text.p, text.len), 0);
	CHECK(memcmp(h->minute, h2->minute, sizeof h->minute) == 0);
	CHECK(memcmp(h->v, h2->v, sizeof h->v) == 0);
	sb_free(&text);

	struct history *h3 = calloc(1, sizeof *h3);
	CHECK_INT(history_parse(h3, "garbage\n", 8), -1);
	const char *mixed = "perimd-history 1\n1 2 3\nx y\n29000000 1 2 3 4 5 6\n5 nan 1 1 1 1 1\n";
	CHECK_INT(history_parse(h3, mixed, strlen(mixed)), 0);
	CHECK(h3->minute[29000000 % HIST_MINUTES] == 29000000);
	CHECK(h3->minute[5] == 0 && h3->minute[1] == 0);
	/* A line with the LDAP series, and one with 7 values (neither form). */
	const char *v2 = "perimd-history 1\n29000001 1 2 3 4 5 6 70 8\n29000002 1 2 3 4 5 6 7\n";
	CHECK_INT(history_parse(h3, v2, strlen(v2)), 0);
	CHECK(h3->v[29000001 % HIST_MINUTES][HS_LDAP_LOOKUPS] == 70);
	CHECK(h3->v[29000001 % HIST_MINUTES][HS_LDAP_CONNS] == 8);
	CHECK(h3->v[29000000 % HIST_MINUTES][HS_LDAP_LOOKUPS] == 0);
	CHECK(h3->minute[29000002 % HIST_MINUTES] == 0);
	/* LDAP lookups are summed per minute, connections are a maximum (a
	 * history of their own: h's coarse rings are checked below). */
	struct history *h5 = calloc(1, sizeof *h5);
	double last5[HS__COUNT] = {0}, cur5[HS__COUNT] = {0};
	cur5[HS_LDAP_LOOKUPS] = 10, cur5[HS_LDAP_CONNS] = 3;
	history_sample(h5, m + 2, cur5, last5);
	cur5[HS_LDAP_LOOKUPS] = 25, cur5[HS_LDAP_CONNS] = 1;
	history_sample(h5, m + 2, cur5, last5);
	CHECK(h5->v[(m + 2) % HIST_MINUTES][HS_LDAP_LOOKUPS] == 25);
	CHECK(h5->v[(m + 2) % HIST_MINUTES][HS_LDAP_CONNS] == 3);

	struct strbuf svg = {0};
	CHECK_INT(graph_svg(&svg, h, m + 1, "messages", "hour"), 0);
	CHECK(strstr(svg.p, "data-series=\"received\"") != NULL);
	/* The last two points of the hour: 8 then 5. */
	char *vals = strstr(svg.p, "data-series=\"received\" data-values=\"");
	CHECK(vals && strstr(vals, " 8 5\"") != NULL);
	CHECK_INT(graph_svg(&svg, h5, m + 2, "ldap", "hour"), 0);
	CHECK(strstr(svg.p, "data-series=\"ldap_lookups\"") != NULL);
	CHECK_INT(graph_svg(&svg, h5, m + 2, "ldapconn", "hour"), 0);
	vals = strstr(svg.p, "data-series=\"ldap_connections\" data-values=\"");
	CHECK(vals && strstr(vals, " 0 3\"") != NULL);
	CHECK_INT(graph_svg(&svg, h, m, "nothing", "hour"), -1);
	CHECK_INT(graph_svg(&svg, h, m, "sessions", "decade"), -1);
	sb_free(&svg);
	/* The coarse rings hold the same minutes: 8 + 5 received, sessions 7. */
	CHECK(history_get(h, HR_2H, m / HIST_2H_MIN, HS_RECEIVED) == 13 ||
	      history_get(h, HR_2H, (m + 1) / HIST_2H_MIN, HS_RECEIVED) +
		      history_get(h, HR_2H, m / HIST_2H_MIN, HS_RECEIVED) ==
		  13);
	CHECK(history_get(h, HR_DAY, m / HIST_DAY_MIN, HS_SESSIONS) == 7);
	CHECK(memcmp(h->p2h, h2->p2h, sizeof h->p2h) == 0 && memcmp(h->vday, h2->vday, sizeof h->vday) == 0);
	/* A year later the day ring still has it; the minute ring does not. */
	CHECK_INT(graph_svg(&svg, h, m + 300 * 1440, "messages", "year"), 0);
	vals = strstr(svg.p, "data-series=\"received\" data-values=\"");
	CHECK(vals && strstr(vals, " 0.00902778") != NULL); /* 13 a day: 13 / 1440 per minute */
	sb_free(&svg);
	CHECK_INT(graph_svg(&svg, h, m + 20 * 1440, "messages", "month"), 0);
	vals = strstr(svg.p, "data-series=\"received\" data-values=\"");
	CHECK(vals && strstr(vals, " 0.108333") != NULL); /* 13 in 2 hours */
	sb_free(&svg);
	/* A version 1 file (minutes only) fills the coarse rings too. */
	struct history *h4 = calloc(1, sizeof *h4);
	const char *v1 = "perimd-history 1\n29000000 3 0 1 0 4 0\n29000001 2 0 0 0 9 1\n";
	CHECK_INT(history_parse(h4, v1, strlen(v1)), 0);
	CHECK(history_get(h4, HR_MINUTE, 29000001, HS_RECEIVED) == 2);
	CHECK(history_get(h4, HR_2H, 29000000 / HIST_2H_MIN, HS_RECEIVED) == 5);
	CHECK(history_get(h4, HR_DAY, 29000000 / HIST_DAY_MIN, HS_SESSIONS) == 9);
	free(h4);
	free(h5);
	free(h);
	free(h2);
	free(h3);
}

/* test_escape_label - backslash, quote and newline escaped, the rest as is. */
TEST(test_escape_label)
{
	struct strbuf b = { 0 };
	stats_escape_label(&b, "Eicar-Test\\x\"y\nz");
	CHECK_STR(b.p, "Eicar-Test\\\\x\\\"y\\nz");
	sb_free(&b);
	stats_escape_label(&b, "");
	CHECK_INT(b.len, 0);
	sb_free(&b);
}

/* test_http_response - status line, headers, body; HEAD without body. */
TEST(test_http_response)
{
	struct strbuf b = { 0 };
	http_response(&b, 503, "text/plain", "starting\n", 9, 0);
	CHECK_STR(b.p,
		  "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n"
		  "Cache-Control: no-store\r\nConnection: close\r\n\r\nstarting\n");
	sb_free(&b);
	http_response(&b, 405, "text/plain", "x\n", 2, 1);
	CHECK(strstr(b.p, "HTTP/1.1 405 Method Not Allowed\r\n") == b.p);
	CHECK(strstr(b.p, "Allow: GET, HEAD\r\n") != NULL);
	CHECK(strstr(b.p, "Content-Length: 2\r\n") != NULL);
	CHECK_INT(b.p[b.len - 1], '\n');
	CHECK(strstr(b.p, "\r\n\r\n") == b.p + b.len - 4);
	sb_free(&b);
}

int main(void)
{
	RUN(test_escape_label);
	RUN(test_http_response);
	RUN(test_http_good);
	RUN(test_http_bad);
	RUN(test_http_too_long);
	RUN(test_counters_threads);
	RUN(test_render);
	RUN(test_history);
	return t_done();
}
