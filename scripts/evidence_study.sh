#!/usr/bin/env bash
# The evidence study of docs/evidence: every arm x seed, one run at a time (both cores
# per run: faster in total on a 2-core CPU than two one-thread jobs), then FGSM evals,
# the report and the compare tables. Re-running it skips finished work and resumes any
# run that was stopped (its last.pt), so it can be killed and started again at any time.
# Its last part writes the tables of docs/evidence (DOCS=... to put them elsewhere).
#
#   bash scripts/evidence_study.sh [OUT]           # OUT: outputs/evidence by default
#   SEEDS="0 1" bash scripts/evidence_study.sh     # fewer seeds
#   MINI="erm fmix1" SUBSET="" TABLES=0 bash scripts/evidence_study.sh   # some arms, no tables
# Needs the 10k subset for its last part: scripts/subset_folder.py (see recipes/subset10k_long_*).
set -euo pipefail
OUT=${1:-outputs/evidence}
SEEDS=${SEEDS:-"0 1 2"}
MINI=${MINI:-"erm mixup02 mixup1 cutmix1 noise20_erm noise20_mixup1 fmix1 resizemix saliencymix1 smoothmix"}
SUBSET=${SUBSET-"erm mixup1"}
mkdir -p "$OUT"
log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$OUT/study.log"; }

completed() {  # a run dir whose summary.json says completed
  python - "$1" <<'PY'
import json, sys, pathlib
p = pathlib.Path(sys.argv[1]) / "summary.json"
sys.exit(0 if p.is_file() and json.loads(p.read_text()).get("status") == "completed" else 1)
PY
}

run() {  # run RECIPE DIR SEED
  local recipe=$1 dir=$2 seed=$3
  if completed "$dir"; then return; fi
  if [ -f "$dir/last.pt" ]; then
    log "resume $dir"; mixtrain train resume="$dir" > /dev/null
  else
    log "start $dir"; mixtrain train recipe="$recipe" seed="$seed" hydra.run.dir="$dir" > /dev/null
  fi
  log "done $dir"
  if [ ! -f "$dir/eval/eval.json" ]; then
    mixtrain eval checkpoint="$dir/last.pt" fgsm_eps=[2,8] hydra.run.dir="$dir/eval" > /dev/null
    log "eval $dir"
  fi
}

log "study start: seeds $SEEDS"
for seed in $SEEDS; do
  for arm in $MINI; do run "mini_long_$arm" "$OUT/mini/$arm/s$seed" "$seed"; done
done
for seed in $SEEDS; do
  for arm in $SUBSET; do run "subset10k_long_$arm" "$OUT/subset10k/$arm/s$seed" "$seed"; done
done
log "study end"
[ "${TABLES:-1}" = 1 ] || exit 0

# The tables of docs/evidence: mixtrain report (csv + png) per data set, mixtrain compare of
# seed 0 (last.pt, paired bootstrap, FGSM), and the pooled paired claims of all seeds.
DOCS=${DOCS:-docs/evidence}
mkdir -p "$DOCS"
for part in mini subset10k; do
  if [ -d "$OUT/$part" ]; then mkdir -p "$DOCS/$part"; mixtrain report "$OUT/$part" --out "$DOCS/$part" --overwrite > "$DOCS/$part/report.txt"; fi
done
compare() {  # compare NAME RUN...
  local name=$1; shift
  local runs=(); for r in "$@"; do runs+=("$r/last.pt"); done
  mixtrain compare "${runs[@]}" fgsm_eps=[2,8] --out "$OUT/compare_$name" > "$DOCS/compare_$name.txt"
  cp "$OUT/compare_$name/compare.json" "$DOCS/compare_$name.json"
}
compare clean_s0 "$OUT"/mini/{erm,mixup02,mixup1,cutmix1}/s0
compare noise20_s0 "$OUT"/mini/{noise20_erm,noise20_mixup1}/s0
python scripts/evidence_tables.py "$OUT" --out "$DOCS" > "$DOCS/tables.md"
log "tables written to $DOCS"
