#!/usr/bin/env bash
# `npm run test:shuffled`: the check of issue 21's "done when": the suite three times in a row, each in
# a different shuffled order (files and the tests in them), while a CPU hog this script starts keeps one
# core busy. Stops at the first run that fails and exits non-zero; prints each seed, so that a failing
# order can be replayed: npx vitest run --sequence.shuffle --sequence.seed=SEED [FILE...]
#   npm run test:shuffled                      the whole suite
#   npm run test:shuffled -- test/integration  a directory or files (passed on to vitest)
#   SHUFFLE_SEEDS="1 2 3" RUNS=3 HOG=0          fixed seeds / number of runs / no hog
# Each run goes through scripts/test.sh (packages, services) and writes test-results/vitest.json.
# Do not run it beside the bench: the hog and three suites spoil its figures.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-3}
read -r -a seeds <<<"${SHUFFLE_SEEDS:-}"
while [ ${#seeds[@]} -lt "$runs" ]; do
  # Random, different per run; vitest takes any integer.
  seeds+=("$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')")
done

hog_pid=
stop_hog() {
  if [ -n "$hog_pid" ]; then
    kill "$hog_pid" 2>/dev/null
    wait "$hog_pid" 2>/dev/null
    hog_pid=
  fi
}
trap stop_hog EXIT
trap 'stop_hog; exit 130' INT TERM

if [ "${HOG:-1}" != 0 ]; then
  # One busy loop, pinned to one core when taskset is there (util-linux); otherwise the scheduler
  # still gives it a whole core of the two.
  hog=(node -e 'for (;;);')
  command -v taskset >/dev/null && hog=(taskset -c 0 "${hog[@]}")
  "${hog[@]}" &
  hog_pid=$!
  echo "shuffle-check: CPU hog running (pid $hog_pid): ${hog[*]}"
fi

counts() {
  node -e '
    const r = JSON.parse(require("fs").readFileSync("test-results/vitest.json", "utf8"));
    const failedFiles = r.testResults.filter((f) => f.status === "failed").map((f) => f.name.replace(process.cwd() + "/", ""));
    console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + r.numTodoTests} skipped, ${r.numTotalTests} total; files failed: ${failedFiles.length}${failedFiles.length ? " (" + failedFiles.join(", ") + ")" : ""}`);
  ' 2>/dev/null || echo "no test-results/vitest.json (vitest did not finish)"
}

summary=()
for i in $(seq 1 "$runs"); do
  seed=${seeds[$((i - 1))]}
  echo "shuffle-check: run $i of $runs, seed $seed"
  started=$(date +%s)
  bash scripts/test.sh --sequence.shuffle --sequence.seed="$seed" "$@"
  status=$?
  line="run $i, seed $seed: $(counts) in $(($(date +%s) - started)) s"
  summary+=("$line")
  echo "shuffle-check: $line"
  if [ "$status" -ne 0 ]; then
    echo "shuffle-check: run $i failed (exit $status); replay: npx vitest run --sequence.shuffle --sequence.seed=$seed $*"
    printf 'shuffle-check: %s\n' "${summary[@]}"
    exit 1
  fi
done
printf 'shuffle-check: %s\n' "${summary[@]}"
echo "shuffle-check: $runs of $runs shuffled runs passed"
