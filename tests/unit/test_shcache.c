/*
 * test_shcache.c - the sharded cache (shcache.c) and the two tables built
 * on it: values start zeroed and change only in the callback; expiry hides
 * and restarts an entry; a full shard sweeps the expired, then evicts the
 * oldest (by insertion, or by use with touch) or grows; threads counting
 * the same keys lose nothing; climit's counts and crate's minutes.
 */
#include <pthread.h>
#include <stdio.h>

#include "climit.h"
#include "crate.h"
#include "shcache.h"
#include "t.h"

/* add - callback: add *(int *)arg, expire at arg[1] when set. */
static enum shcache_act add(void *val, uint64_t *expires, int fresh, void *arg)
{
	const int *a = arg;
	(void)fresh;
	*(int *)val += a[0];
	if (a[1])
		*expires = (uint64_t)a[1];
	return *(int *)val == 0 ? SHCACHE_DROP : SHCACHE_KEEP;
}

/* val - the value of key at now, or -1 when absent. */
static int val(struct shcache *c, const char *key, uint64_t now)
{
	int v;
	return shcache_get(c, key, now, &v) ? v : -1;
}

/* test_basic - create, update, drop, absent without create. */
TEST(test_basic)
{
	const struct shcache_conf cf = { .shards = 4, .buckets = 8, .valsize = sizeof(int) };
	struct shcache *c = shcache_new(&cf);
	int one[2] = { 1, 0 }, minus[2] = { -1, 0 };
	CHECK_INT(shcache_update(c, "a", 0, 0, add, one), 0);
	CHECK_INT(val(c, "a", 0), -1);
	CHECK_INT(shcache_update(c, "a", 0, 1, add, one), 1);
	shcache_update(c, "a", 0, 1, add, one);
	shcache_update(c, "b", 0, 1, add, one);
	CHECK_INT(val(c, "a", 0), 2);
	CHECK_INT(val(c, "b", 0), 1);
	CHECK_INT(shcache_count(c), 2);
	shcache_update(c, "b", 0, 0, add, minus);
	CHECK_INT(val(c, "b", 0), -1);
	CHECK_INT(shcache_count(c), 1);
	CHECK_INT(shcache_del(c, "a"), 1);
	CHECK_INT(shcache_del(c, "a"), 0);
	CHECK_INT(shcache_count(c), 0);
	shcache_free(c);
}

/* test_expiry - an expired entry is absent, and restarts from zero. */
TEST(test_expiry)
{
	const struct shcache_conf cf = { .shards = 2, .buckets = 4, .valsize = sizeof(int) };
	struct shcache *c = shcache_new(&cf);
	int a[2] = { 5, 100 };
	shcache_update(c, "k", 10, 1, add, a);
	CHECK_INT(val(c, "k", 99), 5);
	CHECK_INT(val(c, "k", 100), -1);
	shcache_update(c, "k", 10, 1, add, a);
	int b[2] = { 1, 200 };
	shcache_update(c, "k", 150, 1, add, b);
	CHECK_INT(val(c, "k", 150), 1);
	shcache_free(c);
}

/* test_bound - one shard of max 3: evict the oldest (by insertion; with
 * touch the least recently used); without evict, sweep the expired, and
 * grow when nothing expired. */
TEST(test_bound)
{
	struct shcache_conf cf = { .shards = 1, .buckets = 2, .valsize = sizeof(int), .max = 3, .evict = 1 };
	struct shcache *c = shcache_new(&cf);
	int live[2] = { 1, 0 }, dying[2] = { 1, 50 };
	shcache_update(c, "a", 0, 1, add, live);
	shcache_update(c, "b", 0, 1, add, dying);
	shcache_update(c, "c", 0, 1, add, live);
	shcache_update(c, "a", 0, 1, add, live);  /* no touch: a stays oldest */
	shcache_update(c, "d", 60, 1, add, live); /* a evicted */
	CHECK_INT(shcache_count(c), 3);
	CHECK_INT(val(c, "a", 60), -1);
	CHECK_INT(val(c, "b", 60), -1); /* expired */
	CHECK_INT(val(c, "c", 60), 1);
	shcache_free(c);

	cf.evict = 0;
	c = shcache_new(&cf);
	shcache_update(c, "a", 0, 1, add, live);
	shcache_update(c, "b", 0, 1, add, dying);
	shcache_update(c, "c", 0, 1, add, live);
	shcache_update(c, "d", 60, 1, add, live); /* b swept */
	CHECK_INT(shcache_count(c), 3);
	CHECK_INT(val(c, "a", 60), 1);
	shcache_update(c, "e", 60, 1, add, live); /* nothing expired: grows */
	CHECK_INT(shcache_count(c), 4);
	shcache_free(c);
	cf.evict = 1;

	cf.touch = 1;
	c = shcache_new(&cf);
	shcache_update(c, "a", 0, 1, add, live);
	shcache_update(c, "b", 0, 1, add, live);
	shcache_update(c, "c", 0, 1, add, live);
	shcache_update(c, "a", 0, 1, add, live); /* a used: b is the oldest */
	shcache_update(c, "d", 0, 1, add, live);
	CHECK_INT(val(c, "a", 0), 2);
	CHECK_INT(val(c, "b", 0), -1);
	shcache_free(c);

	cf.touch = 0;
	cf.evict = 0;
	c = shcache_new(&cf);
	for (int i = 0; i < 10; i++) {
		char k[16];
		snprintf(k, sizeof k, "k%d", i);
		shcache_update(c, k, 0, 1, add, live);
	}
	CHECK_INT(shcache_count(c), 10);
	shcache_clear(c);
	CHECK_INT(shcache_count(c), 0);
	shcache_free(c);
}

