#!/usr/bin/env python3
"""tests/gen_sigdb.py - a synthetic ClamAV signature database of real size.

ClamAV's published databases cannot be downloaded here; this writes one in
their proportions, deterministic for a given --seed and --scale:

    tests/gen_sigdb.py DIR [--scale 1.0] [--seed 19]

Counts at --scale 1 (the counts of main.cvd + daily.cvd as sigtool lists
them in 2023-2024 are ~6.5 M signatures, of which ~95 % file and section
hashes; body and logical signatures are a few hundred thousand):

    synth.hdb   1,400,000  MD5:size:name           whole-file MD5
    synth.hsb   1,000,000  SHA1|SHA256:size:name   whole-file SHA (half each)
    synth.mdb   1,400,000  size:MD5:name           PE section MD5
    synth.msb     200,000  size:SHA256:name        PE section SHA256
                4,000,000  hash signatures: hash tables, cheap per scan (one
                           digest of each file/section), but most of the
                           load time and a large part of the memory
    synth.ndb     300,000  body signatures (extended format): a third plain
                           hex strings of 8-40 bytes (the Boyer-Moore
                           matcher), two thirds with ?? a? {n} {n-m} * and
                           (aa|bb) (the Aho-Corasick matcher, split on * and
                           {n-m}); a quarter start with words that occur in
                           mail, HTML and scripts, so ordinary messages walk
                           the trie and reach the verifier, as real mail
                           does with real signatures; target types 0 (any),
                           3 (HTML), 4 (mail), 7 (text) and 1 (PE, unused
                           by mail)
    synth.ldb      60,000  logical signatures of 2-4 subsignatures in the
                           same styles, expressions with & | and counts

--scale 0.1 divides every count by ten (about 430,000 signatures). Besides
the synthetic ones the database holds, at every scale:

    Synth.Test.EICAR        the EICAR test string (ndb, any offset)
    Synth.Test.NdbWildcard  "perimd-sigdb-ndb" {0-8} "wildcard-marker"
    Synth.Test.LdbMarker    both "perimd-sigdb-ldb-one" and
                            "perimd-sigdb-ldb-two" (ldb, 0&1)

so a test can check that each kind of signature still detects. No synthetic
pattern contains these markers (the generator checks).
"""
import argparse
import os
import random
import sys

