#!/usr/bin/python3
"""Checks that README.md and docs/*.md state nothing that can silently go stale
(tests/scripts/test_docs.sh runs it).

1. Measured figures (a number followed by images/s, img/s, GFLOP/s or GF/s) appear only inside
     <!-- bench:KIND FILE.json --> ... <!-- /bench -->   rendered by bench/render_docs.py, or
     <!-- measured: MACHINE, YYYY-MM-DD ... --> ... <!-- /measured -->   a record of a past run
   and each such block names a machine and a date.
2. The keys a resume may change, listed in docs between <!-- resume-keys --> and
   <!-- /resume-keys -->, are exactly those of resume_may_change() in training/src/resume.cpp.
3. Every format_version a sample in docs/checkpoint-format.md shows is the version the tool writes
   (read from CHECKPOINT, one the tool just wrote), and the supported range it quotes is the
   tool's.
4. The conformance checks listed in docs/writing-a-plugin.md between <!-- conformance-checks -->
   and <!-- /conformance-checks --> (bold names) are the ones `strata check-plugin` runs (the names
   in CHECK_PLUGIN_OUTPUT).

usage: docs_lint.py SOURCE_DIR CHECKPOINT CHECK_PLUGIN_OUTPUT
"""
import glob
import os
import re
import sys

FIGURE = re.compile(r"\d[\d,.]*\s*(?:k\s*)?(?:images/s|img/s|GFLOP/s|GF/s)\b")
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def doc_files(root):
    return ["README.md"] + sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "docs", "*.md")))


def check_figures(root, problems):
    for name in doc_files(root):
        lines = open(os.path.join(root, name), encoding="utf-8").read().split("\n")
        region = None  # (kind, start line, has machine and date)
        for number, line in enumerate(lines, 1):
            opening = re.match(r"\s*<!-- (bench:\S+|measured:)(.*?)-->", line)  # at a line's start
            if opening and region is None:
                region = [opening.group(1), number, opening.group(2), False]
                if region[0] == "measured:":
                    text = region[2]
                    if not DATE.search(text) or len(DATE.sub("", text).strip(" ,.;")) < 3:
                        problems.append(f"{name}:{number}: a measured block must name the machine and "
                                        f"the date (YYYY-MM-DD): <!-- measured: MACHINE, DATE -->")
                    region[3] = True
                continue
            if re.match(r"\s*<!-- /(bench|measured) -->", line):
                if region is None:
                    problems.append(f"{name}:{number}: a closing marker without an opening one")
                elif not region[3]:
                    problems.append(f"{name}:{region[1]}: the {region[0]} block names no machine and "
                                    "date (\"Measured on MACHINE, YYYY-MM-DD\")")
                region = None
                continue
            if region is not None:
                if region[0].startswith("bench:") and line.startswith("Measured on ") or \
                        "Measured on " in line and DATE.search(line):
                    region[3] = region[3] or bool(DATE.search(line))
                continue
            if FIGURE.search(line):
                problems.append(f"{name}:{number}: a measured figure outside a bench or measured "
                                f"block: {line.strip()[:100]}")
        if region is not None:
            problems.append(f"{name}:{region[1]}: {region[0]} block is never closed")


def check_resume_keys(root, problems):
    source = open(os.path.join(root, "training", "src", "resume.cpp")).read()
    body = re.search(r"kAllowed\{(.*?)\};", source, re.S)
    if not body:
        problems.append("training/src/resume.cpp: cannot find kAllowed{...} in resume_may_change()")
        return
    code_keys = {k for k in re.findall(r'"([^"]+)"', re.sub(r"//.*", "", body.group(1)))
                 if not k.endswith("[]")}
    found = 0
    for name in doc_files(root):
        text = open(os.path.join(root, name), encoding="utf-8").read()
        for number_block in re.finditer(r"<!-- resume-keys -->(.*?)<!-- /resume-keys -->", text, re.S):
            found += 1
            line = text[:number_block.start()].count("\n") + 1
            doc_keys = set(re.findall(r"`([a-z_.]+)`", number_block.group(1)))
            if doc_keys != code_keys:
                problems.append(f"{name}:{line}: the resume keys listed ({', '.join(sorted(doc_keys))}) "
                                f"differ from training/src/resume.cpp's ({', '.join(sorted(code_keys))}): "
                                f"missing {sorted(code_keys - doc_keys)}, extra {sorted(doc_keys - code_keys)}")
    if not found:
        problems.append("no <!-- resume-keys --> list in the docs")


def check_format_version(root, checkpoint, problems):
    import h5py
    with h5py.File(checkpoint, "r") as f:
        written = int(f.attrs["format_version"])
    header = open(os.path.join(root, "core", "include", "strata", "checkpoint.hpp")).read()
    oldest = re.search(r"kCheckpointOldestFormatVersion\s*=\s*(\d+)", header)
    oldest = int(oldest.group(1)) if oldest else None
    name = "docs/checkpoint-format.md"
    for number, line in enumerate(open(os.path.join(root, name), encoding="utf-8"), 1):
        for pattern in (r"format_version = (\d+)", r"'format_version': (\d+)", r"`numpy.int32`: `(\d+)`",
                        r"describes\s+`format_version` (\d+)", r"format_version\"\] = np.int32\((\d+)\)"):
            for match in re.finditer(pattern, line):
                if int(match.group(1)) != written:
                    problems.append(f"{name}:{number}: shows format_version {match.group(1)}, but the "
                                    f"tool writes {written}")
        for match in re.finditer(r"reads versions? (\d+)(?: to (\d+))?", line):
            low, high = int(match.group(1)), int(match.group(2) or match.group(1))
            if high != written or (oldest is not None and low != oldest):
                problems.append(f"{name}:{number}: quotes 'reads versions {low} to {high}', the tool "
                                f"reads {oldest} to {written}")


def check_conformance(root, output_path, problems):
    # check-plugin prints one row per case and check: "CASE   CHECK   pass|FAIL   DETAIL".
    output = open(output_path).read()
    ran = set(re.findall(r"\s(\w+)\s+(?:pass|FAIL|fail|skip)\b", output))
    if not ran:
        problems.append(f"check-plugin printed no checks:\n{output}")
        return
    name = "docs/writing-a-plugin.md"
    text = open(os.path.join(root, name), encoding="utf-8").read()
    block = re.search(r"<!-- conformance-checks -->(.*?)<!-- /conformance-checks -->", text, re.S)
    if not block:
        problems.append(f"{name}: no <!-- conformance-checks --> list")
        return
    documented = set(re.findall(r"^- \*\*(\w+)\*\*", block.group(1), re.M))
    if documented != ran:
        line = text[:block.start()].count("\n") + 1
        problems.append(f"{name}:{line}: the documented checks ({', '.join(sorted(documented))}) "
                        f"differ from the ones check-plugin runs ({', '.join(sorted(ran))})")


def main():
    root, checkpoint, check_plugin_output = sys.argv[1:4]
    problems = []
    check_figures(root, problems)
    check_resume_keys(root, problems)
    check_format_version(root, checkpoint, problems)
    check_conformance(root, check_plugin_output, problems)
    for problem in problems:
        print("FAIL", problem)
    print(f"docs lint: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
