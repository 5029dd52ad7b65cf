#!/usr/bin/env bash
# Prepare, on this (CPU) machine, what the lent GPU machine lacks, in .gpu/ (git-ignored):
# the wheels of hydra-core, omegaconf, antlr4 and the joblib launcher (the GPU machine has
# torch, torchvision, timm, rich, tensorboard, matplotlib and torchmetrics, but no Hydra),
# and the CIFAR-10 JPEG tarball. Then carry .gpu with every device command:
#
#   scripts/gpu_prepare.sh
#   device run (carry: [".gpu"]):  bash scripts/gpu_reproduce.sh test      # step 1
#                                  bash scripts/gpu_reproduce.sh bench     # step 2
#                                  bash scripts/gpu_reproduce.sh reproduce # step 3, 9.5 min a call: repeat until done
#
# For the timm baseline of step 2, put timm's train.py (from the timm repository, not in
# its wheel) at .gpu/timm/train.py; without it that row is skipped with one line.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu/wheels
python -m pip download -q --only-binary=:all: --dest .gpu/wheels \
  "hydra-core>=1.3" "omegaconf>=2.3" "hydra-joblib-launcher>=1.2" joblib antlr4-python3-runtime==4.9.3 PyYAML
cp ../shared/datasets/cifar10-jpeg.tar.gz .gpu/
du -sh .gpu
