/*
 * version.h - perimd's version, and what this binary was built with
 * (perimd -V): the optional libraries are compile-time switches
 * (PERIMD_NO_CLAMAV; the static musl build sets PERIMD_STATIC).
 */
#ifndef PERIMD_VERSION_H
#define PERIMD_VERSION_H

#include <stdio.h>

#define PERIMD_VERSION "0.1.0"

/* version_print - the -V text: version, features, library versions. */
void version_print(FILE *f);

#endif
