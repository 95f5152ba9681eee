# OpenLDAP's libldap and liblber (maps_ldap.c), the client libraries only:
# no slapd, no SASL (perimd binds simply), TLS through the OpenSSL of
# recipes/openssl.sh (ldaps:// and StartTLS, in both static builds). The
# configuration file is Debian's /etc/ldap/ldap.conf (absent in a scratch
# image: the defaults). perimd links -lldap -llber as the dynamic build
# does: libldap.a is a linker script naming the archives in link order.
build() {
	CC=musl-gcc CFLAGS="$CFL" CPPFLAGS="-I$P/include -I$P/kinc" LDFLAGS="-L$P/lib" \
		./configure --prefix="$P" --libdir="$P/lib" --sysconfdir=/etc/ldap \
		--disable-shared --enable-static --disable-slapd --without-cyrus-sasl \
		--with-tls=openssl --with-threads=posix --without-systemd --without-fetch
	make depend
	make -j"$J" -C include
	# The libraries only (their `all` also links test programs).
	make -j"$J" -C libraries/liblber liblber.la
	make -j"$J" -C libraries/libldap libldap.la
	make -C include install
	cp libraries/liblber/.libs/liblber.a "$P/lib/"
	cp libraries/libldap/.libs/libldap.a "$P/lib/libldap_tls.a"
	echo "GROUP ( $P/lib/libldap_tls.a $P/lib/liblber.a $P/lib/libssl.a $P/lib/libcrypto.a )" >"$P/lib/libldap.a"
}
