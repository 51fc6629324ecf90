#!/usr/bin/env bash
# The copy task: prompt = 8 random letters and "=", answer = the same letters. The answer is
# known, so a letter one slot off costs exactly one edit and the shift probe's effect is exact.
# Pretrain an MDLM with CE; fine-tune the arms from it (ARMS below), three seeds each, all for
# the same steps (as runs/grammar.sh); choose the decoder on validation strings; only then decode
# the held-out test strings, once, greedily, at shift-probe rates 0..10%; then continue every
# fine-tune at a constant learning rate, the evidence that it has converged.
#
#   bash runs/copy.sh [OUT]                 # OUT = exp/copy; CPU sizes (JOBS=2 THREADS=1 on 2
#                                           # cores: results/README.md gives the stage times)
#   bash runs/copy.sh --tiny OUT            # toy sizes, seconds per stage (the tests run this)
#   DEVICE=cuda SIZE=gpu bash runs/copy.sh  # the GPU preset: longer strings, a larger model
#
# Declared before any test string is decoded, and read by the report from the score files:
#   the arms of the verdict   ARMS below, every one against the CE fine-tune (ce-ft)
#   the primary metric        exact match: an output of another length than the answer is never
#                             exact, so writing less cannot raise it (the length error is kept
#                             beside it)
#   the primary comparison    ctc-random (the default slack CTC) - ce-ft, exact match, at the
#                             paper's 1% probe rate; every other comparison is exploratory
#   the decoder               the confidence sampler, greedy; its slack rule, positions per step
#                             and block length chosen on validation strings by `evaluate.py
#                             choose` (the best mean exact match over the fine-tunes and the
#                             validation rates 0 and 5%)
#   the test strings          drawn from a seed never decoded before (task seed + 3), decoded once,
#                             after every choice; the earlier test strings (seed + 1, decoded for
#                             the slack-rule and rate sweeps before these declarations) are scored
#                             too, as a second, labelled set (score-test-old), at shift 0 and 1%
#
# Rerunning skips finished stages (runs/lib.sh). Results: OUT/score-*/results.md and .json,
# learning curves OUT/curves/; python runs/report.py turns them into results/README.md.
source "$(dirname "$0")/lib.sh"
OUT="${OUT:-exp/copy}"

case "$SIZE" in
tiny)
    TASK="--n-train 200 --n-val 4 --n-test 8 --min-len 2 --max-len 4"; SEQ=16; B=16
    MODEL="--n-layer 1 --n-head 2 --n-embd 32"; PRE="--steps 20 --eval-interval 10"
    FT="--steps 6 --eval-interval 3"; SEEDS="1"; MORE="--steps 4 --eval-interval 2 --warmup 1"
    N_BOOT=50 ;;
cpu)  # 0.83M parameters; every arm 2000 steps
    TASK="--n-train 20000 --n-val 200 --n-test 256 --min-len 8 --max-len 8"; SEQ=32; B=64
    MODEL="--n-layer 4 --n-head 4 --n-embd 128"; PRE="--steps 1000 --eval-interval 250"
    FT="--steps 2000 --eval-interval 250"; SEEDS="1 2 3"
    MORE="--steps 500 --eval-interval 100 --warmup 50"; N_BOOT=2000 ;;
gpu)  # strings of 16-32 letters, 25M parameters (estimated: 25 minutes on one H100)
    TASK="--n-train 200000 --n-val 200 --n-test 256 --min-len 16 --max-len 32"; SEQ=80; B=256
    MODEL="--n-layer 8 --n-head 8 --n-embd 512"; PRE="--steps 8000 --eval-interval 1000"
    FT="--steps 4000 --eval-interval 500"; SEEDS="1 2 3"
    MORE="--steps 1000 --eval-interval 200 --warmup 100"; N_BOOT=2000 ;;
