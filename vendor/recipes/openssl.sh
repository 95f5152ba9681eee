# OpenSSL: for libldap's TLS (ldaps:// and StartTLS of ldap: maps, both
# static builds) and libclamav (its hashes and certificate checks of
# signed executables); perimd's own TLS is BearSSL. Static, no engines or
# modules (a static binary cannot load them).
build() {
	CC=musl-gcc ./Configure linux-x86_64 no-shared no-tests no-dso no-engine no-module \
		no-afalgeng no-async --prefix="$P" --libdir=lib --openssldir=/etc/ssl -Os -I"$P/kinc"
	make -j"$J" build_libs
	make install_dev
}
