#!/usr/bin/env bash
# The whole test suite, in the order the developers' brief fixes:
# nbdev_clean + nbdev_export must change nothing, nbdev's doc processing must pass (Quarto itself cannot be
# installed here), the layout check (tools/check_layout.py), then every notebook under nbdev_test, then pytest on tests/.
# Ends with one line: "summary: N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
failed=0; passed=0

snapshot() { git status --porcelain -- nbs fastvideo settings.ini 2>/dev/null; git diff -- nbs fastvideo settings.ini 2>/dev/null | sha1sum; }
if git rev-parse --git-dir >/dev/null 2>&1; then
  before=$(snapshot)
  nbdev_clean >/dev/null && nbdev_export || { echo "nbdev_clean/nbdev_export failed"; exit 1; }
  after=$(snapshot)
  if [ "$before" != "$after" ]; then
    echo "FAIL sync: nbdev_clean or nbdev_export changed files; run them and commit the result:"
    git status --short -- nbs fastvideo
    failed=$((failed + 1))
  else
    echo "ok   sync: notebooks clean and library exported"; passed=$((passed + 1))
  fi
else
  nbdev_export
fi

if python tools/check_docs.py >/dev/null 2>&1 && [ "$(snapshot)" = "${after:-$(snapshot)}" ]; then
  echo "ok   docs: nbdev doc processing passes and changes no tracked file"; passed=$((passed + 1))
else
  echo "FAIL docs: python tools/check_docs.py failed or rewrote tracked files (see git status)"; failed=$((failed + 1))
fi

if layout=$(python tools/check_layout.py 2>&1); then
  echo "ok   layout: lesson outputs stored, no private imports between modules, no import cycle"; passed=$((passed + 1))
else
  echo "$layout"; echo "FAIL layout: python tools/check_layout.py found the problems above"; failed=$((failed + 1))
fi

nb_log=$(mktemp)
n_nbs=$(find nbs -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' -not -name '_*' | wc -l)
if nbdev_test --n_workers "${NBDEV_WORKERS:-2}" --timing --flags "${NBDEV_FLAGS:-}" 2>&1 | tee "$nb_log"; then
  passed=$((passed + n_nbs))
  echo "ok   notebooks: $n_nbs passed under nbdev_test"
else
  n_bad=$(grep -c "^Error in\|Exception in" "$nb_log" || true); [ "$n_bad" -gt 0 ] || n_bad=1
  failed=$((failed + n_bad)); passed=$((passed + n_nbs - n_bad))
  echo "FAIL notebooks: $n_bad of $n_nbs failed under nbdev_test"
fi

py_log=$(mktemp)
# Two pytest workers (pytest-xdist), one torch thread each: most tests wait on process start-up or run two torchrun
# ranks, so two at a time fill 2 cores. Whole files go to one worker (module fixtures such as the teacher's scores are
# computed once), the longest files first (tests/conftest.py orders them) so no worker is left with one at the end.
workers=${PYTEST_WORKERS:-2}
if [ "$workers" -gt 1 ]; then xdist=(-n "$workers" --dist loadfile); else xdist=(); fi
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python -m pytest -q "${xdist[@]}" --durations 15 tests 2>&1 | tee "$py_log"; rc=${PIPESTATUS[0]}
last=$(grep -E '(passed|failed|error|no tests ran).* in [0-9.]+s' "$py_log" | tail -1)
count() { echo "$last" | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+' | awk '{s+=$1} END {print s+0}'; }
p=$(count passed); f=$(( $(count failed) + $(count 'errors?') ))
passed=$((passed + p)); failed=$((failed + ${f:-0}))
if [ "$rc" -ne 0 ] && [ "${f:-0}" -eq 0 ]; then failed=$((failed + 1)); echo "FAIL pytest exited $rc"; fi

echo "summary: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
