#!/usr/bin/env bash
# Natural text: the default corpus (CPython's documentation, on every Python install). Pretrain an
# MDLM and its AR twin (the judge) on it, fine-tune arms from the one MDLM checkpoint on
# prompt + continuation canvases (CE with tail slack; CTC with random and with model-aligned slack;
# CTC+CE with model-aligned slack), continue held-out prompts with the confidence sampler in blocks
# and with the ancestral one at shift-probe rates 0..10%, and score the continuations with the judge.
#
#   bash runs/text.sh [OUT]          # OUT defaults to exp/text; ~25 min on 2 CPU cores
#   bash runs/text.sh --tiny OUT     # toy sizes, seconds per stage (the tests run this)
#
# Rerunning skips finished stages (runs/lib.sh). Results: OUT/score-*/results.md and .json, plots
# OUT/score-*/*.svg; learning curves of every arm: OUT/curves/curves.md.
source "$(dirname "$0")/lib.sh"
OUT="${OUT:-exp/text}"

if [ "$TINY" = 1 ]; then
    SEQ=32; TASK="--n-test 4 --prompt-len 8 --length 24"
    MODEL="--n-layer 1 --n-head 2 --n-embd 32"
    PRE="--steps 10 --eval-interval 5"; FT="--steps 4 --eval-interval 2 --lr 1e-3"; N_BOOT=50
else
    SEQ=128; TASK="--n-test 64 --prompt-len 32 --length 96"
    MODEL="--n-layer 4 --n-head 4 --n-embd 128"
    PRE="--steps 1000 --eval-interval 250"; FT="--steps 200 --eval-interval 50 --lr 5e-4"; N_BOOT=2000
fi
COMMON="--seq-len $SEQ --batch-size 32 --seed 1337 --device cpu --no-progress --sample-interval 0"
RATES="0 0.01 0.02 0.05 0.1"

# 1. held-out prompts: evenly spaced prefixes of the held-out 5% of the corpus, with their true
#    continuations (the reference row)
stage $OUT/task python evaluate.py task text --out-dir $OUT/task $TASK

# 2. pretrain the MDLM (CE / NELBO) and the AR judge on the same corpus
stage $OUT/pretrained python train.py --out-dir $OUT/pretrained $COMMON $MODEL $PRE --lr 2e-3
stage $OUT/judge      python train.py --out-dir $OUT/judge --objective ar $COMMON $MODEL $PRE --lr 2e-3

# 3. the arms: 32 prompt bytes, then a 96-position response canvas with 10% slack
INIT="--init-from $OUT/pretrained/ckpt.pt --prompt-len 32 --slack-rate 0.1 $COMMON $FT"
[ "$TINY" = 1 ] && INIT="$INIT --prompt-len 8"
stage $OUT/ce-ft         python train.py $INIT --out-dir $OUT/ce-ft --loss ce --slack-placement tail
stage $OUT/ctc-random    python train.py $INIT --out-dir $OUT/ctc-random --loss ctc --slack-placement random
stage $OUT/ctc-model     python train.py $INIT --out-dir $OUT/ctc-model --loss ctc --slack-placement model
stage $OUT/ctc+ce-model  python train.py $INIT --out-dir $OUT/ctc+ce-model --loss ctc+ce --slack-placement model
ARMS="pretrained ce-ft ctc-random ctc-model ctc+ce-model"

# 4. continue every held-out prompt (temperature 1): the confidence sampler in 4 blocks, 2
#    positions per step (the primary rows), and ancestral with one position per step
for arm in $ARMS; do
    stage $OUT/gens/$arm-confidence python decode.py --ckpt $OUT/$arm/ckpt.pt --prompts $OUT/task/test.jsonl \
        --out $OUT/gens/$arm-confidence/gens.jsonl --sampler confidence --block-length $((SEQ * 3 / 16)) \
        --per-step 2 --temperature 1 --shift-rates $RATES --device cpu --batch-size 128
    stage $OUT/gens/$arm-ancestral python decode.py --ckpt $OUT/$arm/ckpt.pt --prompts $OUT/task/test.jsonl \
        --out $OUT/gens/$arm-ancestral/gens.jsonl --sampler ancestral --per-step 2 \
        --temperature 1 --shift-rates $RATES --device cpu --batch-size 128
done

# 5. score with the judge: one table per sampler, paired bootstrap intervals against ce-ft
for sampler in confidence ancestral; do
    GENS=""; for arm in $ARMS; do GENS="$GENS $arm=$OUT/gens/$arm-$sampler/gens.jsonl"; done
    python evaluate.py score --task text --refs $OUT/task/test.jsonl --gens $GENS --baseline ce-ft \
        --judge $OUT/judge/ckpt.pt --n-boot $N_BOOT --out-dir $OUT/score-$sampler --device cpu
done
LOGS=""; for arm in $ARMS; do [ "$arm" = pretrained ] || LOGS="$LOGS $arm=$OUT/$arm/log.jsonl"; done
python evaluate.py curves --logs $LOGS --out-dir $OUT/curves