static int drops;

/* count_drop - drop callback: count the values that went. */
static void count_drop(void *val)
{
	drops += *(int *)val;
}

/* test_drop_max - every value that goes meets the drop callback once
 * (deleted, evicted, expired and restarted, cleared); a lowered bound
 * applies at the next add. */
TEST(test_drop_max)
{
	struct shcache_conf cf = { .shards = 1, .buckets = 4, .valsize = sizeof(int), .max = 4, .evict = 1 };
	cf.drop = count_drop;
	struct shcache *c = shcache_new(&cf);
	int one[2] = { 1, 0 }, short_lived[2] = { 1, 10 };
	drops = 0;
	shcache_update(c, "a", 0, 1, add, one);
	shcache_update(c, "b", 0, 1, add, short_lived);
	shcache_update(c, "c", 0, 1, add, one);
	CHECK_INT(shcache_del(c, "a"), 1);
	CHECK_INT(drops, 1);
	shcache_update(c, "b", 20, 1, add, one); /* expired: restarted from 0 */
	CHECK_INT(drops, 2);
	CHECK_INT(val(c, "b", 20), 1);
	shcache_set_max(c, 1);
	shcache_update(c, "d", 20, 1, add, one); /* evicts c and b */
	CHECK_INT(drops, 4);
	CHECK_INT(shcache_count(c), 1);
	CHECK(shcache_shard(c, "d") == 0);
	shcache_free(c);
	CHECK_INT(drops, 5);
}

static struct shcache *shared;

/* counter - 4 threads add 1 to 16 keys, 2000 times each. */
static void *counter(void *arg)
{
	int one[2] = { 1, 0 };
	(void)arg;
	for (int i = 0; i < 2000; i++) {
		char k[16];
		snprintf(k, sizeof k, "c%d", i % 16);
		shcache_update(shared, k, 0, 1, add, one);
	}
	return NULL;
}

/* test_threads - concurrent updates lose nothing. */
TEST(test_threads)
{
	const struct shcache_conf cf = { .shards = 4, .buckets = 4, .valsize = sizeof(int) };
	shared = shcache_new(&cf);
	pthread_t t[4];
	for (int i = 0; i < 4; i++)
		pthread_create(&t[i], NULL, counter, NULL);
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	int sum = 0;
	for (int i = 0; i < 16; i++) {
		char k[16];
		snprintf(k, sizeof k, "c%d", i);
		sum += val(shared, k, 0);
	}
	CHECK_INT(sum, 8000);
	shcache_free(shared);
}

/* test_climit_crate - the tables on top. */
TEST(test_climit_crate)
{
	CHECK_INT(climit_enter("192.0.2.1", 2), 1);
	CHECK_INT(climit_enter("192.0.2.1", 2), 2);
	CHECK_INT(climit_enter("192.0.2.1", 2), -1);
	CHECK_INT(climit_enter("192.0.2.2", 2), 1);
	climit_leave("192.0.2.1");
	CHECK_INT(climit_enter("192.0.2.1", 2), 2);
	climit_leave("192.0.2.1");
	climit_leave("192.0.2.1");
	climit_leave("192.0.2.1"); /* one too many: nothing */
	CHECK_INT(climit_enter("192.0.2.1", 0), 1);
	climit_leave("192.0.2.1");
	climit_leave("192.0.2.2");

	CHECK_INT(crate_hit("192.0.2.9", 2, 1000), 1);
	CHECK_INT(crate_hit("192.0.2.9", 2, 1000), 2);
	CHECK_INT(crate_hit("192.0.2.9", 2, 1000), -1);
	CHECK_INT(crate_hit("192.0.2.9", 2, 1001), 1);
	CHECK_INT(crate_hit("192.0.2.9", 2, 999), 1); /* clock stepped back */
	CHECK_INT(crate_hit("192.0.2.9", 0, 999), 2);
}

