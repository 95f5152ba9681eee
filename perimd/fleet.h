/*
 * fleet.h - state the boxes of a fleet share through the greylist store's
 * MySQL/MariaDB database (README "The fleet"): the per-recipient verdicts
 * of the verify cache (fleet_share_recipient_verdicts) and the per-client
 * session counts and rates (fleet_share_client_limits). The hot paths stay
 * local: one thread syncs every fleet_sync_interval, writing this box's
 * news in one batch and reading the other boxes' in the same round trip.
 */
#ifndef PERIMD_FLEET_H
#define PERIMD_FLEET_H

#include <stddef.h>

struct conf;

/* fleet_check - for -t and start: sharing needs a mysql: greylist store.
 * 0, or -1 with err. */
int fleet_check(const struct conf *c, char *err, size_t errlen);
/* fleet_start - start the sync thread (it follows reloads: each round
 * reads the current configuration and does nothing while nothing is
 * shared). fleet_stop - stop and join it. */
void fleet_start(void);
void fleet_stop(void);

#endif
