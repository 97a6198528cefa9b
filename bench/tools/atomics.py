#!/usr/bin/env python3
"""Atomic (locked) instructions per request in ringlb's binary, from two callgrind runs.

An instruction count hides what a `lock`-prefixed read-modify-write costs: a full barrier,
some 10-20 cycles each. This counts how many of them one more request executes, by function:
callgrind's per-instruction counts (`--dump-instr=yes`) of user_instructions.py's two runs
(small and large), matched against `objdump -d` of the binary (every `lock` instruction and
every `xchg` with memory). Only ringlb's own binary is read (mimalloc, h2, tokio, bytes are in
it); libc's are not counted.

Usage (release build first; valgrind, h2load and objdump installed):
  VALGRIND_OPTS="--dump-instr=yes --compress-pos=no --compress-strings=no" \\
      bench/tools/user_instructions.py --subjects ringlb --modes h2 --keep
  bench/tools/atomics.py FOLDER [--binary target/release/ringlb] [--mode h2] [--top 30]
FOLDER is the one user_instructions.py names with --keep.
"""
import argparse
import bisect
import collections
import glob
import os
import re
import subprocess
import sys


def costs(path):
    """Own instructions executed at each (object, address) in one callgrind output."""
    out = collections.Counter()
    ob = None
    after_calls = False
    for line in open(path):
        if line.startswith("ob="):
            ob = line[3:].strip()
        elif line.startswith("calls="):
            after_calls = True  # the next cost line is the call's inclusive cost
        elif line.startswith("0x"):
            if after_calls:
                after_calls = False
                continue
            parts = line.split()
            out[(ob, int(parts[0], 16))] += int(parts[-1])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--binary", default="target/release/ringlb")
    ap.add_argument("--mode", default="h2")
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    runs = sorted(glob.glob(os.path.join(args.folder, "cg.ringlb.%s.*" % args.mode)),
                  key=lambda p: int(p.rsplit(".", 1)[1]))
    if len(runs) != 2:
        sys.exit("need the two callgrind outputs cg.ringlb.%s.N in %s" % (args.mode, args.folder))
    (small_n, small), (large_n, large) = [(int(p.rsplit(".", 1)[1]), costs(p)) for p in runs]
    if not large:
        sys.exit("no per-instruction counts: run user_instructions.py with VALGRIND_OPTS as above")
    binary = os.path.realpath(args.binary)
    locked = {}
    dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True, text=True)
    for line in dis.stdout.splitlines():
        m = re.match(r"\s*([0-9a-f]+):\s+(.*)", line)
        if m and (m.group(2).startswith("lock") or re.match(r"xchg\s+\S*\(", m.group(2))):
            locked[int(m.group(1), 16)] = m.group(2)
    syms = []
    nm = subprocess.run(["nm", "-C", "--defined-only", binary], capture_output=True, text=True)
    for line in nm.stdout.splitlines():
        p = line.split(" ", 2)
        if len(p) == 3 and p[1] in "tTwW":
            syms.append((int(p[0], 16), p[2]))
    syms.sort()
    starts = [s[0] for s in syms]
    per = collections.Counter()
    total = 0.0
    for (ob, addr), n in large.items():
        if ob is None or os.path.realpath(ob) != binary or addr not in locked:
            continue
        d = (n - small.get((ob, addr), 0)) / (large_n - small_n)
        total += d
        i = bisect.bisect_right(starts, addr) - 1
        per[syms[i][1] if i >= 0 else hex(addr)] += d
    print("locked instructions per request (%s, %s): %.1f" % (os.path.basename(binary), args.mode, total))
    for name, d in per.most_common(args.top):
        if d >= 0.05:
            print("%7.2f  %s" % (d, name[:120]))


if __name__ == "__main__":
    main()
