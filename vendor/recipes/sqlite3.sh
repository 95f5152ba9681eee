# SQLite (greylist store, sqlite: maps): Debian ships the canonical source
# tree, so generate the amalgamation first (needs tclsh), then compile it
# once with perimd's options: thread-safe, no extension loading (a static
# binary cannot dlopen anyway).
build() {
	mkdir -p _amal
	cd _amal
	../configure --disable-tcl >/dev/null
	make -j"$J" sqlite3.c sqlite3.h
	musl-gcc $CFL -DSQLITE_THREADSAFE=1 -DSQLITE_OMIT_LOAD_EXTENSION -DSQLITE_DQS=0 \
		-DSQLITE_DEFAULT_MEMSTATUS=0 -DSQLITE_DEFAULT_WAL_SYNCHRONOUS=1 \
		-DSQLITE_OMIT_DEPRECATED -DSQLITE_OMIT_SHARED_CACHE -c sqlite3.c -o sqlite3.o
	ar rcs "$P/lib/libsqlite3.a" sqlite3.o
	cp sqlite3.h sqlite3ext.h "$P/include/"
}
