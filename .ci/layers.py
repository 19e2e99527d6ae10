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
    "bridge": 7,
    "lib": 8,
    "bin": 8,
}

TEST_MODULE = re.compile(
    r"\s*#\[cfg\((test|loom|all\((test|loom)[^\]]*\)|any\(test[^\]]*\))\)\]\s*$"
)
MOD_OPEN = re.compile(r"\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{")
CRATE_PATH = re.compile(r"\bcrate::(\w+)")


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


def module_path(path, src):
    """The module path of a file: src/queue/recovery/mod.rs -> [queue, recovery]."""
    parts = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if parts[-1] in ("mod", "lib"):
        parts = parts[:-1]
    return parts


def use_targets(tree):
    """The first segment of every path in a use tree (`a::b`, `{a, b::{c}}`)."""
    targets, depth, start = [], 0, 0
    tree = tree.strip()
    if tree.startswith("{") and tree.endswith("}"):
        inner = tree[1:-1]
        for i, char in enumerate(inner + ","):
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            elif char == "," and depth == 0:
                part = inner[start:i].strip()
                if part:
                    targets.append(re.split(r"::|\s", part)[0])
                start = i + 1
        return targets
    return [re.split(r"::|\s|;", tree)[0]]


def statement_targets(statement, own_module):
    """Top-level modules a `use` statement names, resolving `crate::` and `super::`."""
    body = re.sub(r"^\s*(pub(\([^)]*\))?\s+)?use\s+", "", statement).rstrip(";").strip()
    if body.startswith("crate::"):
        return use_targets(body[len("crate::"):])
    if body.startswith("super::"):
        module = list(own_module)
        while body.startswith("super::"):
            body = body[len("super::"):]
            module = module[:-1]
        if module:
            return [module[0]]
        return use_targets(body)
    return []


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
            own_module = module_path(path, src)
            lines = list(code_lines(text))
            # `use` statements, joined across lines (rustfmt breaks long groups).
            statement, first = None, 0
            for number, line in lines:
                if statement is None and re.match(r"\s*(pub(\([^)]*\))?\s+)?use\s", line):
                    statement, first = "", number
                if statement is not None:
                    statement += " " + line.strip()
                    if ";" in line:
                        for target in statement_targets(statement, own_module):
                            check(path, first, own, target, problems)
                        statement = None
            for number, line in lines:
                if re.match(r"\s*(pub(\([^)]*\))?\s+)?use\s", line):
                    continue  # checked as a whole statement above
                for target in set(CRATE_PATH.findall(line)):
                    check(path, number, own, target, problems)
    for problem in problems:
        print(problem)
    if problems:
        print(f"layer check: {len(problems)} import(s) break the layering", file=sys.stderr)
        return 1
    print("layer check: every import goes downward")
    return 0


def check(path, number, own, target, problems):
    """Records a problem if module `own` may not import top-level module `target`."""
    if target == own or not target or target in ("self", "super"):
        return
    if target not in RANKS:
        # A name re-exported at the crate root (e.g. `crate::Queue`): only the root
        # itself and the binary may lean on those.
        if own not in ("lib", "bin"):
            problems.append(
                f"{path}:{number}: uses `crate::{target}`, a root re-export;"
                " import it from its layer"
            )
        return
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


if __name__ == "__main__":
    sys.exit(main())
