# MariaDB Connector/C (mysql: maps and greylist store): the libmariadb/
# folder of Debian's mariadb source. No TLS (it would need OpenSSL: no
# BearSSL backend exists), so connect over a private network or the local
# socket. A static binary cannot dlopen, so the authentication plugins are
# built in. gcc 12 warns where the sources expect none: no -Werror.
build() {
	cd libmariadb
	$CM -S . -B _b -DCMAKE_INSTALL_PREFIX="$P/mariadb" -DCMAKE_COMPILE_WARNING_AS_ERROR=OFF \
		-DWITH_SSL=OFF -DWITH_EXTERNAL_ZLIB=ON -DWITH_UNIT_TESTS=OFF -DWITH_CURL=OFF \
		-DCLIENT_PLUGIN_DIALOG=STATIC -DCLIENT_PLUGIN_MYSQL_CLEAR_PASSWORD=STATIC
	cmake --build _b -j"$J"
	cmake --install _b
	rm -rf "$P/include/mariadb"
	cp -a "$P/mariadb/include/mariadb" "$P/include/"
	cp "$P/mariadb/lib/mariadb/libmariadbclient.a" "$P/lib/"
	# perimd links -lmariadb: a linker script naming the archive and its
	# own dependency, so the Makefile needs no static-only library list.
	echo "GROUP ( $P/lib/libmariadbclient.a $P/lib/libz.a )" >"$P/lib/libmariadb.a"
}
