#!/usr/bin/env bash
# Reproduce every table of the paper (Tables 2.1.1-2.3.4): each of its 38 distinct configurations
# runs once per seed, then `animalcls report` turns the results table into the paper's tables and
# figures beside the paper's numbers.
#
#   scripts/reproduce_paper.sh                      # 38 runs, seed 0, on data/animals
#   scripts/reproduce_paper.sh seed=0,1,2           # three repeats of each (114 runs)
#   scripts/reproduce_paper.sh data=demo epochs=1   # a quick smoke run of the whole pipeline
#   REPORT_OUT=outputs/report_demo scripts/reproduce_paper.sh results=outputs/demo.csv data=demo
#
# Any Hydra override is passed to every run. Runs that already have an ok row in the results table
# are skipped, so re-running the script resumes an interrupted reproduction.
set -uo pipefail

results=outputs/results.csv
for arg in "$@"; do
  case "$arg" in results=*) results="${arg#results=}" ;; esac
done

status=0
animalcls train -m +experiment=paper/all "$@" || status=$?
# A failed run is recorded and the sweep goes on; the report says what is missing either way.
animalcls report results="$results" out="${REPORT_OUT:-outputs/report}" || status=$?
exit "$status"
