#!/usr/bin/env bash
# `make test`'s pytest run: two pytest processes at once, each with its own local control plane and
# temp folder. Tests marked `background` spend minutes waiting (the five-minute API outage, whose
# encodes read in real time; the real node's probes and restarts; the Helm upgrade's rollouts) and run
# beside the rest instead of adding their minutes to the suite's. The real node's tests are the only
# ones that start a node, so both processes never run one at once.
# Their output follows the main run's. Arguments go to both runs.
set -uo pipefail
cd "$(dirname "$0")/.."
pytest=.venv/bin/pytest
# A marker expression of the caller's own (-m) chooses the tests: one plain run.
for arg in "$@"; do
  case "$arg" in -m | -m*) exec "$pytest" "$@" ;; esac
done
work=$(mktemp -d /tmp/ffrtmp-test.XXXXXX)

"$pytest" -m "background and not bench" --basetemp "$work/background" "$@" >"$work/background.log" 2>&1 &
background=$!
trap 'kill -INT "$background" 2>/dev/null; wait "$background"' INT TERM

"$pytest" -m "not background and not bench" --basetemp "$work/main" "$@"
main_rc=$?
wait "$background"
background_rc=$?
trap - INT TERM

echo
echo "=== tests marked background (run beside the ones above) ==="
cat "$work/background.log"
# No background test selected is a failure of the whole run, unless arguments narrowed the selection.
if [ "$background_rc" -eq 5 ] && [ "$#" -gt 0 ]; then
  background_rc=0
fi
rm -rf "$work"
if [ "$main_rc" -ne 0 ]; then exit "$main_rc"; fi
exit "$background_rc"
