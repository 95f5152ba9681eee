# libclamav only (no clamd, no tools). Debian's +dfsg source has no unrar
# (no RAR scanning) and no bundled libmspack; its Rust crates are vendored,
# so cargo runs offline. The Rust part is built for the musl target when
# rustup has it, else for the gnu target and linked with
# vendor/musl_glibc_shims.c (works on x86_64; not supported upstream).
build() {
	local target=x86_64-unknown-linux-gnu shims=$HERE/musl_glibc_shims.c
	if rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
		target=x86_64-unknown-linux-musl shims=
	fi
	# Release, not the other libraries' MinSizeRel: with -Os the scanner
	# took ~30% more CPU per 100 KB message (README, the static binary).
	CARGO_NET_OFFLINE=true $CM -S . -B _b -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$P/clamav" \
		-DRUST_COMPILER_TARGET="$target" -DENABLE_LIBCLAMAV_ONLY=ON -DENABLE_STATIC_LIB=ON \
		-DENABLE_SHARED_LIB=OFF -DENABLE_UNRAR=OFF -DENABLE_EXTERNAL_MSPACK=ON \
		-DENABLE_JSON_SHARED=OFF -DENABLE_TESTS=OFF -DENABLE_MAN_PAGES=OFF -DENABLE_SYSTEMD=OFF \
		-DENABLE_MILTER=OFF -DENABLE_CLAMONACC=OFF -DBYTECODE_RUNTIME=interpreter \
		-DOPENSSL_ROOT_DIR="$P" -DOPENSSL_USE_STATIC_LIBS=ON \
		-DDATABASE_DIRECTORY=/var/lib/clamav \
		-DIconv_INCLUDE_DIR=/usr/include/x86_64-linux-musl -DIconv_LIBRARY:STRING=c
	CARGO_NET_OFFLINE=true cmake --build _b -j"$J"
	cmake --install _b
	cp "$P/clamav/include/"*.h "$P/include/"
	cp "$P/clamav/lib/"*.a "$P/lib/"
	local libs="$P/lib/libclamav_static.a $P/lib/libclamav_rust.a $P/lib/libmspack.a"
	libs+=" $P/lib/libxml2.a $P/lib/libpcre2-8.a $P/lib/libjson-c.a $P/lib/libssl.a"
	libs+=" $P/lib/libcrypto.a $P/lib/libbz2.a $P/lib/libz.a"
	if [ -n "$shims" ]; then
		musl-gcc $CFL -c "$shims" -o musl_glibc_shims.o
		ar rcs "$P/lib/libmusl_glibc_shims.a" musl_glibc_shims.o
		libs+=" $P/lib/libmusl_glibc_shims.a"
	fi
	# perimd links -lclamav: a linker script with libclamav's whole
	# dependency list, in a group so their order does not matter.
	echo "GROUP ( $libs )" >"$P/lib/libclamav.a"
}
