/*
 * clock.h - the monotonic clock of perimd, in one place: deadlines,
 * timers, cache ages and durations all read it (the wall clock, for
 * timestamps a person reads, is time(2) or log.c's). Ground floor: it
 * includes nothing of perimd.
 */
#ifndef PERIMD_CLOCK_H
#define PERIMD_CLOCK_H

#include <stdint.h>

/* clock_ms - CLOCK_MONOTONIC in milliseconds. */
uint64_t clock_ms(void);
/* clock_us - CLOCK_MONOTONIC in microseconds. */
uint64_t clock_us(void);
/* clock_coarse_ms - CLOCK_MONOTONIC_COARSE in milliseconds: cheaper, a
 * few ms behind (the tick); for ages of cache entries read per lookup. */
uint64_t clock_coarse_ms(void);

#endif
