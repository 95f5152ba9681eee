/*
 * musl_glibc_shims.c - three glibc symbols that libclamav's Rust part
 * (built for x86_64-unknown-linux-gnu: the musl Rust target is not
 * installable here) and Debian's glibc-built libgcc_eh.a expect, so that
 * they link into perimd's static musl binary. Only the full static build
 * (./build.sh static) links this; where rustup can add the
 * x86_64-unknown-linux-musl target, that is the cleaner route.
 */
#define _GNU_SOURCE
#include <link.h>
#include <stdint.h>
#include <string.h>

/* Rust's std asks for the glibc version to decide on res_init workarounds
 * needed before glibc 2.26; musl needs none, so claim a recent one. */
const char *gnu_get_libc_version(void)
{
	return "2.36";
}

/* Called by Rust's std after a failed name lookup on old glibc; nothing to
 * refresh with musl. */
int __res_init(void)
{
	return 0;
}

/* gcc 12's unwinder looks up a PC's unwind table with glibc 2.35's
 * _dl_find_object. A static binary is one object: find it with
 * dl_iterate_phdr (the link keeps the table with --eh-frame-hdr). */
struct dl_find_object {
	unsigned long long dlfo_flags;
	void *dlfo_map_start;
	void *dlfo_map_end;
	void *dlfo_link_map;
	void *dlfo_eh_frame;
	unsigned long long dlfo_reserved[7];
};

struct find {
	uintptr_t pc;
	struct dl_find_object *res;
};

static int find_pc(struct dl_phdr_info *info, size_t size, void *arg)
{
	struct find *f = arg;
	uintptr_t lo = UINTPTR_MAX, hi = 0;
	void *eh = NULL;
	int in = 0;
	(void)size;
	for (int i = 0; i < info->dlpi_phnum; i++) {
		const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
		uintptr_t start = info->dlpi_addr + ph->p_vaddr;
		if (ph->p_type == PT_GNU_EH_FRAME)
			eh = (void *)start;
		if (ph->p_type != PT_LOAD)
			continue;
		if (start < lo)
			lo = start;
		if (start + ph->p_memsz > hi)
			hi = start + ph->p_memsz;
		if (f->pc >= start && f->pc < start + ph->p_memsz)
			in = 1;
	}
	if (!in)
		return 0;
	memset(f->res, 0, sizeof *f->res);
	f->res->dlfo_map_start = (void *)lo;
	f->res->dlfo_map_end = (void *)hi;
	f->res->dlfo_eh_frame = eh;
	return 1;
}

int _dl_find_object(void *pc, struct dl_find_object *res)
{
	struct find f = { (uintptr_t)pc, res };
	return dl_iterate_phdr(find_pc, &f) ? 0 : -1;
}
