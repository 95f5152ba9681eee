/*
 * replay.c - run a libFuzzer target without libFuzzer: call
 * LLVMFuzzerTestOneInput on every file named on the command line, or in
 * each directory named (not recursive). Used to replay the corpora in the
 * plain ASan/UBSan test build; a crash there is a sanitizer abort. Prints
 * one "ok" line with the count, in the t.h summary form.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int nfiles, nerrors;

/* replay_file - feed one file's bytes to the target */
static void replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf = NULL;
	size_t len = 0, cap = 0, n;

	if (!f) {
		perror(path);
		nerrors++;
		return;
	}
	do {
		if (len == cap) {
			cap = cap ? 2 * cap : 65536;
			buf = realloc(buf, cap);
			if (!buf) {
				fprintf(stderr, "out of memory\n");
				exit(2);
			}
		}
		n = fread(buf + len, 1, cap - len, f);
		len += n;
	} while (n > 0);
	if (ferror(f)) {
		perror(path);
		nerrors++;
	} else {
		/* an exact-size copy lets ASan see reads past the input */
		uint8_t *exact = malloc(len ? len : 1);

		if (!exact) {
			fprintf(stderr, "out of memory\n");
			exit(2);
		}
		memcpy(exact, buf, len);
		LLVMFuzzerTestOneInput(exact, len);
		free(exact);
		nfiles++;
	}
	free(buf);
	fclose(f);
}

/* replay_path - a file, or every regular file in a directory */
static void replay_path(const char *path)
{
	struct stat st;
	DIR *d;
	struct dirent *e;

	if (stat(path, &st) != 0) {
		perror(path);
		nerrors++;
		return;
	}
	if (!S_ISDIR(st.st_mode)) {
		replay_file(path);
		return;
	}
	d = opendir(path);
	if (!d) {
		perror(path);
		nerrors++;
		return;
	}
	while ((e = readdir(d)) != NULL) {
		char full[4096];

		if (e->d_name[0] == '.')
			continue;
		snprintf(full, sizeof(full), "%s/%s", path, e->d_name);
		if (stat(full, &st) == 0 && S_ISREG(st.st_mode))
			replay_file(full);
	}
	closedir(d);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
		return 2;
	}
	for (int i = 1; i < argc; i++)
		replay_path(argv[i]);
	if (nerrors)
		printf("FAIL %s: %d inputs replayed, %d unreadable\n", argv[0],
		       nfiles, nerrors);
	else
		printf("ok %s: %d inputs replayed\n", argv[0], nfiles);
	printf("%d passed, %d failed\n", nerrors ? 0 : 1, nerrors ? 1 : 0);
	return nerrors ? 1 : 0;
}
