#!/usr/bin/env bash
# Reproduces the shipped default director checkpoint (director/checkpoints/default) from the real data in
# ../shared/data: YouCook2 training recipes (text), the VideoAuteur demo clips (captions + EfficientNet-Lite0
# keyframe embeddings; potato_mashes held out for validation) and 400 CookGen-style captions from captions.csv.
# About 20-30 minutes on a 2-core CPU.  Usage: bash scripts/train_default_director.sh [SHARED_DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared/data}
BIN=.venv/bin
DEMOS=$SHARED/videoauteur_demos

$BIN/cookgen build youcook2 --annotations "$SHARED/youcook2/youcookii_annotations_trainval.json" \
    --labels "$SHARED/youcook2/label_foodtype.csv" --out runs/cookgen-youcook2 --no-progress
rm -rf runs/demos-src && mkdir -p runs/demos-src/train/Language_Centric runs/demos-src/val/Language_Centric
cp -r "$DEMOS/Interleaved" runs/demos-src/train/
cp -r "$DEMOS/Language_Centric/BLT_Sandwich" runs/demos-src/train/Language_Centric/
cp -r "$DEMOS/Language_Centric/potato_mashes" runs/demos-src/val/Language_Centric/
chmod -R u+w runs/demos-src
$BIN/cookgen build steps --root runs/demos-src/train --out runs/cookgen-demos --split train --no-progress clips.cut=false
$BIN/cookgen build steps --root runs/demos-src/val --out runs/cookgen-demos-val --split val --no-progress clips.cut=false

$BIN/director train --config default \
    data=runs/cookgen-youcook2,runs/cookgen-demos,runs/cookgen-demos-val out=runs/director-default \
    dataset.captions_csv="$DEMOS/captions.csv" dataset.caption_lines=400 dataset.visual_repeat=20 \
    train.max_steps=400 train.eval_every=100 train.save_every=50 seed=0

rm -rf director/checkpoints/default && mkdir -p director/checkpoints
cp -r runs/director-default/final director/checkpoints/default
echo "shipped: director/checkpoints/default"
