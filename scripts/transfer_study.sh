#!/usr/bin/env bash
# The transfer study of docs/evidence/transfer (issue 34): does pretraining help on a small
# fine-tuning set, and does mixing add on top? On the shared CIFAR-10 JPEG folder:
#   1. pretrain timm's resnet18 on classes 0-4 (airplane..deer: 25,000 training images) and
#      save it with `mixtrain export format=safetensors`;
#   2. fine-tune on classes 5-9 (dog..truck) with 100 images a class (val: their 5,000 test
#      images) with recipe=fine_tune: from those weights or from scratch, with and without
#      Mixup/CutMix (augment=switch), 3 seeds each; then `mixtrain eval` of each (ECE after T);
#   3. the tables: scripts/evidence_tables.py with the study's claims.
# Re-running it skips finished work and resumes a stopped run (its last.pt).
#
#   bash scripts/transfer_study.sh [OUT]      # OUT: outputs/transfer by default
set -euo pipefail
OUT=${1:-outputs/transfer}
SEEDS=${SEEDS:-"0 1 2"}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-10}
mkdir -p "$OUT"
log() { echo "$(date -u +%FT%TZ) $*" | tee -a "$OUT/study.log"; }
completed() { [ -f "$1/summary.json" ] && grep -q '"status": "completed"' "$1/summary.json"; }
SRC=$(cd bench && python -c "from common import cifar10_jpeg_root; print(cifar10_jpeg_root())" | tail -n 1)
[ -d "$OUT/data/pretrain" ] || python scripts/subset_folder.py "$SRC" "$OUT/data/pretrain" --per-class 5000 \
  --classes airplane,automobile,bird,cat,deer
[ -d "$OUT/data/finetune" ] || python scripts/subset_folder.py "$SRC" "$OUT/data/finetune" --per-class 100 \
  --classes dog,frog,horse,ship,truck
DATA=(dataset.val_split=test dataset.cache=true dataset.image_size=32)

train() {  # train DIR ARGS...: start, or resume a stopped run
  local dir=$1; shift
  if completed "$dir"; then return; fi
  if [ -f "$dir/last.pt" ]; then log "resume $dir"; mixtrain train resume="$dir" > /dev/null
  else log "start $dir"; mixtrain train "$@" hydra.run.dir="$dir" > /dev/null; fi
  log "done $dir"
}

train "$OUT/pretrain" dataset=imagefolder dataset.root="$OUT/data/pretrain" "${DATA[@]}" model=timm \
  model.name=resnet18 optim=sgd optim.lr=0.1 sched=cosine trainer.epochs="$PRETRAIN_EPOCHS" trainer.batch_size=128
WEIGHTS="$OUT/pretrain/export-safetensors/model.safetensors"
[ -f "$WEIGHTS" ] || mixtrain export checkpoint="$OUT/pretrain/last.pt" format=safetensors > /dev/null

for seed in $SEEDS; do
  for start in scratch pretrained; do
    for mix in none switch; do
      dir="$OUT/transfer/${start}_${mix}/s$seed"
      weights=(); [ "$start" = pretrained ] && weights=(model.pretrained_path="$WEIGHTS")
      train "$dir" recipe=fine_tune dataset.root="$OUT/data/finetune" "${DATA[@]}" augment="$mix" \
        trainer.eval_every=5 seed="$seed" "${weights[@]}"
      [ -f "$dir/eval/eval.json" ] || { mixtrain eval checkpoint="$dir/last.pt" fgsm_eps=[2] \
        hydra.run.dir="$dir/eval" > /dev/null; log "eval $dir"; }
    done
  done
done
log "runs done"
DOCS=${DOCS:-docs/evidence/transfer}
mkdir -p "$DOCS"
python scripts/evidence_tables.py "$OUT" --parts transfer --out "$DOCS" --claims \
  "pretrained_none:scratch_none:pretrained vs scratch (no mixing)" \
  "pretrained_switch:scratch_switch:pretrained vs scratch (mixup/cutmix)" \
  "pretrained_switch:pretrained_none:mixup/cutmix vs none (pretrained)" \
  "scratch_switch:scratch_none:mixup/cutmix vs none (scratch)" > "$DOCS/tables.md"
log "tables written to $DOCS"
