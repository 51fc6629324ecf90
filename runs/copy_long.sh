#!/usr/bin/env bash
# Ablation on the copy task: are 500 fine-tuning steps too few for the slack CTC? Fine-tunes the
# random and mix placements 4x longer (2000 steps) from the pretrained checkpoint of runs/copy.sh,
# decodes with the confidence sampler, and scores them beside that run's CE and CTC arms.
#
#   bash runs/copy.sh OUT && bash runs/copy_long.sh [OUT]   # OUT defaults to exp/copy; ~10 min
#   bash runs/copy_long.sh --tiny OUT                         # after runs/copy.sh --tiny OUT
source "$(dirname "$0")/lib.sh"
OUT="${OUT:-exp/copy}"
[ -f "$OUT/pretrained/DONE" ] || { echo "error: run runs/copy.sh $OUT first" >&2; exit 1; }

if [ "$TINY" = 1 ]; then SEQ=16; FT="--steps 12 --eval-interval 6 --lr 1e-3"; N_BOOT=50
else SEQ=32; FT="--steps 2000 --eval-interval 250 --lr 5e-4"; N_BOOT=2000; fi
COMMON="--seq-len $SEQ --batch-size 64 --seed 1337 --device cpu --no-progress --sample-interval 0"
INIT="--sft $OUT/task/train.jsonl --init-from $OUT/pretrained/ckpt.pt --slack-rate 0.1 $COMMON $FT"
RATES="0 0.01 0.02 0.05 0.1"

stage $OUT/ctc-random-long python train.py $INIT --out-dir $OUT/ctc-random-long --loss ctc --slack-placement random
stage $OUT/ctc-mix-long    python train.py $INIT --out-dir $OUT/ctc-mix-long --loss ctc --slack-placement mix
for arm in ctc-random-long ctc-mix-long; do
    stage $OUT/gens/$arm-confidence python decode.py --ckpt $OUT/$arm/ckpt.pt --prompts $OUT/task/test.jsonl \
        --out $OUT/gens/$arm-confidence/gens.jsonl --sampler confidence --block-length 8 --per-step 1 \
        --temperature 0 --shift-rates $RATES --device cpu --batch-size 256
done

GENS=""
for arm in ce-ft ctc-random ctc-random-long ctc-mix ctc-mix-long; do
    GENS="$GENS $arm=$OUT/gens/$arm-confidence/gens.jsonl"
done
python evaluate.py score --task copy --refs $OUT/task/test.jsonl --gens $GENS --baseline ce-ft \
    --n-boot $N_BOOT --out-dir $OUT/score-long
python evaluate.py curves --logs ctc-random=$OUT/ctc-random/log.jsonl ctc-random-long=$OUT/ctc-random-long/log.jsonl \
    ctc-mix=$OUT/ctc-mix/log.jsonl ctc-mix-long=$OUT/ctc-mix-long/log.jsonl --out-dir $OUT/curves-long
