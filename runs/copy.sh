#!/usr/bin/env bash
# The copy task: prompt = 8 random letters and "=", answer = the same letters. The answer is
# known, so a letter one slot off costs exactly one edit and the shift probe's effect is exact.
# Pretrain an MDLM with CE, fine-tune four arms from it with several seeds (CE with tail slack;
# CTC with random and with model-aligned slack; CTC+CE with model-aligned slack), all for the same
# steps, and decode the held-out strings greedily, one position per step, at shift-probe rates
# 0..10%, with decode.py's default slack rule and with each of the other rules; then CTC+CE with
# random slack.
#
#   bash runs/copy.sh [OUT]                 # OUT = exp/copy; CPU sizes: its stages took 2 h
#                                           # 10 min on 2 cores, beside runs/grammar.sh
#   bash runs/copy.sh --tiny OUT            # toy sizes, seconds per stage (the tests run this)
#   DEVICE=cuda SIZE=gpu bash runs/copy.sh  # the GPU preset: longer strings, a larger model
#
# Rerunning skips finished stages (runs/lib.sh). Results: OUT/score-*/results.md and .json,
# learning curves OUT/curves/; python runs/report.py turns them into results/README.md.
source "$(dirname "$0")/lib.sh"
OUT="${OUT:-exp/copy}"

case "$SIZE" in
tiny)
    TASK="--n-train 200 --n-val 4 --n-test 8 --min-len 2 --max-len 4"; SEQ=16; B=16
    MODEL="--n-layer 1 --n-head 2 --n-embd 32"; PRE="--steps 20 --eval-interval 10"
    FT="--steps 6 --eval-interval 3"; SEEDS="1 2"; N_BOOT=50 ;;
cpu)  # 0.83M parameters; the CTC arms need about 2000 steps to fit (README, learning curves)
    TASK="--n-train 20000 --n-test 256 --min-len 8 --max-len 8"; SEQ=32; B=64
    MODEL="--n-layer 4 --n-head 4 --n-embd 128"; PRE="--steps 1000 --eval-interval 250"
    FT="--steps 2000 --eval-interval 250"; SEEDS="1 2 3"; N_BOOT=2000 ;;
gpu)  # strings of 16-32 letters, 25M parameters (estimated: 25 minutes on one H100)
    TASK="--n-train 200000 --n-test 256 --min-len 16 --max-len 32"; SEQ=80; B=256
    MODEL="--n-layer 8 --n-head 8 --n-embd 512"; PRE="--steps 8000 --eval-interval 1000"
    FT="--steps 4000 --eval-interval 500"; SEEDS="1 2 3"; N_BOOT=2000 ;;
esac
COMMON="--seq-len $SEQ --batch-size $B $TRAIN"
RATES="0 0.01 0.02 0.05 0.1"
# greedy, one position per step, the confidence sampler in blocks of 8
DECODE="--sampler confidence --block-length 8 --per-step 1 --temperature 0 --batch-size 512 $RUN"
record_setup "$OUT"

# 1. the task (train, and test strings never seen in training)
stage $OUT/task python evaluate.py task copy --out-dir $OUT/task $TASK --seed 0

# 2. pretrain with CE: slack rate 0, the answer and its EOS padded with EOS (as LLaDA pads)
stage $OUT/pretrained python train.py --sft $OUT/task/train.jsonl --out-dir $OUT/pretrained \
    $COMMON $MODEL $PRE --lr 2e-3 --loss ce --seed 1337

# 3. the arms, each with every seed: same init, data, steps and learning rate; 10% slack
INIT="--sft $OUT/task/train.jsonl --init-from $OUT/pretrained/ckpt.pt $COMMON $FT --lr 5e-4"
INIT="$INIT --slack-rate 0.1"
CKPTS="$OUT/pretrained/ckpt.pt"
for seed in $SEEDS; do
    for arm in ce-ft ctc-random ctc-model ctc+ce-model; do  # arm_flags: runs/lib.sh
        spawn $OUT/$arm@$seed python train.py $INIT $(arm_flags $arm) --seed $seed \
            --out-dir $OUT/$arm@$seed
        CKPTS="$CKPTS $OUT/$arm@$seed/ckpt.pt"
    done
done
settle

# 4. decode every held-out string ($DECODE): with decode.py's default slack rule (auto), and with
#    the other rules beside it
stage $OUT/test-auto python decode.py --ckpt $CKPTS --prompts $OUT/task/test.jsonl \
    --out $OUT/test-auto --slack-rule auto --shift-rates $RATES $DECODE
python evaluate.py score --task copy --refs $OUT/task/test.jsonl --baseline ce-ft \
    --gens $OUT/test-auto/*.jsonl --n-boot $N_BOOT --out-dir $OUT/score-auto
stage $OUT/test-rules python decode.py --ckpt $CKPTS --prompts $OUT/task/test.jsonl \
    --out $OUT/test-rules --slack-rules plain last first --shift-rates $RATES $DECODE
python evaluate.py score --task copy --refs $OUT/task/test.jsonl --baseline ce-ft:plain/1 \
    --gens $OUT/test-rules/*.jsonl --n-boot $N_BOOT --out-dir $OUT/score-rules

# 5. the CE term beside random slack (as in runs/grammar.sh), trained after the arms, decoded with
#    decode.py's defaults and scored against ce-ft, ctc-random and ctc+ce-model
TERM_CKPTS=""
for seed in $SEEDS; do
    spawn $OUT/ctc+ce-random@$seed python train.py $INIT $(arm_flags ctc+ce-random) \
        --seed $seed --out-dir $OUT/ctc+ce-random@$seed
    TERM_CKPTS="$TERM_CKPTS $OUT/ctc+ce-random@$seed/ckpt.pt"
done
settle
stage $OUT/test-term python decode.py --ckpt $TERM_CKPTS --prompts $OUT/task/test.jsonl \
    --out $OUT/test-term --slack-rule auto --shift-rates $RATES $DECODE
python evaluate.py score --task copy --refs $OUT/task/test.jsonl --baseline ce-ft \
    --gens $OUT/test-auto/{ce-ft,ctc-random,ctc+ce-model}@*.jsonl $OUT/test-term/*.jsonl \
    --n-boot $N_BOOT --out-dir $OUT/score-term

# 6. learning curves of every fine-tune, on the same held-out canvases
LOGS=""
for d in "$OUT"/*@*/; do LOGS="$LOGS $(basename "$d")=$d/log.jsonl"; done
python evaluate.py curves --logs $LOGS --out-dir $OUT/curves
