/*
 * fuzz_milterspec.c - libFuzzer target for list splitting with brace
 * groups (conf_list_split, conf_brace_items) and the smtpd_milters item
 * parser (milter_spec_parse): the input is a list value. Its items are
 * never empty and read back as themselves when joined by ", " (what a
 * dump writes); each item as a milter is either accepted with an address
 * and every setting in its bounds, or refused with a reason that names it.
 */
#include "conf.h"
#include "conf_enum.h"
#include "milter.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* check_roundtrip - l joined by ", " splits into the same items. */
static void check_roundtrip(const struct conf_list *l)
{
	size_t n = 1;
	for (int i = 0; i < l->n; i++)
		n += strlen(l->v[i]) + 2;
	char *j = calloc(1, n);
	for (int i = 0; i < l->n; i++) {
		if (i)
			strcat(j, ", ");
		strcat(j, l->v[i]);
	}
	struct conf_list r = conf_list_split(j);
	if (r.n != l->n || r.v[r.n])
		abort();
	for (int i = 0; i < r.n; i++)
		if (strcmp(r.v[i], l->v[i]))
			abort();
	conf_list_free(&r);
	free(j);
}

/* check_item - an item as an smtpd_milters entry. */
static void check_item(const char *item)
{
	struct milter_spec sp = { .connect_timeout = 30000, .command_timeout = 30000,
				  .content_timeout = 300000, .default_action = MILTER_DEFAULT_TEMPFAIL,
				  .protocol = 6 };
	char err[512] = "";
	if (milter_spec_parse(item, &sp, err, sizeof err) < 0) {
		if (err[0] != '"' || strlen(err) < 3)
			abort();
		return;
	}
	if (strncmp(sp.addr, "inet:", 5) && strncmp(sp.addr, "unix:/", 6))
		abort();
	long long t[3] = { sp.connect_timeout, sp.command_timeout, sp.content_timeout };
	for (int i = 0; i < 3; i++)
		if (t[i] < 100 || t[i] > 540000)
			abort();
	if (sp.default_action < MILTER_DEFAULT_TEMPFAIL || sp.default_action > MILTER_DEFAULT_REJECT ||
	    sp.protocol < 2 || sp.protocol > 6)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	memcpy(s, data, size);
	s[size] = 0;
	struct conf_list l = conf_list_split(s);
	if (l.v[l.n])
		abort();
	for (int i = 0; i < l.n; i++) {
		if (!l.v[i][0] || strchr(", \t\r\n", l.v[i][0]))
			abort();
		struct conf_list in;
		if (conf_brace_items(l.v[i], &in) == 0) {
			for (int k = 0; k < in.n; k++)
				if (!in.v[k][0])
					abort();
			conf_list_free(&in);
		}
		check_item(l.v[i]);
	}
	check_roundtrip(&l);
	conf_list_free(&l);
	check_item(s); /* the whole input as one item */
	free(s);
	return 0;
}
