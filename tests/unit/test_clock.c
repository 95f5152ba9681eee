/*
 * test_clock.c - the monotonic clock (clock.c): it never goes back, the
 * three readings agree (ms, us / 1000, the coarse ms a tick behind at
 * most), and a 20 ms sleep shows as 20 ms or more.
 */
#include <time.h>

#include "clock.h"
#include "t.h"

/* test_agree - the readings agree with each other. */
TEST(test_agree)
{
	uint64_t c = clock_coarse_ms(), m = clock_ms(), u = clock_us(), m2 = clock_ms();
	CHECK(m > 0);
	CHECK(m2 >= m);
	CHECK(u / 1000 >= m && u / 1000 <= m2);
	CHECK(c <= m2 && c + 50 >= m); /* the coarse tick is a few ms */
}

/* test_advance - time passes, forwards only. */
TEST(test_advance)
{
	struct timespec d = { 0, 20 * 1000000L };
	uint64_t a = clock_ms(), ua = clock_us();
	nanosleep(&d, NULL);
	uint64_t b = clock_ms(), ub = clock_us();
	CHECK(b - a >= 20);
	CHECK(ub - ua >= 20000);
	for (int i = 0; i < 1000; i++) {
		uint64_t x = clock_us();
		CHECK(x >= ub);
		ub = x;
	}
}

int main(void)
{
	RUN(test_agree);
	RUN(test_advance);
	return t_done();
}
