# c-ares (dns.c): CMake, static and position-independent, no tools/tests.
# Without /etc/resolv.conf (a scratch image) it falls back to 127.0.0.1;
# perimd's dns_servers parameter names the resolver explicitly.
build() {
	$CM -S . -B _b -DCARES_STATIC=ON -DCARES_SHARED=OFF -DCARES_STATIC_PIC=ON \
		-DCARES_BUILD_TOOLS=OFF -DCARES_BUILD_TESTS=OFF
	cmake --build _b -j"$J"
	cmake --install _b
}
