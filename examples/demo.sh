#!/usr/bin/env bash
# The demo sweep end to end: create 24 jobs, run them with two workers, show the results.
set -euo pipefail
cd "$(dirname "$0")/.."
TREE=${TREE:-demo-tree}
rm -rf "$TREE"

echo "== create: lr x seed x model.arch from examples/sweep.py:jobs"
dbdict create "$TREE" examples/sweep.py:jobs | head -3
echo "   ..."

echo "== work: two workers share the tree (each job runs exactly once)"
dbdict work "$TREE" -q & first=$!
dbdict work "$TREE" -q & second=$!
wait "$first" "$second"

echo "== status"
dbdict status "$TREE"

echo "== the five best runs"
dbdict-query "$TREE" --columns model.arch,lr,seed,valid_err --sort valid_err --limit 5

echo "== best valid_err per architecture (SQL)"
dbdict-query "$TREE" --sql 'select "model.arch" as arch, min(valid_err) as best, count(*) as jobs
                           from jobs group by 1 order by best'

echo "== the report: one HTML file, no server (open it in a browser, or rsync it to a laptop)"
dbdict report "$TREE" -o "$TREE/sweep.html" --metric valid_err --quiet
echo "   $(cd "$TREE" && pwd)/sweep.html"
