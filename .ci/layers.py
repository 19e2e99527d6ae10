#!/usr/bin/env python3
"""Layer check: a module of src/ may import only from layers below its own.

Layers, bottom to top (ARCHITECTURE.md says what each owns). Modules on one rank may not
import each other either, so no import goes up and none forms a circle between layers.
Test code (`#[cfg(test)]` / `#[cfg(loom)]` modules, `tests.rs`) may reach anywhere.

Usage: python3 .ci/layers.py [SRC_DIR]     exits 1 and names each offending line.
"""
import os
import re
import sys

RANKS = {
    "base": 0,
    "error": 1,
    "ring": 2,
    "liveness": 2,
    "engine": 3,
    "layout": 4,
    "queue": 5,
    "shm": 6,
    "lib": 7,
    "bin": 7,
}

TEST_MODULE = re.compile(
    r"\s*#\[cfg\((test|loom|all\((test|loom)[^\]]*\)|any\(test[^\]]*\))\)\]\s*$"
)
MOD_OPEN = re.compile(r"\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{")
CRATE_PATH = re.compile(r"\bcrate::(\w+)")
# `use crate::{a::x, b::y}` names several top-level modules at once.
CRATE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}")


def layer_of(path, src):
    rel = os.path.relpath(path, src)
    top = rel.split(os.sep)[0]
    if top.endswith(".rs"):
        top = top[: -len(".rs")]
    return top


def code_lines(text):
    """Yields (line number, line) outside test modules and comments."""
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        if TEST_MODULE.match(lines[i]) and i + 1 < len(lines) and MOD_OPEN.match(lines[i + 1]):
            depth = 0
            i += 1
            while i < len(lines):
                depth += lines[i].count("{") - lines[i].count("}")
                i += 1
                if depth <= 0:
                    break
            continue
        line = lines[i].split("//")[0]
        yield i + 1, line
        i += 1


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "src"
    problems = []
    for folder, _, files in os.walk(src):
        for name in sorted(files):
            if not name.endswith(".rs") or name == "tests.rs":
                continue
            path = os.path.join(folder, name)
            own = layer_of(path, src)
            if own not in RANKS:
                problems.append(f"{path}: module '{own}' has no layer in .ci/layers.py")
                continue
            with open(path, encoding="utf-8") as f:
                text = f.read()
            for number, line in code_lines(text):
                targets = set(CRATE_PATH.findall(line))
                for group in CRATE_GROUP.findall(line):
                    targets |= {part.strip().split("::")[0] for part in group.split(",")}
                for target in targets:
                    if target == own or not target:
                        continue
                    if target not in RANKS:
                        # A name re-exported at the crate root (e.g. `crate::Queue`):
                        # only the root itself and the binary may lean on those.
                        if own not in ("lib", "bin"):
                            problems.append(
                                f"{path}:{number}: uses `crate::{target}`, a root re-export;"
                                " import it from its layer"
                            )
                        continue
                    if RANKS[target] > RANKS[own]:
                        problems.append(
                            f"{path}:{number}: `{own}` (rank {RANKS[own]}) imports"
                            f" `{target}` (rank {RANKS[target]}): imports go only downward"
                        )
                    elif RANKS[target] == RANKS[own]:
                        problems.append(
                            f"{path}:{number}: `{own}` imports `{target}`, on the same rank"
                            f" ({RANKS[own]}): neither may import the other"
                        )
    for problem in problems:
        print(problem)
    if problems:
        print(f"layer check: {len(problems)} import(s) break the layering", file=sys.stderr)
        return 1
    print("layer check: every import goes downward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
