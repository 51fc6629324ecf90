#!/usr/bin/env bash
# Natural text: a corpus (the default one, or DATA=your file: UTF-8 text, or token ids written by
# prepare.py with any tokenizer). Pretrain an MDLM and its AR twin (the judge) on it, fine-tune
# arms from the one MDLM checkpoint on prompt + continuation canvases (CE with tail slack; CTC with
# random and with model-aligned slack), continue held-out prompts with the confidence sampler in
# blocks at shift-probe rates 0..10%, and score the continuations with the judge.
#
#   bash runs/text.sh [OUT]                  # OUT = exp/text; CPU sizes (too small to decide
#                                            # anything: see the README); ~40 min on 2 cores
#   bash runs/text.sh --tiny OUT             # toy sizes, seconds per stage (the tests run this)
#   DEVICE=cuda SIZE=gpu DATA=corpus.bin bash runs/text.sh   # a GPT-2-small-sized run on your
#                                            # data (estimated: 30-40 minutes on one H100)
#
# Rerunning skips finished stages (runs/lib.sh). Results: OUT/score-test/results.md and .json,
# learning curves OUT/curves/.
source "$(dirname "$0")/lib.sh"
OUT="${OUT:-exp/text}"
DATA_FLAG=${DATA:+--data $DATA}

case "$SIZE" in
tiny)
    SEQ=32; P=8; L=24; N_TEST=4; MODEL="--n-layer 1 --n-head 2 --n-embd 32"; B=8
    PRE="--steps 10 --eval-interval 5"; FT="--steps 4 --eval-interval 2"; SEEDS="1"; N_BOOT=50 ;;
cpu)
    SEQ=128; P=32; L=96; N_TEST=64; MODEL="--n-layer 4 --n-head 4 --n-embd 128"; B=32
    PRE="--steps 2000 --eval-interval 250"; FT="--steps 1000 --eval-interval 250"; SEEDS="1"
    N_BOOT=2000 ;;
gpu)  # GPT-2 small's shape (124M parameters with a 50k vocabulary), 1024-token canvases
    SEQ=1024; P=256; L=768; N_TEST=256; MODEL="--n-layer 12 --n-head 12 --n-embd 768"; B=32
    PRE="--steps 4000 --eval-interval 500"; FT="--steps 1000 --eval-interval 250"; SEEDS="1 2"
    N_BOOT=2000 ;;
esac
COMMON="--seq-len $SEQ --batch-size $B $TRAIN $DATA_FLAG"
RATES="0 0.01 0.02 0.05 0.1"
record_setup "$OUT"

# 1. held-out prompts: evenly spaced prefixes of the held-out 5% of the corpus, with their true
#    continuations (the reference row)
stage $OUT/task python evaluate.py task text --out-dir $OUT/task --n-test $N_TEST \
    --prompt-len $P --length $L $DATA_FLAG

# 2. pretrain the MDLM (CE / NELBO) and the AR judge on the same corpus
stage $OUT/pretrained python train.py --out-dir $OUT/pretrained $COMMON $MODEL $PRE --lr 2e-3
stage $OUT/judge python train.py --out-dir $OUT/judge --objective ar $COMMON $MODEL $PRE --lr 2e-3

# 3. the arms: P prompt tokens, then a response canvas with 10% slack
INIT="--init-from $OUT/pretrained/ckpt.pt --prompt-len $P --slack-rate 0.1 $COMMON $FT --lr 5e-4"
CKPTS="$OUT/pretrained/ckpt.pt"
for seed in $SEEDS; do
    stage $OUT/ce-ft@$seed python train.py $INIT --out-dir $OUT/ce-ft@$seed --seed $seed \
        --loss ce --slack-placement tail
    stage $OUT/ctc-random@$seed python train.py $INIT --out-dir $OUT/ctc-random@$seed \
        --seed $seed --loss ctc --slack-placement random
    stage $OUT/ctc-model@$seed python train.py $INIT --out-dir $OUT/ctc-model@$seed \
        --seed $seed --loss ctc --slack-placement model
    CKPTS="$CKPTS $OUT/ce-ft@$seed/ckpt.pt $OUT/ctc-random@$seed/ckpt.pt"
    CKPTS="$CKPTS $OUT/ctc-model@$seed/ckpt.pt"
done

# 4. continue every held-out prompt (temperature 1), the confidence sampler in blocks of L / 4,
#    one position per step, decode.py's default slack rule; score with the judge
stage $OUT/test-gens python decode.py --ckpt $CKPTS --prompts $OUT/task/test.jsonl \
    --out $OUT/test-gens --sampler confidence --block-length $((L / 4)) --per-step 1 \
    --temperature 1 --shift-rates $RATES --batch-size 64 $RUN
python evaluate.py score --task text --refs $OUT/task/test.jsonl --gens $OUT/test-gens/*.jsonl \
    --baseline ce-ft --judge $OUT/judge/ckpt.pt --n-boot $N_BOOT --out-dir $OUT/score-test \
    --device $DEVICE

# 5. learning curves of every fine-tune
LOGS=""
for d in "$OUT"/*@*/; do LOGS="$LOGS $(basename "$d")=$d/log.jsonl"; done
python evaluate.py curves --logs $LOGS --out-dir $OUT/curves
