/*
 * t.h - the unit test harness: each TEST is one function; CHECK records a
 * failure with file and line and goes on. Each test prints "ok NAME" or
 * "FAIL NAME"; main() ends with "N passed, N failed" and exit status 1 on
 * any failure. tests/run.sh sums these lines over all test programs.
 */
#ifndef PERIMD_T_H
#define PERIMD_T_H

#include <stdio.h>
#include <string.h>

static int t_cur_failed, t_passed, t_failed;

#define CHECK(cond)                                                          \
	do {                                                                 \
		if (!(cond)) {                                               \
			t_cur_failed = 1;                                    \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n",         \
				__FILE__, __LINE__, #cond);                  \
		}                                                            \
	} while (0)

#define CHECK_STR(a, b)                                                      \
	do {                                                                 \
		const char *t_a_ = (a), *t_b_ = (b);                         \
		if (!t_a_ || !t_b_ || strcmp(t_a_, t_b_) != 0) {             \
			t_cur_failed = 1;                                    \
			fprintf(stderr, "%s:%d: \"%s\" != \"%s\"\n",         \
				__FILE__, __LINE__, t_a_ ? t_a_ : "(null)",  \
				t_b_ ? t_b_ : "(null)");                     \
		}                                                            \
	} while (0)

#define CHECK_INT(a, b)                                                      \
	do {                                                                 \
		long long t_a_ = (long long)(a), t_b_ = (long long)(b);      \
		if (t_a_ != t_b_) {                                          \
			t_cur_failed = 1;                                    \
			fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", \
				__FILE__, __LINE__, #a, t_a_, t_b_);         \
		}                                                            \
	} while (0)

#define TEST(name) static void name(void)

static inline void t_run(const char *name, void (*fn)(void))
{
	t_cur_failed = 0;
	fn();
	if (t_cur_failed) {
		t_failed++;
		printf("FAIL %s\n", name);
	} else {
		t_passed++;
		printf("ok %s\n", name);
	}
	fflush(stdout);
}
#define RUN(name) t_run(#name, name)

static inline int t_done(void)
{
	printf("%d passed, %d failed\n", t_passed, t_failed);
	return t_failed ? 1 : 0;
}

#endif
