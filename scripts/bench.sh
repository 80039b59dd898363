#!/usr/bin/env bash
# Runs every benchmark, each several times, and regenerates the tables of docs/performance.md
# from the results, so that no figure there is typed by hand.
#
#   scripts/bench.sh                 # every benchmark, 3 runs each (about an hour)
#   scripts/bench.sh limit lease     # only these (names below), 3 runs each
#   RUNS=5 scripts/bench.sh relay    # more runs
#   scripts/bench.sh --tables        # only regenerate the tables from the results kept
#
# Each run's results file is kept as bench/results/runs/NAME.N.json; the tables show every
# figure's median over the runs with the lowest and highest beside it. The engines come from
# scripts/engines.sh, as for the tests.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
script_name="bench"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

# name: package, features, bench target, results file
declare -A benches=(
  [relay]="onephase-outbox kafka-tests relay outbox-relay"
  [bloat]="onephase-outbox - bloat outbox-bloat"
  [saga]="onephase-saga - saga saga"
  [webhook]="onephase-webhook - delivery webhook"
  [lease]="onephase-lease etcd lease lease"
  [limit]="onephase-limit redis,store limit limit"
  [herd]="onephase-herd tower herd herd"
  [events]="onephase-events - events events"
  [replica]="onephase-replica - replica replica"
  [kafka]="onephase-kafka client consumer kafka"
  [router]="onephase-partition - router partition"
  [move]="onephase-partition online move partition-move"
)
order=(relay bloat saga webhook lease limit herd events replica kafka router move)
runs=${RUNS:-3}

tables() {
  command -v python3 >/dev/null || install_packages python3
  python3 scripts/bench_tables.py
}

if [[ ${1:-} == --tables ]]; then
  tables
  exit 0
fi
chosen=("$@")
((${#chosen[@]})) || chosen=("${order[@]}")
for name in "${chosen[@]}"; do
  [[ -n ${benches[$name]:-} ]] || die "unknown benchmark $name: use one of ${order[*]}"
done

engine_env=$("$repo/scripts/engines.sh")
eval "$engine_env"
mkdir -p bench/results/runs
for name in "${chosen[@]}"; do
  read -r package features target file <<<"${benches[$name]}"
  args=(-p "$package" --bench "$target")
  [[ $features == - ]] || args+=(--features "$features")
  rm -f "bench/results/runs/$file".*.json
  for ((run = 1; run <= runs; run++)); do
    say "$name: run $run of $runs (cargo bench ${args[*]})"
    cargo bench "${args[@]}" >&2
    cp "bench/results/$file.json" "bench/results/runs/$file.$run.json"
  done
done
tables
