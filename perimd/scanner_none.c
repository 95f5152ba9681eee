/*
 * scanner_none.c - the scanner entry points of a build without libclamav
 * (make NO_CLAMAV=1, ./build.sh static noclamav). av_check() refuses
 * av_scanner = libclamav in such a build, so the scanner process is never
 * started; these only keep the interface whole.
 */
#ifdef PERIMD_NO_CLAMAV
#include "scanner.h"

#include <stdio.h>
#include <unistd.h>

/* scanner_main - started by hand: say why there is no scanner. */
int scanner_main(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "perimd: built without libclamav: no scanner process\n");
	_exit(1);
}

/* scanner_version - NULL: no libclamav linked in. */
const char *scanner_version(void)
{
	return NULL;
}
#else
/* ISO C wants a translation unit to declare something. */
typedef int scanner_none_unused;
#endif
