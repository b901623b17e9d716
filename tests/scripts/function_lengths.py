#!/usr/bin/env python3
"""The longest functions of the C++ sources, and a limit on them outside plugins/.

    function_lengths.py SOURCE_DIR [--limit N] [--top K] [FOLDER...]

Lists the K longest functions (lines from the signature to the closing brace, comments included)
of the given folders (default: core training search tools apps), and exits 1 when one of them is
longer than N lines (default 150): a function that long does several things, and the architecture
(docs/architecture.md) keeps such functions out of everything but the plugins' kernels. Lambdas
and local classes count as part of the function that holds them.

A small scanner rather than a compiler: it strips comments, string and character literals, then
takes as a function body every brace that opens at namespace or class scope after a parenthesised
parameter list (constructors with initializer lists included).
"""
import argparse
import os
import re
import sys

DEFAULT_FOLDERS = ["core", "training", "search", "tools", "apps"]
NOT_FUNCTIONS = re.compile(r"^\s*(namespace|class|struct|union|enum|extern\s+\"C\")\b")
CONTROL = re.compile(r"\b(if|for|while|switch|catch)\s*$")


def strip(text):
    """Comments, strings and characters blanked, newlines kept (so line numbers hold)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == 'R' and text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            delim_end = text.find("(", i + 2)
            delim = text[i + 2:delim_end]
            j = text.find(")" + delim + '"', delim_end)
            j = n if j < 0 else j + len(delim) + 2
            out.append('""' + re.sub(r"[^\n]", " ", text[i + 2:j]))
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            out.append(c + " " * max(0, j - i - 1) + c)
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def functions(path):
    """(name, first line, last line) of each function body at namespace or class scope."""
    text = strip(open(path, encoding="utf-8").read())
    found = []
    stack = []  # for each open brace: "scope" (namespace/class/extern) or "body" or "other"
    start = 0  # where the current declaration began (after the last ; { or } at scope level)
    i = 0
    while i < len(text):
        c = text[i]
        if c == "{":
            in_scope = all(kind == "scope" for kind in stack)
            head = text[start:i]
            kind = "other"
            if in_scope:
                if NOT_FUNCTIONS.search(head.strip()) or re.search(r"\b(class|struct|union|enum)\b[^()]*$", head):
                    kind = "scope"
                elif "(" in head and not re.search(r"=\s*$", head.strip()) and not CONTROL.search(head.split("(")[0]):
                    kind = "body"
                    name_match = re.search(r"([~\w:<>]+)\s*\(", head)
                    name = name_match.group(1) if name_match else "?"
                    first = text.count("\n", 0, start + len(head) - len(head.lstrip())) + 1
                    stack.append(kind)
                    depth = 1
                    j = i + 1
                    while j < len(text) and depth:
                        if text[j] == "{":
                            depth += 1
                        elif text[j] == "}":
                            depth -= 1
                        j += 1
                    last = text.count("\n", 0, j) + 1
                    found.append((name, first, last))
                    stack.pop()
                    i = j
                    start = j
                    continue
            stack.append(kind)
            start = i + 1
        elif c == "}":
            if stack:
                stack.pop()
            start = i + 1
        elif c == ";" and all(kind == "scope" for kind in stack):
            start = i + 1
        elif c == "#" and text[start:i].strip() == "":
            # a preprocessor line is no part of the next declaration
            j = text.find("\n", i)
            while j > 0 and text[j - 1] == "\\":
                j = text.find("\n", j + 1)
            i = len(text) if j < 0 else j
            start = i
            continue
        i += 1
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("folders", nargs="*")
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    rows = []
    for folder in args.folders or DEFAULT_FOLDERS:
        for dirpath, _, filenames in os.walk(os.path.join(args.root, folder)):
            for filename in sorted(filenames):
                if filename.endswith((".cpp", ".hpp")):
                    path = os.path.join(dirpath, filename)
                    rel = os.path.relpath(path, args.root)
                    for name, first, last in functions(path):
                        rows.append((last - first + 1, f"{rel}:{first}", name))
    rows.sort(reverse=True)
    for length, where, name in rows[:args.top]:
        print(f"{length:5d}  {where}  {name}")
    over = [row for row in rows if row[0] > args.limit]
    if over:
        print(f"{len(over)} function(s) longer than {args.limit} lines")
        return 1
    print(f"no function longer than {args.limit} lines ({len(rows)} functions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
