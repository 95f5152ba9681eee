/*
 * test_net.c - net.c's parsers: net_parse_port's one rule (digits only,
 * no leading zero, 1..65535) and net_parse_addr's forms using it.
 */
#include <netinet/in.h>

#include "net.h"
#include "t.h"

/* test_port - accepted and refused ports. */
TEST(test_port)
{
	CHECK_INT(net_parse_port("25"), 25);
	CHECK_INT(net_parse_port("1"), 1);
	CHECK_INT(net_parse_port("65535"), 65535);
	static const char *const bad[] = { "",   "0",   "00",  "025", "65536", "99999", "100000",      "+25",
					   "-1", " 25", "25 ", "2x",  "0x19",  "1e3",   "123456789012" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		int v = net_parse_port(bad[i]);
		if (v != -1)
			fprintf(stderr, "port \"%s\" accepted as %d\n", bad[i], v);
		CHECK_INT(v, -1);
	}
}

/* test_addr - the address forms and their ports. */
TEST(test_addr)
{
	struct sockaddr_storage ss;
	socklen_t len;
	const char *why = NULL;
	CHECK_INT(net_parse_addr("127.0.0.1:2525", -1, &ss, &len, &why), 0);
	CHECK_INT(net_port((struct sockaddr *)&ss), 2525);
	CHECK_INT(net_parse_addr("[::1]:26", -1, &ss, &len, &why), 0);
	CHECK_INT(net_port((struct sockaddr *)&ss), 26);
	CHECK_INT(net_parse_addr("[::1]", 25, &ss, &len, &why), 0);
	CHECK_INT(net_port((struct sockaddr *)&ss), 25);
	CHECK_INT(net_parse_addr("127.0.0.1", -1, &ss, &len, &why), -1);
	CHECK_STR(why, "port missing");
	CHECK_INT(net_parse_addr("127.0.0.1:025", -1, &ss, &len, &why), -1);
	CHECK_STR(why, "bad port");
	CHECK_INT(net_parse_addr("127.0.0.1:0", -1, &ss, &len, &why), -1);
}

int main(void)
{
	RUN(test_port);
	RUN(test_addr);
	return t_done();
}
