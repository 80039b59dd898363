#!/usr/bin/env bash
# Instruction counts of the hottest in-process paths, against the counts stored in
# bench/instructions.json: a guard against slowing them down that this machine's noise cannot
# fool, since valgrind counts instructions, not time.
#
#   scripts/instructions.sh            # measure, compare, fail on a path > 10 % above its count
#   scripts/instructions.sh --update   # measure and store the counts (after a change made on
#                                      # purpose: say why in the commit)
#
# Each path (crates/hotpath) runs under `valgrind --tool=callgrind`, collecting only inside its
# measured loop, at two iteration counts; the difference in instructions over the difference in
# iterations is its cost per call, with set-up and first-call effects cancelled. The counts
# depend on the compiler: a new Rust release may move them, and --update records the new ones.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
script_name="instructions"
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

update=0
case ${1:-} in
  --update) update=1 ;;
  "") ;;
  *) die "unknown argument $1: use no argument, or --update" ;;
esac

command -v valgrind >/dev/null || install_packages valgrind
stored=bench/instructions.json
paths=(limiter single-flight-hit envelope)
tolerance=1.10
low=20000
high=120000

cargo build --release --quiet -p onephase-hotpath
binary=target/release/onephase-hotpath
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# instructions PATH N: instructions collected inside the measured loop of PATH run N times.
instructions() {
  local out=$work/$1.$2
  valgrind --tool=callgrind --toggle-collect='onephase_hotpath::measure*' \
    --callgrind-out-file="$out" "$binary" "$1" "$2" >"$out.log" 2>&1 ||
    die "$1 failed under valgrind: $(tail -5 "$out.log")"
  awk '/^(summary|totals):/ { print $2; exit }' "$out"
}

declare -A measured
for path in "${paths[@]}"; do
  a=$(instructions "$path" "$low")
  b=$(instructions "$path" "$high")
  measured[$path]=$(awk -v a="$a" -v b="$b" -v n=$((high - low)) 'BEGIN { printf "%.1f", (b - a) / n }')
done

if ((update)); then
  {
    printf '{\n  "note": "instructions per call, from scripts/instructions.sh --update; rustc %s",\n' \
      "$(rustc --version | awk '{ print $2 }')"
    printf '  "paths": {\n'
    last=${paths[-1]}
    for path in "${paths[@]}"; do
      sep=,
      [[ $path == "$last" ]] && sep=
      printf '    "%s": %s%s\n' "$path" "${measured[$path]}" "$sep"
    done
    printf '  }\n}\n'
  } >"$stored"
  say "stored in $stored:"
  for path in "${paths[@]}"; do say "  $path: ${measured[$path]} instructions per call"; done
  exit 0
fi

[[ -f $stored ]] || die "$stored is missing: run scripts/instructions.sh --update"
failed=0
printf '| path | stored | now | now/stored |\n|---|---|---|---|\n'
for path in "${paths[@]}"; do
  before=$(sed -n "s/^ *\"$path\": \([0-9.]*\).*/\1/p" "$stored")
  [[ -n $before ]] || die "$stored has no count for $path: run scripts/instructions.sh --update"
  ratio=$(awk -v a="${measured[$path]}" -v b="$before" 'BEGIN { printf "%.3f", a / b }')
  printf '| %s | %s | %s | %s |\n' "$path" "$before" "${measured[$path]}" "$ratio"
  if awk -v r="$ratio" -v t="$tolerance" 'BEGIN { exit !(r > t) }'; then
    say "$path costs ${measured[$path]} instructions per call, more than 10 % above the stored $before"
    failed=1
  fi
done
((failed == 0)) || die "an instruction count rose by more than 10 %: find the cause (valgrind --tool=callgrind target/release/onephase-hotpath PATH N, then callgrind_annotate), or, if the cost is meant, store the new counts with --update"
say "every path within 10 % of its stored count"
