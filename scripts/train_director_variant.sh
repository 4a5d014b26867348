#!/usr/bin/env bash
# One director variant of the unseen-dish study (issue 19; docs/director.md "Dishes it never saw"), trained from the
# base model by one short schedule that is the same for every variant (chosen before any variant was scored):
#   1. 180 steps x batch 8 (4 x 2 accumulated) on whole YouCook2 training recipes (+ demo clips, 100 caption
#      lines), LoRA r=8 on all seven projections, lr 6e-4 (about 1.3 epochs)
#   2. 100 steps x batch 8 (4 x 2) on each dish's typical training recipe (+ the same), image blocks filled, lr 6e-4
# Usage: bash scripts/train_director_variant.sh VARIANT SPLIT OUT [SHARED_DATA_DIR]
#   VARIANT  plain | neighbours | plain-long
#            neighbours: retrieval-augmented prompts (dataset.neighbour_recipes=true)
#            plain-long: plain with 300 steps on the typical recipes in stage 2 instead of 100 (3x the epochs there)
#            plain-whole: plain with 540 steps on whole recipes in stage 1 instead of 180 (3x the epochs there)
#   SPLIT    unseen | all         (unseen: without the 18 held-out dishes, dataset.exclude_unseen=true)
# Train one variant at a time: a micro-batch of 4 sixteen-step windows peaks at ~13 GB (the activations of 30
# layers over ~4,000 tokens; the LM head now runs only at the labelled positions, which took 15 % off the step's
# memory in benchmarks/train_memory_bench.py), and two variants side by side were OOM-killed in 24 GiB. A killed
# run resumes (resume=auto) when rerun.
# Expects the builds that scripts/train_default_director.sh makes first (runs/cookgen-youcook2, -typical, -demos).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ] || [ $# -gt 4 ]; then
    echo "error: usage: bash scripts/train_director_variant.sh plain|neighbours|plain-long|plain-whole unseen|all OUT [SHARED_DATA_DIR]" >&2
    exit 2
fi
VARIANT=$1 SPLIT=$2 OUT=$3 SHARED=${4:-../shared/data}
BIN=.venv/bin
DEMOS=$SHARED/videoauteur_demos
TYPICAL=100 WHOLE=180
case $VARIANT in
    plain) RA=false ;;
    neighbours) RA=true ;;
    plain-long) RA=false TYPICAL=300 ;;
    plain-whole) RA=false WHOLE=540 ;;
    *) echo "error: VARIANT must be plain, neighbours, plain-long or plain-whole" >&2; exit 2 ;;
esac
case $SPLIT in unseen) EX=true ;; all) EX=false ;; *) echo "error: SPLIT must be unseen or all" >&2; exit 2 ;; esac
for d in runs/cookgen-youcook2 runs/cookgen-youcook2-typical runs/cookgen-demos runs/cookgen-demos-val; do
    [ -d "$d" ] || { echo "error: $d is missing: run the build commands at the top of scripts/train_default_director.sh" >&2; exit 2; }
done
COMMON="dataset.captions_csv=$DEMOS/captions.csv dataset.caption_lines=100 dataset.visual_repeat=5
    dataset.context_steps=16 dataset.stride=16 dataset.group_by_length=true
    dataset.neighbour_recipes=$RA dataset.exclude_unseen=$EX
    model.lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]
    train.batch_size=4 train.grad_accum=2 train.warmup_steps=10 train.save_every=30 train.lr=0.0006"
# shellcheck disable=SC2086
$BIN/director train --config default data=runs/cookgen-youcook2,runs/cookgen-demos,runs/cookgen-demos-val \
    out="$OUT-s1" $COMMON dataset.fill_blocks=false train.max_steps=$WHOLE train.eval_every=$WHOLE seed=1
# shellcheck disable=SC2086
$BIN/director train --config default data=runs/cookgen-youcook2-typical,runs/cookgen-demos,runs/cookgen-demos-val \
    out="$OUT" $COMMON dataset.fill_blocks=true train.max_steps=$TYPICAL train.eval_every=$TYPICAL \
    train.init_from="$OUT-s1/final" seed=2
echo "trained: $OUT/final"
