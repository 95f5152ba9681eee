# libmspack: CAB/CHM for libclamav (Debian's clamav source drops the bundled copy).
build() {
	CC=musl-gcc CFLAGS="$CFL" ./configure --prefix="$P" --disable-shared --enable-static
	make -j"$J"
	make install
}
