#!/usr/bin/python3
"""Runs the command and Python blocks of README.md and docs/*.md (tests/scripts/test_docs.sh).

Every fenced block whose language is a shell (sh, bash, shell) or python must be preceded, on the
line before its fence (blank lines allowed), by one HTML comment that says what the test does
with it; nothing is skipped silently:

  <!-- not-runnable: REASON -->          listed as "not run" with REASON
  <!-- runnable -->                      run as written
  <!-- runnable
  set: train.epochs=1 data.train_limit=512       appended as --set k=v to every `strata train`
                                                 and `strata search` of the block (shlex-split)
  set search: 'search.stages=[{trials: 2}]'      --set only for `strata search`
  set train: ...                                 --set only for `strata train`
  env: NAME=VALUE ...                            extra environment ({work}: the block's folder)
  args: A B                                      python: sys.argv[1:]
  expect: REGEX                                  the lines of the next unlabeled fenced block (the
                                                 sample output the page shows) that match REGEX
                                                 must each be a line the block printed
  skip: SUBSTRING: REASON                        a command (a logical line) that contains SUBSTRING
                                                 is not run, and is listed with REASON
  setup:                                         shell lines run before the block (to its end
    ...                                          or to the next `check:`)
  check:                                         after the block: shell lines for a shell block,
    ...                                          Python appended to a Python block
  -->

The blocks of one file run in order in one temporary folder (later blocks see what earlier ones
wrote), with experiments/, python/, examples/ and bench/ of the source tree linked in, and
`strata` (on PATH) and `build/bin/strata` both running the tool under test ($STRATA). The
small-setting `set:` values are how a block written for the full data runs in seconds here.

usage: run_docs.py SOURCE_DIR WORK_DIR [FILE...]   (default: README.md and docs/*.md)
"""
import glob
import os
import re
import shlex
import subprocess
import sys
import time

SHELLS = {"sh", "bash", "shell"}
PYTHONS = {"python", "py", "python3"}
PYTHON = os.environ.get("PYTHON", "/usr/bin/python3")
BLOCK_TIMEOUT = 300


class DocError(Exception):
    pass


def parse_marker(lines, where):
    """lines: the comment's text lines without <!-- and -->. Returns a dict."""
    head = lines[0].strip()
    marker = {"where": where}
    if head.startswith("not-runnable"):
        reason = head[len("not-runnable"):].lstrip(":").strip()
        reason = " ".join([reason] + [line.strip() for line in lines[1:]]).strip()
        if not reason:
            raise DocError(f"{where}: not-runnable needs a reason (<!-- not-runnable: why -->)")
        marker.update(kind="not-runnable", reason=reason)
        return marker
    if not head.startswith("runnable"):
        return None
    marker.update(kind="runnable", set={"train": [], "search": []}, env={}, args=[], skip=[],
                  setup=[], check=[], expect=None)
    rest = head[len("runnable"):].lstrip(":").strip()
    body = ([rest] if rest else []) + lines[1:]
    section = None
    for line in body:
        stripped = line.strip()
        key = re.match(r"^(set(?: train| search)?|env|args|skip|expect|setup|check):(.*)$", stripped)
        if key and section is None or key and key.group(1) in ("setup", "check"):
            name, value = key.group(1), key.group(2).strip()
            if name in ("setup", "check"):
                section = name
                if value:
                    marker[section].append(value)
            elif name.startswith("set"):
                subs = ["train", "search"] if name == "set" else [name.split()[1]]
                for sub in subs:
                    marker["set"][sub] += shlex.split(value)
            elif name == "env":
                for item in shlex.split(value):
                    k, _, v = item.partition("=")
                    marker["env"][k] = v
            elif name == "expect":
                marker["expect"] = re.compile(value)
            elif name == "args":
                marker["args"] += shlex.split(value)
            elif name == "skip":
                what, _, reason = value.partition(": ")
                if not reason:
                    raise DocError(f"{where}: skip needs `SUBSTRING: REASON`, got {value!r}")
                marker["skip"].append((what, reason))
        elif section:
            marker[section].append(line)
        elif stripped:
            raise DocError(f"{where}: cannot read the marker line {stripped!r}")
    return marker


