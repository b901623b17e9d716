#!/bin/bash
# Runs every row of the table in docs/errors.md: the documented message must be what strata
# prints (exit status 1, no crash), so the page and the tool cannot drift apart.
set -u
: "${STRATA:?}" "${STRATA_SOURCE_DIR:?}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
doc="$STRATA_SOURCE_DIR/docs/errors.md"
# The experiment: the first ```yaml block of the page.
awk '/^```yaml/{on=1; next} /^```/{if (on) exit} on' "$doc" >"$work/ok.yaml"
# Files for the rows on YAML syntax ({work}/tab.yaml, {work}/deep.yaml): the experiment with its
# `input:` line indented by a tab, and a value nested 1000 lists deep.
sed 's/^  input:/\tinput:/' "$work/ok.yaml" >"$work/tab.yaml"
awk 'BEGIN { printf "seed: "; for (i = 0; i < 1000; i++) printf "["; for (i = 0; i < 1000; i++) printf "]"; print "" }' >"$work/deep.yaml"
# The rows on hostile HDF5 files read {work}/h5_*.h5, written by h5py.
/usr/bin/python3 "$STRATA_SOURCE_DIR/tests/scripts/hdf5_fixtures.py" errors-doc "$work" "$work/ok.yaml" || exit 1
# Files for the rows on hostile inputs: an alias inside its own anchor, two YAML documents, a FIFO,
# a symbolic link loop, a file named `..yaml`, a search grid whose size overflows int64, a search
# drawing a value the trainer refuses, and a plugin that aborts in its registration.
{ echo 'a: &x [*x]'; cat "$work/ok.yaml"; } >"$work/anchor.yaml"
{ cat "$work/ok.yaml"; printf -- '---\nseed: 2\n'; } >"$work/two.yaml"
mkfifo "$work/fifo.yaml"
ln -s "$work/loop.yaml" "$work/loop.yaml"
cp "$work/ok.yaml" "$work/..yaml"
{ cat "$work/ok.yaml"; printf 'search:\n  mode: grid\n  metric: train_loss\n  space:\n'
  for key in optimizer.lr seed train.batch_size 'model.layers[0].out_channels'; do
    printf '    %s: {int: [1, 1000000], points: 100000}\n' "$key"; done; } >"$work/grid.yaml"
{ cat "$work/ok.yaml"; printf 'search:\n  trials: 2\n  metric: train_loss\n  space:\n    optimizer.lr: {log_uniform: [1e39, 1e40]}\n'; } >"$work/drawn.yaml"
cp "$(dirname "$STRATA")/../tests/plugins/libstrata_test_crashing.so" "$work/"
failures=0 rows=0
while IFS= read -r line; do
  rows=$((rows + 1))
  name=$(echo "$line" | awk -F' \\| ' '{print $1}' | sed 's/^| //')
  args=$(echo "$line" | sed -E 's/^\| [^|]* \| `([^`]*)` \| .*$/\1/')
  expected=$(echo "$line" | sed -E 's/^.*\| `(.*)` \|$/\1/; s/\\\|/|/g')
  out="$work/out$rows"
  args=${args//\{ok\}/$work/ok.yaml}; args=${args//\{out\}/$out}; args=${args//\{work\}/$work}
  expected=${expected//\{out\}/$out}; expected=${expected//\{work\}/$work}
  # Arguments split at spaces, except inside [...] (the --set values of the table keep their commas
  # and spaces there).
  mapfile -t argv < <(echo "$args" | awk '{ depth = 0; word = ""; for (i = 1; i <= length($0); i++) {
      c = substr($0, i, 1); if (c == "[") depth++; if (c == "]") depth--;
      if (c == " " && depth == 0) { if (word != "") print word; word = "" } else word = word c }
      if (word != "") print word }')
  "$STRATA" "${argv[@]}" >"$work/stdout" 2>"$work/stderr"
  rc=$?
  if [ "$rc" -ne 1 ] || ! grep -qF -- "$expected" "$work/stderr"; then
    echo "FAIL $name (exit $rc): expected: $expected"; sed 's/^/    /' "$work/stderr"; failures=$((failures + 1))
  else
    echo "ok   $name"
  fi
done < <(sed -n '/<!-- errors-table/,/<!-- end of errors-table/p' "$doc" | grep '^| ' | tail -n +2 | grep -v '^|---')
echo "$rows rows, $failures failures"
[ "$rows" -gt 0 ] && [ "$failures" -eq 0 ]
