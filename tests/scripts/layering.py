#!/usr/bin/env python3
"""The layers of the tree, checked from every #include (docs/architecture.md, "Layers").

    runtime   core/        strata/*.hpp            all a plugin may include
    training  training/    strata/training/*.hpp   on the runtime
    search    search/      strata/search/*.hpp     on training
    tools     tools/       strata/tools/*.hpp      on training (not on search)
    interop   interop/     strata/interop/*.hpp    on the runtime (the only ONNX/protobuf user)
    apps      apps/        -                       on everything above
    plugins   plugins/ datasets/ examples/out_of_tree_plugin/: the runtime's public headers only

A file may include the public headers of its own layer and of the layers below it, and the private
headers of its own folder tree (core/src/x.hpp from core/src/y.cpp). Tests and benchmarks may
include any public header but no private one. Prints one line per violation and exits 1 if any.

    layering.py SOURCE_DIR
"""
import os
import re
import sys

# layer -> the public header prefixes it may include ("" is the runtime's strata/*.hpp)
ALLOWED = {
    "runtime": {""},
    "training": {"", "training"},
    "search": {"", "training", "search"},
    "tools": {"", "training", "tools"},
    "interop": {"", "interop"},
    "apps": {"", "training", "search", "tools", "interop"},
    "plugin": {""},
    "test": {"", "training", "search", "tools", "interop"},
}
FOLDERS = [  # (folder, layer); the first match wins
    ("core", "runtime"), ("training", "training"), ("search", "search"), ("tools", "tools"),
    ("interop", "interop"), ("apps", "apps"), ("plugins", "plugin"), ("datasets", "plugin"),
    ("examples/out_of_tree_plugin", "plugin"), ("examples", "test"), ("tests/plugins", "plugin"),
    ("tests", "test"), ("bench", "test"),
]
PUBLIC_ROOTS = {  # where each prefix's headers live
    "": "core/include/strata",
    "training": "training/include/strata/training",
    "search": "search/include/strata/search",
    "tools": "tools/include/strata/tools",
    "interop": "interop/include/strata/interop",
}
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')
# ONNX and protobuf headers: interop/ alone may include them (the runtime and the plugins describe
# models for export in the neutral form of strata/export.hpp), and the tests, which build small
# ONNX models with the protobuf classes (tests/test_onnx_import.cpp).
ONNX_INCLUDE = re.compile(r'^\s*#\s*include\s*<(onnx/|google/protobuf/)')


def layer_of(rel):
    for folder, layer in FOLDERS:
        if rel == folder or rel.startswith(folder + "/"):
            return folder, layer
    return None, None


def public_prefix(include, root):
    """The layer prefix of a public header "strata/..." that exists, else None."""
    if not include.startswith("strata/"):
        return None
    rest = include[len("strata/"):]
    prefix, _, name = rest.rpartition("/")
    if prefix not in PUBLIC_ROOTS or "/" in prefix:
        return None
    return prefix if os.path.isfile(os.path.join(root, PUBLIC_ROOTS[prefix], name)) else None


def check(root):
    problems = []
    for folder, _ in FOLDERS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder)):
            dirnames[:] = [d for d in dirnames if d not in ("corpus", "__pycache__")]
            for filename in filenames:
                if not filename.endswith((".cpp", ".hpp", ".h", ".cc")):
                    continue
                path = os.path.join(dirpath, filename)
                rel = os.path.relpath(path, root)
                own_folder, layer = layer_of(rel)
                if own_folder != folder:
                    continue  # walked again under its more specific folder
                with open(path, encoding="utf-8") as source:
                    for number, line in enumerate(source, 1):
                        if layer not in ("interop", "test") and ONNX_INCLUDE.match(line):
                            problems.append(f"{rel}:{number}: {line.strip()}: only interop/ may "
                                            "include ONNX or protobuf headers")
                            continue
                        match = INCLUDE.match(line)
                        if not match:
                            continue
                        problem = judge(root, rel, layer, match.group(1))
                        if problem:
                            problems.append(f"{rel}:{number}: #include \"{match.group(1)}\": {problem}")
    return problems


def judge(root, rel, layer, include):
    prefix = public_prefix(include, root)
    if prefix is not None:
        if prefix in ALLOWED[layer]:
            return None
        shown = f"strata/{prefix}/" if prefix else "the runtime"
        return f"a {layer} file includes a header of {shown} ({prefix or 'runtime'} is not below it)"
    if include.startswith("strata/"):
        return "no such public header"
    # A private header: must resolve inside the file's own top-level folder tree.
    here = os.path.dirname(os.path.join(root, rel))
    target = os.path.normpath(os.path.join(here, include))
    if not os.path.isfile(target):
        # tests include their support headers through an include directory
        for support in ("tests/support", "tests/fuzz"):
            candidate = os.path.join(root, support, include)
            if layer == "test" and os.path.isfile(candidate):
                return None
        return "not found beside the file"
    own_top = rel.split("/")[0]
    target_rel = os.path.relpath(target, root)
    if target_rel.split("/")[0] != own_top or ".." in include.split("/"):
        return f"reaches into {target_rel}, a private header of another part of the tree"
    if layer in ("plugin",) and "/include/" in target_rel:
        return "a plugin includes a public header by path instead of as strata/..."
    if layer == "test" and (target_rel.startswith(("core/", "training/", "search/", "tools/", "interop/"))):
        return "a test includes a private header"
    return None


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
    problems = check(root)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} include(s) cross the layers (docs/architecture.md, \"Layers\")")
        return 1
    print("layering: every #include respects the layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
