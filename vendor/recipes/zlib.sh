# zlib: Connector/C's compressed protocol, libclamav's archives.
build() {
	CC=musl-gcc CFLAGS="$CFL" ./configure --static --prefix="$P"
	make -j"$J" libz.a
	make install
}
