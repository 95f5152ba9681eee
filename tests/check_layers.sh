#!/usr/bin/env bash
# tests/check_layers.sh - perimd's layering holds (README "Layers"):
#
#  1. The quoted-#include graph of perimd/ has no cycle but those on
#     ALLOWED_CYCLES below. A module is a .c and its .h; a file without a
#     header of its own (av_sup.c, av_int.h, relay_smtp.c, smtpd_txn.c,
#     grey_mysql.c, stats_names.h, conf_params.h, ...) belongs to the module
#     named by its name up to the first '_'.
#  2. Every exported (external-linkage) symbol of perimd/*.c carries its
#     module's prefix ("dns_" in dns.c, "grey_" in grey_sqlite.c; for a
#     module named a_b, "a_" too: smtp_ in smtp_proto.c), or one of the
#     aliases below. Read with nm from the objects of build/test (or
#     build/dev when there is no test build); an object older than its .c
#     is an error (build first: make -C perimd MODE=test).
#
# Run from anywhere: bash tests/check_layers.sh (exit 0 = holds). It prints
# the module graph's cycles, if any, with -v the whole graph bottom-up.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1

# A cycle allowed, as the set of its modules (sorted, space-separated).
# dns/dnscache: dnscache.c is dns.c's cache of answers, split off for
# size; it holds dns.c's reference-counted results (dns_result_ref/unref,
# the TEMPFAIL status) and dns.c asks it before the network. One module in
# two files. Its table is shcache since issue 14; the result type (refs,
# TEMPFAIL) is what still ties it to dns.c.
ALLOWED_CYCLES=(
	"dns dnscache"
)

# Exported names allowed beside MODULE_, with why:
#   main      main: the program's entry point.
#   log       fatal, x*alloc, xstrdup, xstrndup: the die-on-failure helpers
#             every module calls; short names on purpose, like libc's.
#   buf       sb_: the text buffer's verbs (struct strbuf), used everywhere.
#   maps      map_: one map's operations (map_open, map_lookup); the module
#             is named for the set of map types.
#   maps_sql  map_sql_: the SQL map type of maps.c, same reason.
#   maps_ldap map_ldap_: the LDAP map type of maps.c, same reason.
#   maps_regexp map_regexp_: the regexp map type of maps.c, same reason.
#   dnscheck  dnsbl_: the DNSBL site syntax (dnsbl_site_parse/match).
#   rules     policy_: rules.c implements the per-session half of
#             policy_step.h (policy_session_new, policy_helo, policy_mail,
#             policy_is_role, policy_addr_check), which smtpd.c calls.
#   relay     bconn_, req_, body_fill, txn_start: relay_int.h, the interface
#             relay.c and relay_smtp.c share and nothing else includes.
ALIASES='
main      main$
log       fatal$ xmalloc$ xcalloc$ xrealloc$ xstrdup$ xstrndup$
buf       sb_
maps      map_
maps_sql  map_sql_
maps_ldap map_ldap_
maps_regexp map_regexp_
dnscheck  dnsbl_
rules     policy_
relay     bconn_ req_ body_fill$ txn_start$
'

BUILD=build/test
[ -f "$BUILD/libperimd.a" ] || BUILD=build/dev

export ALLOWED="$(printf '%s\n' "${ALLOWED_CYCLES[@]}")" ALIASES BUILD VERBOSE=${1:-}
exec python3 - <<'EOF'
import os, re, subprocess, sys

src = "perimd"
files = sorted(f for f in os.listdir(src) if f.endswith((".c", ".h")))
headers = {f[:-2] for f in files if f.endswith(".h")}
sources = {f[:-2] for f in files if f.endswith(".c")}
bad = []


def module(name):
    """The module a file belongs to: its stem when there are both a .c and
    a .h of it; else the stem up to the first '_' when that names a header
    (av_int.h, av_sup.c -> av); else its stem (main.c, greywl.c)."""
    stem = name[:-2]
    if stem in headers and stem in sources:
        return stem
    head = stem.split("_")[0]
    return head if head != stem and head in headers else stem


# 1. The include graph and its strongly connected components (Tarjan).
inc = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
graph = {}
for f in files:
    m = module(f)
    graph.setdefault(m, set())
    text = open(os.path.join(src, f), encoding="utf-8", errors="replace").read()
    for h in inc.findall(text):
        if os.path.exists(os.path.join(src, h)):
            t = module(h)
            if t != m:
                graph[m].add(t)

index, low, stack, on, sccs = {}, {}, [], set(), []


def strong(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(graph[v]):
        if w not in index:
            strong(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(sorted(comp))


sys.setrecursionlimit(10000)
for v in sorted(graph):
    if v not in index:
        strong(v)

allowed = {tuple(sorted(l.split())) for l in os.environ["ALLOWED"].splitlines() if l.strip()}
for comp in sccs:
    if len(comp) > 1:
        if tuple(comp) in allowed:
            print("check_layers: allowed cycle:", " ".join(comp))
        else:
            bad.append("include cycle of %d modules: %s" % (len(comp), " ".join(comp)))
            for v in comp:
                print("   %s -> %s" % (v, " ".join(sorted(w for w in graph[v] if w in comp))))

if os.environ.get("VERBOSE") == "-v":
    # Tarjan emits components callees first: that is bottom-up.
    for comp in sccs:
        deps = sorted(set().union(*(graph[v] for v in comp)) - set(comp))
        print("%-24s <- %s" % ("/".join(comp), " ".join(deps)))

# 2. Exported symbols carry their module's prefix.
aliases = {}
for line in os.environ["ALIASES"].splitlines():
    parts = line.split()
    if parts:
        aliases[parts[0]] = parts[1:]
build = os.environ["BUILD"]
for f in files:
    if not f.endswith(".c"):
        continue
    obj = os.path.join(build, f[:-2] + ".o")
    if not os.path.exists(obj):
        bad.append("%s: no object (build first: make -C perimd MODE=test)" % obj)
        continue
    if os.path.getmtime(obj) < os.path.getmtime(os.path.join(src, f)):
        bad.append("%s: older than %s (build first)" % (obj, f))
        continue
    m = module(f)
    pats = [m + "_"] + ([m.split("_")[0] + "_"] if "_" in m else []) + aliases.get(m, [])
    out = subprocess.run(["nm", "-g", "--defined-only", obj], capture_output=True, text=True)
    if out.returncode:
        bad.append("nm %s: %s" % (obj, out.stderr.strip()))
        continue
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        sym = parts[2]
        if sym.startswith("__"):   # compiler-made (sanitizer, TLS helpers)
            continue
        if not any(re.match(p if p.endswith("$") else re.escape(p), sym) for p in pats):
            bad.append("%s: exported %s lacks the prefix %s" % (f, sym, " or ".join(pats)))

for b in bad:
    print("check_layers: FAIL:", b)
if not bad:
    print("check_layers: ok (%d modules, no cycle off the allow-list, prefixes kept)" % len(graph))
sys.exit(1 if bad else 0)
EOF
