/*
 * recost.h - the cost limits of regexes read from an admin's files: one
 * regex may not make glibc's regcomp() or regexec() take exponential time
 * or memory (stacked or nested repetitions, back-references, a star over
 * an anchor, too many nodes), and the regexes of one file together may
 * not hold too much memory.
 */
#ifndef PERIMD_RECOST_H
#define PERIMD_RECOST_H

/* The regexes of one file so far. Start at { 0, 0 }. */
struct recost {
	double nodes, enodes;
};

/* recost_add - NULL when the POSIX extended regex re may be compiled
 * (and is added to the file's total f), else why not ("too complex",
 * "back-references are not supported", "too complex, with the regexes
 * before it"). */
const char *recost_add(struct recost *f, const char *re);

#endif