EICAR = ("X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + "EICAR-STANDARD-" + "ANTIVIRUS-TEST-FILE!$H+H*").encode()
MARKERS = [b"perimd-sigdb-ndb", b"wildcard-marker", b"perimd-sigdb-ldb-one", b"perimd-sigdb-ldb-two"]

FULL = {"hdb": 1400000, "hsb": 1000000, "mdb": 1400000, "msb": 200000, "ndb": 300000, "ldb": 60000}

# Words that occur in mail, HTML and scripts: patterns starting with them
# make the automaton follow ordinary text a few bytes deep.
WORDS = [b"Content-Type", b"Received: ", b"<script", b"function", b"document.", b"window.",
         b"eval(", b"http://", b"https://", b"<html", b"<body", b"<iframe", b"charset=",
         b"base64", b"Subject: ", b"From: ", b"unescape(", b"String.fromCharCode", b"<a href=",
         b"var ", b"return ", b"ActiveXObject", b"WScript.Shell", b"powershell", b"cmd.exe",
         b"MZ\x90\x00", b"PK\x03\x04", b"%PDF-1.", b"\xd0\xcf\x11\xe0", b"Attribute VB_Name",
         b"Sub AutoOpen", b"Dear ", b"password", b"invoice", b"account", b"the ", b"and ",
         b"click here", b"verify your"]

FAMILIES = ["Win.Trojan", "Win.Malware", "Doc.Dropper", "Html.Phishing", "Js.Downloader",
            "Email.Phishing", "Xls.Downloader", "Pdf.Exploit", "Unix.Trojan", "Andr.Malware"]


def name(rng, kind, i):
    """A ClamAV-style name: Platform.Category.Family-ID-REV."""
    return "%s.Synth%s-%d-%d" % (rng.choice(FAMILIES), kind, 9000000 + i, rng.randint(0, 3))


def rbytes(rng, n, text=False):
    """n random bytes; text: printable ASCII, as in scripts and HTML."""
    if text:
        return bytes(rng.randint(0x20, 0x7e) for _ in range(n))
    return rng.getrandbits(8 * n).to_bytes(n, "big")


def static(rng, lo, hi, lead=False):
    """A static run of hex, possibly starting with a common word."""
    if lead:
        w = rng.choice(WORDS)
        return (w + rbytes(rng, rng.randint(2, 8), text=rng.random() < 0.7)).hex()
    return rbytes(rng, rng.randint(lo, hi), text=rng.random() < 0.4).hex()


def gap(rng):
    """One wildcard between static runs."""
    r = rng.random()
    if r < 0.30:
        return "??" * rng.randint(1, 4)
    if r < 0.45:
        return "{%d}" % rng.randint(1, 32)
    if r < 0.70:
        lo = rng.randint(0, 16)
        return "{%d-%d}" % (lo, lo + rng.randint(1, 64))
    if r < 0.80:
        return "*"
    if r < 0.90:
        # an alternative of single bytes, then static bytes
        return "(%s)" % "|".join(rbytes(rng, 1).hex() for _ in range(rng.randint(2, 4)))
    # a nibble wildcard, high or low
    b = rbytes(rng, 1).hex()
    return rng.choice([b[0] + "?", "?" + b[1]])


def body(rng, lead):
    """A body pattern: plain (BM) a third of the time, else with wildcards (AC)."""
    if rng.random() < 0.33:
        return static(rng, 8, 40, lead)
    parts = [static(rng, 4, 16, lead)]
    for _ in range(rng.randint(1, 4)):
        parts.append(gap(rng))
        parts.append(static(rng, 4, 16))
    return "".join(parts)


def offset(rng):
    r = rng.random()
    if r < 0.75:
        return "*"
    if r < 0.85:
        return "0"
    if r < 0.95:
        return "EOF-%d" % rng.randint(16, 4096)
    return "%d,%d" % (rng.randint(0, 1024), rng.randint(16, 4096))


def target(rng):
    return rng.choice([0, 0, 0, 0, 3, 3, 4, 7, 1])


def clean(pattern):
    """No synthetic pattern may contain a test marker."""
    for m in MARKERS + [EICAR[:16]]:
        if m.hex() in pattern:
            raise SystemExit("gen_sigdb: a synthetic pattern holds a marker; change --seed")
    return pattern


def write_hashes(d, rng, counts):
    with open(os.path.join(d, "synth.hdb"), "w") as f:
        for i in range(counts["hdb"]):
            f.write("%s:%d:%s\n" % (rbytes(rng, 16).hex(), rng.randint(64, 8 << 20), name(rng, "H", i)))
    with open(os.path.join(d, "synth.hsb"), "w") as f:
        for i in range(counts["hsb"]):
            n = 20 if i % 2 else 32
            f.write("%s:%d:%s\n" % (rbytes(rng, n).hex(), rng.randint(64, 8 << 20), name(rng, "S", i)))
    with open(os.path.join(d, "synth.mdb"), "w") as f:
        for i in range(counts["mdb"]):
            f.write("%d:%s:%s\n" % (rng.randint(512, 1 << 20), rbytes(rng, 16).hex(), name(rng, "M", i)))
    with open(os.path.join(d, "synth.msb"), "w") as f:
        for i in range(counts["msb"]):
            f.write("%d:%s:%s\n" % (rng.randint(512, 1 << 20), rbytes(rng, 32).hex(), name(rng, "P", i)))


def write_bodies(d, rng, counts):
    with open(os.path.join(d, "synth.ndb"), "w") as f:
        f.write("Synth.Test.EICAR:0:*:%s\n" % EICAR.hex())
        f.write("Synth.Test.NdbWildcard:0:*:%s{0-8}%s\n" % (MARKERS[0].hex(), MARKERS[1].hex()))
        for i in range(counts["ndb"]):
            t = target(rng)
            o = offset(rng) if t != 1 else rng.choice(["*", "EP+0", "EP+%d" % rng.randint(1, 512)])
            f.write("%s:%d:%s:%s\n" % (name(rng, "N", i), t, o, clean(body(rng, rng.random() < 0.25))))
    with open(os.path.join(d, "synth.ldb"), "w") as f:
        f.write("Synth.Test.LdbMarker;Engine:51-255,Target:0;0&1;%s;%s\n" % (MARKERS[2].hex(), MARKERS[3].hex()))
        for i in range(counts["ldb"]):
            n = rng.randint(2, 4)
            subs = [clean(body(rng, rng.random() < 0.25)) for _ in range(n)]
            if n == 2:
                expr = rng.choice(["0&1", "0|1", "0>1&1", "(0|1)>2"])
            elif n == 3:
                expr = rng.choice(["0&1&2", "(0|1)&2", "0&(1|2)", "(0&1)|2"])
            else:
                expr = rng.choice(["0&1&2&3", "(0|1)&(2|3)", "(0&1&2)|3"])
            f.write("%s;Engine:51-255,Target:%d;%s;%s\n" % (name(rng, "L", i), rng.choice([0, 0, 3, 4, 7]),
                                                         expr, ";".join(subs)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=19)
    a = ap.parse_args()
    if not 0 < a.scale <= 1:
        sys.exit("gen_sigdb: --scale must be in (0, 1]")
    counts = {k: max(1, int(v * a.scale)) for k, v in FULL.items()}
    os.makedirs(a.dir, exist_ok=True)
    rng = random.Random(a.seed)
    write_hashes(a.dir, rng, counts)
    write_bodies(a.dir, rng, counts)
    print("gen_sigdb: %s: %d signatures (%s) + 3 test signatures, seed %d" % (
        a.dir, sum(counts.values()), ", ".join("%s %d" % kv for kv in counts.items()), a.seed))


if __name__ == "__main__":
    main()
