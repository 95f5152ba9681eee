# json-c: libclamav's scan metadata.
build() {
	$CM -S . -B _b -DBUILD_STATIC_LIBS=ON -DBUILD_TESTING=OFF -DBUILD_APPS=OFF -DDISABLE_WERROR=ON
	cmake --build _b -j"$J"
	cmake --install _b
}