/* What a put stores: the value and its expiry; released: the sum of the
 * values released by a put (the drop callback's job for an old value). */
static int released;
struct put_val {
	int v;
	uint64_t expires;
};

/* set_put - put callback: a live old value is released as drop would. */
static enum shcache_act set_put(void *val, uint64_t *expires, int fresh, void *arg)
{
	const struct put_val *p = arg;
	if (!fresh)
		released += *(int *)val;
	*(int *)val = p->v;
	*expires = p->expires;
	return SHCACHE_KEEP;
}

/* test_put_is_del_update - shcache_put does what shcache_del then
 * shcache_update with create did: over random puts, gets and time, with
 * and without touch, a put cache and a del+update cache hold the same
 * values, evict the same keys (a re-put key is the newest, its expiry the
 * new one, also when it had expired) and let go of the same values. */
TEST(test_put_is_del_update)
{
	for (int touch = 0; touch <= 1; touch++) {
		const struct shcache_conf cf = { .shards = 1, .buckets = 4, .valsize = sizeof(int), .max = 4,
						 .evict = 1, .touch = touch, .drop = count_drop };
		struct shcache *a = shcache_new(&cf), *b = shcache_new(&cf);
		int drops_a = 0, drops_b = 0, rel_a = 0, diffs = 0;
		uint64_t now = 1;
		unsigned seed = 7;
		for (int i = 0; i < 20000; i++) {
			seed = seed * 1103515245u + 12345u;
			char key[8];
			snprintf(key, sizeof key, "k%u", (seed >> 8) % 7);
			struct put_val p = { (int)(seed >> 20) % 1000 + 1, now + 1 + (seed >> 4) % 40 };
			if ((seed >> 16) % 3 == 0) { /* a get (it touches) */
				int va, vb;
				int ha = shcache_get(a, key, now, &va), hb = shcache_get(b, key, now, &vb);
				diffs += ha != hb || (ha && va != vb);
				continue;
			}
			drops = released = 0;
			shcache_put(a, key, now, set_put, &p);
			drops_a += drops, rel_a += released;
			drops = released = 0;
			shcache_del(b, key);
			shcache_update(b, key, now, 1, set_put, &p);
			drops_b += drops + released;
			now += (seed >> 12) % 5;
			for (int k = 0; i % 5 == 0 && k < 7; k++) { /* the same contents */
				char kk[16];
				snprintf(kk, sizeof kk, "k%d", k);
				diffs += val(a, kk, now) != val(b, kk, now);
			}
			diffs += shcache_count(a) != shcache_count(b);
		}
		CHECK_INT(diffs, 0);
		CHECK_INT(drops_a + rel_a, drops_b);
		CHECK(rel_a > 0); /* puts over live keys were made */
		shcache_free(a);
		shcache_free(b);
	}
}

/* test_put_renews - a re-put key is the newest (live or expired) with the
 * new expiry, where an update with create leaves it where it was. */
TEST(test_put_renews)
{
	const struct shcache_conf cf = { .shards = 1, .buckets = 2, .valsize = sizeof(int), .max = 3, .evict = 1 };
	struct shcache *c = shcache_new(&cf);
	struct put_val p = { 1, 100 }, p2 = { 2, 200 };
	shcache_put(c, "a", 0, set_put, &p);
	shcache_put(c, "b", 0, set_put, &p);
	shcache_put(c, "c", 0, set_put, &p);
	shcache_put(c, "a", 0, set_put, &p2); /* a is the newest: b goes next */
	shcache_put(c, "d", 0, set_put, &p);
	CHECK_INT(val(c, "a", 150), 2); /* the new expiry */
	CHECK_INT(val(c, "b", 0), -1);
	CHECK_INT(val(c, "c", 0), 1);
	struct put_val p3 = { 3, 300 };
	shcache_put(c, "c", 250, set_put, &p3); /* expired, restarted as the newest */
	shcache_put(c, "e", 250, set_put, &p3); /* evicts a, the oldest, not c */
	CHECK_INT(val(c, "c", 250), 3);
	CHECK_INT(val(c, "e", 250), 3);
	CHECK_INT(shcache_count(c), 3);
	shcache_free(c);
}

int main(void)
{
	RUN(test_basic);
	RUN(test_expiry);
	RUN(test_bound);
	RUN(test_drop_max);
	RUN(test_put_is_del_update);
	RUN(test_put_renews);
	RUN(test_threads);
	RUN(test_climit_crate);
	return t_done();
}