def blocks_of(path, display):
    """Each command block of a Markdown file: dict(line, lang, text, marker)."""
    lines = open(path, encoding="utf-8").read().split("\n")
    result = []
    i = 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*([A-Za-z0-9_+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith(fence.group(1)):
            end += 1
        lang = fence.group(2).lower()
        if lang in SHELLS or lang in PYTHONS:
            where = f"{display}:{i + 1}"
            marker = None
            j = i - 1
            while j >= 0 and not lines[j].strip():
                j -= 1
            if j >= 0 and lines[j].rstrip().endswith("-->"):
                k = j
                while k >= 0 and "<!--" not in lines[k]:
                    k -= 1
                if k >= 0:
                    text = "\n".join(lines[k:j + 1])
                    text = text[text.index("<!--") + 4:text.rindex("-->")]
                    comment = text.split("\n")
                    marker = parse_marker(comment, where) if comment[0].strip() else None
            sample = None  # the next fenced block, when it has no language: the output shown
            k = end + 1
            while k < len(lines) and not lines[k].startswith("```"):
                k += 1
            if k < len(lines) and lines[k].strip() == "```":
                stop = k + 1
                while stop < len(lines) and not lines[stop].startswith("```"):
                    stop += 1
                sample = lines[k + 1:stop]
            result.append({"line": i + 1, "where": where, "lang": "python" if lang in PYTHONS else "sh",
                           "text": "\n".join(lines[i + 1:end]), "marker": marker, "sample": sample})
        i = end + 1
    return result


def logical_lines(text):
    """Shell text as logical lines (backslash continuations joined), each with its first line."""
    out, current = [], ""
    for line in text.split("\n"):
        current += line + "\n"
        if line.endswith("\\"):
            continue
        out.append(current)
        current = ""
    if current:
        out.append(current)
    return out


def setup_folder(work, source, strata):
    os.makedirs(os.path.join(work, "bin"), exist_ok=True)
    os.makedirs(os.path.join(work, "build", "bin"), exist_ok=True)
    for name in ("experiments", "python", "examples", "bench", "datasets", "plugins"):
        if not os.path.exists(os.path.join(work, name)):
            os.symlink(os.path.join(source, name), os.path.join(work, name))
    # The wrapper appends the block's small-setting --set values (DOCS_SET_TRAIN, DOCS_SET_SEARCH:
    # one per line) to `strata train` and `strata search`; `python3` is $PYTHON (Debian's, with h5py).
    wrapper = f"""#!/bin/bash
extra=()
case "${{1:-}}" in
  train) [ -n "${{DOCS_SET_TRAIN:-}}" ] && while IFS= read -r kv; do extra+=(--set "$kv"); done <<<"$DOCS_SET_TRAIN" ;;
  search) [ -n "${{DOCS_SET_SEARCH:-}}" ] && while IFS= read -r kv; do extra+=(--set "$kv"); done <<<"$DOCS_SET_SEARCH" ;;
esac
exec {shlex.quote(strata)} "$@" "${{extra[@]}}"
"""
    for path in (os.path.join(work, "bin", "strata"), os.path.join(work, "build", "bin", "strata")):
        with open(path, "w") as f:
            f.write(wrapper)
        os.chmod(path, 0o755)
    if not os.path.exists(os.path.join(work, "bin", "python3")):
        os.symlink(PYTHON, os.path.join(work, "bin", "python3"))


def run_block(block, work, env, report):
    marker = block["marker"]
    block_env = dict(env)
    block_env.update({k: v.replace("{work}", work) for k, v in marker["env"].items()})
    block_env["DOCS_SET_TRAIN"] = "\n".join(marker["set"]["train"])
    block_env["DOCS_SET_SEARCH"] = "\n".join(marker["set"]["search"])
    setup = "\n".join(marker["setup"])
    check = "\n".join(marker["check"])
    if block["lang"] == "sh":
        commands = []
        used = set()
        for logical in logical_lines(block["text"]):
            hit = next(((what, why) for what, why in marker["skip"] if what in logical), None)
            if hit:
                used.add(hit[0])
                first = logical.strip().split("\n")[0].rstrip("\\").strip()
                report.append(f"  skip    {block['where']}: `{first}`: {hit[1]}")
                commands.append("\n" * logical.count("\n"))
            else:
                commands.append(logical)
        unused = [what for what, _ in marker["skip"] if what not in used]
        if unused:
            return f"skip: {unused} matches no command of the block"
        script = ("set -eo pipefail\n" + setup + "\n" + "".join(commands) + "\n" + check + "\n")
        cmd = ["bash", "-c", script, "docs-block"]
    else:
        if setup:
            done = subprocess.run(["bash", "-c", "set -eo pipefail\n" + setup], cwd=work, env=block_env,
                                  capture_output=True, text=True, timeout=BLOCK_TIMEOUT)
            if done.returncode != 0:
                return f"setup failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
        script_path = os.path.join(work, f"block_{block['line']}.py")
        with open(script_path, "w") as f:
            f.write(block["text"] + "\n" + check + "\n")
        cmd = [PYTHON, script_path] + marker["args"]
    try:
        done = subprocess.run(cmd, cwd=work, env=block_env, capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"timed out after {BLOCK_TIMEOUT} s"
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().split("\n")[-30:]
        return f"exit {done.returncode}:\n" + "\n".join("      " + t for t in tail)
    if marker["expect"] is not None:
        if block["sample"] is None:
            return "expect: no sample output block follows"
        printed = {line.rstrip() for line in done.stdout.split("\n")}
        wanted = [line.rstrip() for line in block["sample"] if marker["expect"].search(line)]
        missing = [line for line in wanted if line not in printed]
        if not wanted or missing:
            return ("the sample output shown after the block differs from what it printed; not printed:\n"
                    + "\n".join("      " + line for line in missing or ["(no sample line matches expect)"])
                    + "\n    printed:\n" + "\n".join("      " + line for line in done.stdout.split("\n")[:60]))
    return None


def main():
    source, work_root = sys.argv[1], sys.argv[2]
    files = sys.argv[3:] or ["README.md"] + sorted(
        os.path.relpath(p, source) for p in glob.glob(os.path.join(source, "docs", "*.md")))
    strata = os.environ["STRATA"]
    counts = {"run": 0, "not run": 0, "failed": 0}
    failures = []
    for name in files:
        path = os.path.join(source, name)
        try:
            blocks = blocks_of(path, name)
        except DocError as error:
            failures.append(str(error))
            print(f"FAIL    {error}")
            continue
        work = os.path.join(work_root, name.replace("/", "_").replace(".md", ""))
        setup_folder(work, source, strata)
        env = dict(os.environ)
        env["PATH"] = os.path.join(work, "bin") + os.pathsep + env["PATH"]
        env["STRATA_BUILD_DIR"] = os.path.dirname(os.path.dirname(os.path.abspath(strata)))
        for block in blocks:
            marker = block["marker"]
            if marker is None:
                message = (f"{block['where']}: a {block['lang']} block without a marker: put "
                           "<!-- runnable ... --> or <!-- not-runnable: REASON --> before it")
                failures.append(message)
                counts["failed"] += 1
                print(f"FAIL    {message}")
                continue
            if marker["kind"] == "not-runnable":
                counts["not run"] += 1
                print(f"not run {block['where']}: {marker['reason']}")
                continue
            report = []
            start = time.monotonic()
            problem = run_block(block, work, env, report)
            seconds = time.monotonic() - start
            if problem:
                counts["failed"] += 1
                failures.append(f"{block['where']}: {problem}")
                print(f"FAIL    {block['where']} {block['lang']} ({seconds:.1f} s): {problem}")
            else:
                counts["run"] += 1
                print(f"ok      {block['where']} {block['lang']} ({seconds:.1f} s)")
            for line in report:
                print(line)
            sys.stdout.flush()
    print(f"{counts['run']} blocks run, {counts['not run']} not run (reasons above), "
          f"{counts['failed']} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
