#!/usr/bin/env bash
# Mutation score of the security-critical modules, per module and in total.
#
#   bash benchmarks/mutation.sh                 # fresh full run (about 10 min on 2 shared cores), then the score
#   bash benchmarks/mutation.sh --report-only   # the score of the last run in ./mutants
#
# The modules and the mutant-killing test suites are set in [tool.mutmut] in
# pyproject.toml; docs/mutation.md has the measured figures and the equivalent mutants.
# Runs niced with two workers (MUTATION_JOBS to change): the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."
venv_bin=${VENV_BIN:-.venv/bin}

if [[ "${1:-}" != "--report-only" ]]; then
    rm -rf mutants
    start=$(date +%s)
    nice -n 10 "$venv_bin/mutmut" run --max-children "${MUTATION_JOBS:-2}" > mutants.log 2>&1 || {
        tail -n 40 mutants.log
        exit 1
    }
    echo "mutation run: $(( $(date +%s) - start )) s wall clock (log: mutants.log)"
fi
"$venv_bin/mutmut" results --all true | "$venv_bin/python" benchmarks/mutation_score.py
