# BearSSL (TLS for perimd): its own Makefile; only the static library.
build() {
	make -j"$J" CC=musl-gcc AR=ar CFLAGS="-W -Wall $CFL" DLL=no TOOLS=no TESTS=no lib
	cp build/libbearssl.a "$P/lib/"
	cp inc/*.h "$P/include/"
}
