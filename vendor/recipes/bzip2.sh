# bzip2: libclamav's bzip2 archives.
build() {
	make -j"$J" CC=musl-gcc CFLAGS="$CFL -D_FILE_OFFSET_BITS=64" libbz2.a
	cp libbz2.a "$P/lib/"
	cp bzlib.h "$P/include/"
}
