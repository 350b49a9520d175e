"""Deletes stale test and bench executables from a cargo target dir's debug/deps.

Every change to a crate's sources or features links its test binaries anew under a new hash;
cargo never deletes the old ones, and in a target dir shared across clones (scripts/test's
default) they add up to tens of GB. This keeps only the newest executable of each name
(`NAME-HASH`); an older one that is still wanted is simply linked again. Libraries and build
outputs are left alone.

Usage: python3 scripts/lib/prune_target.py CARGO_TARGET_DIR
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict


def main() -> int:
    deps = os.path.join(sys.argv[1], "debug", "deps")
    if not os.path.isdir(deps):
        return 0
    newest: dict[str, list[tuple[float, str, int]]] = defaultdict(list)
    for entry in os.scandir(deps):
        name, sep, _hash = entry.name.rpartition("-")
        # Executables have no extension (libraries are .rlib/.rmeta/.so/.d).
        if not sep or "." in entry.name or not entry.is_file():
            continue
        if not os.access(entry.path, os.X_OK):
            continue
        st = entry.stat()
        newest[name].append((st.st_mtime, entry.path, st.st_size))
    freed = 0
    for versions in newest.values():
        versions.sort()
        for _, path, size in versions[:-1]:
            try:
                os.remove(path)
                freed += size
            except OSError:
                pass
    if freed:
        print(f"pruned {freed / 1e9:.1f} GB of stale test executables from {deps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