esac
COMMON="--seq-len $SEQ --batch-size $B $TRAIN"
RATES="0 0.01 0.02 0.05 0.1"
# the CPU preset trains the arms that the primary comparison and random slack need; the
# model-placement arms (an alignment every step) on request (ARMS_CPU) and in every other preset
ARMS="ce-ft ctc-random ctc-model ctc+ce-model ctc+ce-random"
if [ "$SIZE" = cpu ]; then ARMS="${ARMS_CPU:-ce-ft ctc-random ctc+ce-random}"; fi
DECODE="--sampler confidence --temperature 0 --batch-size 512 $RUN"
SCORE="--task copy --primary-metric exact --baseline ce-ft --n-boot $N_BOOT"
record_setup "$OUT" seq_len=$SEQ slack_rate=0.1 temperature=0 primary_declared_before_test=true \
    arms="\"$ARMS\""

# 1. the task: train, validation (seed + 2), test (seed + 3) and the earlier test strings
#    (seed + 1, test-old), none seen twice
renew_task $OUT
stage $OUT/task python evaluate.py task copy --out-dir $OUT/task $TASK --seed 0

# 2. pretrain with CE: slack rate 0, the answer and its EOS padded with EOS (as LLaDA pads)
stage $OUT/pretrained python train.py --sft $OUT/task/train.jsonl --out-dir $OUT/pretrained \
    $COMMON $MODEL $PRE --lr 2e-3 --loss ce --seed 1337

# 3. the arms, each with every seed: same init, data, steps and learning rate; 10% slack
INIT="--sft $OUT/task/train.jsonl $COMMON --slack-rate 0.1"
CKPTS="$OUT/pretrained/ckpt.pt"
train_arms $OUT $OUT/pretrained/ckpt.pt $INIT $FT --lr 5e-4
settle

# 4. the decoder, on validation strings only: every slack rule x 1 or 2 positions per step x
#    blocks of 8 or 16, at shift 0 and 5%; `choose` fixes the setting (its rule is stated above)
choose_decoder $OUT ce-ft:plain/1/8 --slack-rules plain last threshold first --per-steps 1 2 \
    --block-lengths 8 16

# 5. the test strings, decoded once, at every probe rate, with the chosen decoder
decode_all $OUT/test-gens "$CKPTS" --prompts $OUT/task/test.jsonl $CHOSEN \
    --shift-rates $RATES $DECODE
python evaluate.py score $SCORE --refs $OUT/task/test.jsonl --gens $OUT/test-gens/*.jsonl \
    --primary ctc-random 0.01 --out-dir $OUT/score-test
decode_all $OUT/test-old-gens "$CKPTS" --prompts $OUT/task/test-old.jsonl $CHOSEN \
    --shift-rates 0 0.01 $DECODE
python evaluate.py score $SCORE --refs $OUT/task/test-old.jsonl \
    --gens $OUT/test-old-gens/*.jsonl --primary ctc-random 0.01 --out-dir $OUT/score-test-old

# 6. convergence: every fine-tune continued at a constant learning rate, validated as it goes,
#    and its continuation decoding the validation strings with the chosen decoder
continue_arms $OUT $INIT $MORE --lr 5e-4 --min-lr-ratio 1
decode_all $OUT/val-more "$MORE_CKPTS" --prompts $OUT/task/val.jsonl $CHOSEN \
    --shift-rates 0 0.05 $DECODE
python evaluate.py score $SCORE --refs $OUT/task/val.jsonl --gens $OUT/val-more/*.jsonl \
    --out-dir $OUT/val-score-more

# 7. learning curves of every fine-tune and of every continuation
LOGS=""
for d in "$OUT"/*@*/; do LOGS="$LOGS $(basename "$d")=$d/log.jsonl"; done
python evaluate.py curves --logs $LOGS --out-dir $OUT/curves
LOGS=""
for d in "$OUT"/more/*@*/; do LOGS="$LOGS $(basename "$d")=$d/log.jsonl"; done
python evaluate.py curves --logs $LOGS --out-dir $OUT/curves-more
