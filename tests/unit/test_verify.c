/*
 * test_verify.c - the recipient verdict cache: case-insensitive keys,
 * expiry, replacement, the size bound, and concurrent use from threads.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "t.h"
#include "verify.h"

/* test_put_get - a stored verdict comes back, whatever the case. */
TEST(test_put_get)
{
	char reply[256];
	int code = 0;

	verify_init(1000);
	CHECK_INT(verify_get("nobody@example.com", &code, reply, sizeof(reply)), 0);
	verify_put("Bad.User@Example.COM", 550, "550 5.1.1 no such user", 60000);
	CHECK_INT(verify_get("bad.user@example.com", &code, reply, sizeof(reply)), 1);
	CHECK_INT(code, 550);
	CHECK_STR(reply, "550 5.1.1 no such user");
	CHECK_INT(verify_get("BAD.USER@EXAMPLE.COM", NULL, NULL, 0), 1);
	CHECK_INT(verify_get("other@example.com", &code, reply, sizeof(reply)), 0);
}

/* test_truncated_reply - a short caller buffer gets a terminated prefix. */
TEST(test_truncated_reply)
{
	char reply[8];
	int code = 0;

	verify_init(1000);
	verify_put("a@b", 550, "550 5.1.1 long text here", 60000);
	CHECK_INT(verify_get("a@b", &code, reply, sizeof(reply)), 1);
	CHECK_STR(reply, "550 5.1");
}

/* test_expiry - an entry is gone once its TTL has passed; TTL 0 stores nothing. */
TEST(test_expiry)
{
	verify_init(1000);
	verify_put("short@example.com", 550, "550 5.1.1 x", 20);
	verify_put("zero@example.com", 550, "550 5.1.1 x", 0);
	CHECK_INT(verify_get("short@example.com", NULL, NULL, 0), 1);
	CHECK_INT(verify_get("zero@example.com", NULL, NULL, 0), 0);
	usleep(40 * 1000);
	CHECK_INT(verify_get("short@example.com", NULL, NULL, 0), 0);
}

/* test_replace - a second put for the same recipient replaces the first. */
TEST(test_replace)
{
	char reply[64];
	int code = 0;

	verify_init(1000);
	verify_put("u@example.com", 550, "550 5.1.1 first", 60000);
	verify_put("U@example.com", 551, "551 5.1.6 second", 60000);
	CHECK_INT(verify_get("u@example.com", &code, reply, sizeof(reply)), 1);
	CHECK_INT(code, 551);
	CHECK_STR(reply, "551 5.1.6 second");
}

/* test_bounded - never more than max_entries live; the newest survive. */
TEST(test_bounded)
{
	char addr[64];
	int live = 0;

	verify_init(640); /* 10 per shard */
	for (int i = 0; i < 10000; i++) {
		snprintf(addr, sizeof(addr), "user%d@example.com", i);
		verify_put(addr, 550, "550 5.1.1 x", 60000);
	}
	for (int i = 0; i < 10000; i++) {
		snprintf(addr, sizeof(addr), "user%d@example.com", i);
		live += verify_get(addr, NULL, NULL, 0);
	}
	CHECK(live <= 640);
	CHECK(live >= 320);
	CHECK_INT(verify_get("user9999@example.com", NULL, NULL, 0), 1);
	CHECK_INT(verify_get("user0@example.com", NULL, NULL, 0), 0);
}

static void *hammer(void *arg)
{
	char addr[64];
	long t = (long)arg;

	for (int i = 0; i < 20000; i++) {
		snprintf(addr, sizeof(addr), "u%ld-%d@example.com", t, i % 500);
		if (i % 3 == 0)
			verify_put(addr, 550, "550 5.1.1 x", 60000);
		else
			verify_get(addr, NULL, NULL, 0);
	}
	return NULL;
}

/* test_threads - concurrent puts and gets (run under ASan/TSan builds). */
TEST(test_threads)
{
	pthread_t th[8];

	verify_init(1000);
	for (long i = 0; i < 8; i++)
		pthread_create(&th[i], NULL, hammer, (void *)i);
	for (int i = 0; i < 8; i++)
		pthread_join(th[i], NULL);
	CHECK_INT(verify_get("u0-499@example.com", NULL, NULL, 0) >= 0, 1);
}

int main(void)
{
	RUN(test_put_get);
	RUN(test_truncated_reply);
	RUN(test_expiry);
	RUN(test_replace);
	RUN(test_bounded);
	RUN(test_threads);
	return t_done();
}
