#!/usr/bin/env bash
# Issue 15 on a GPU machine, from the repo root, with .gpu/ carried (scripts/gpu_prepare.sh):
#   bash scripts/gpu_reproduce.sh test | bench | reproduce
# Each step is one device command (at most 10 minutes each). `reproduce` trains the two
# 200-epoch runs side by side for up to 9.5 minutes, then stops them cleanly (SIGTERM: a
# checkpoint at the next sync point); call it again until both are done: it resumes them.
# The run dirs stay in .gpu/runs (ignored, kept while the machine is warm); every step
# copies what it made to $OUT, which comes back.
set -euo pipefail
step=${1:?usage: gpu_reproduce.sh test|bench|reproduce}
export PYTHONPATH=$PWD MIXTRAIN_DATA=$PWD/.gpu/data PYTHONWARNINGS=ignore
OUT=${OUT:-$PWD/.gpu/out}
mkdir -p "$OUT" .gpu/data
python -c "import hydra" 2>/dev/null || pip install -q --no-index --find-links .gpu/wheels hydra-core omegaconf hydra-joblib-launcher
[ -d .gpu/data/cifar10-jpeg ] || tar -xzf .gpu/cifar10-jpeg.tar.gz -C .gpu/data
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
JPEG=(dataset=imagefolder "dataset.root=$MIXTRAIN_DATA/cifar10-jpeg" dataset.val_split=test dataset.cache=true
      dataset.image_size=32 "dataset.mean=[0.4914,0.4822,0.4465]" "dataset.std=[0.247,0.2435,0.2616]")

case "$step" in
test)  # 1. the CUDA path: its own tests, then the whole suite with CUDA present
  python -m pytest -q tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.txt"
  timeout 420 python -m pytest -q -x -p no:cacheprovider 2>&1 | tail -n 30 | tee "$OUT/test_all.txt" ;;
bench)  # 2. speed on this GPU: mixtrain vs compute limit vs hand-written loop (8 workers), per model/batch/dtype
  cd bench
  for model in resnet20 preact_resnet18; do for batch in 128 512; do for amp in --bf16 --fp16; do
    python pipeline.py --device cuda --model $model --batch $batch $amp --steps 50 --rounds 3 \
      2>&1 | tail -n 9 | tee "$OUT/bench_${model}_${batch}_${amp#--}.txt"
  done; done; done
  if [ -f ../.gpu/timm/train.py ]; then  # (d) timm's own train.py on the same folder (its loader and prefetcher)
    timeout 300 python ../.gpu/timm/train.py "$MIXTRAIN_DATA/cifar10-jpeg" --train-split train --val-split test \
      --model resnet18 --num-classes 10 --img-size 32 -b 128 --epochs 1 --workers 8 --amp --amp-dtype bfloat16 \
      --log-interval 50 2>&1 | grep -E "Train:|samples/s" | tail -n 5 | tee "$OUT/bench_timm_train_py.txt"
  else
    echo "no .gpu/timm/train.py: the timm train.py row is skipped" | tee "$OUT/bench_timm_train_py.txt"
  fi ;;
reproduce)  # 3. the mixup paper's CIFAR-10 pair, both jobs at once on the one GPU
  for recipe in preact_resnet18_cifar10_erm preact_resnet18_cifar10_mixup; do
    run=".gpu/runs/$recipe"
    if [ -f "$run/last.pt" ]; then args=(resume="$run"); else args=(recipe=$recipe "${JPEG[@]}" trainer.amp=true \
      trainer.amp_dtype=bf16 trainer.log_every=100 hydra.run.dir="$run"); fi
    grep -qs '"completed"' "$run/summary.json" || \
      timeout -s TERM 570 python -m mixtrain train "${args[@]}" >> ".gpu/runs/$recipe.log" 2>&1 &
  done
  wait || true
  for recipe in preact_resnet18_cifar10_erm preact_resnet18_cifar10_mixup; do
    run=".gpu/runs/$recipe"; mkdir -p "$OUT/docs/results/$recipe"
    cp "$run"/{metrics.jsonl,summary.json,reliability.png} "$OUT/docs/results/$recipe/" 2>/dev/null || true
    echo "$recipe: $(grep -o '"status": "[a-z]*"' "$run/summary.json"), $(wc -l < "$run/metrics.jsonl") epochs"
  done
  python - <<'PY'
import json, pathlib, statistics
for run in sorted(p for p in pathlib.Path(".gpu/runs").glob("*") if p.is_dir()):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
    last = [100 - r["val_acc1"] for r in rows[-10:] if "val_acc1" in r]
    if last:
        print(f"{run.name}: {len(rows)} epochs, median error of the last 10 {statistics.median(last):.2f}%, "
              f"ECE {rows[-1]['val_ece']:.4f}, {sum(r['epoch_time'] for r in rows) / 60:.0f} min")
PY
  ;;
*) echo "unknown step $step: use test, bench or reproduce" >&2; exit 2 ;;
esac
