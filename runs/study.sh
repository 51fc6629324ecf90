#!/usr/bin/env bash
# What decides whether slack helps? The grammar experiment (runs/grammar.sh) is the base; each
# variant here changes one property of its task and keeps the rest of the protocol: its own CE
# pretraining, then the two arms of the primary comparison (ce-ft and ctc-random) with three
# seeds each, and the test prompts decoded once, at shift-probe rates 0, 1% and 10%, with the
# decoder that runs/grammar.sh chose on its validation prompts (fixed before any prompt here is
# decoded). The variants:
#   uncond   no prompt: the whole text is generated (the base gives its first word)
#   pad      a canvas twice as long for the same texts: most of it is EOS padding
#   spread   texts of 24-30 bytes only: the output lengths barely vary (base: 8-40 bytes)
#   long     texts of 5-8 sentences, 155-205 bytes: long outputs, where a shift can compound
# The CPU preset runs the first three (VARIANTS="uncond pad spread long" adds the fourth: its
# canvas is five times the base's); the other presets run all four.
# Each variant's test prompts come from a seed never decoded before (task seed + 3). Its primary
# metric is the grammar run's, parses_std (the parse rate standardised to the data's length
# distribution), and its primary comparison ctc-random - ce-ft at 1%, declared here. The study is
# exploratory all the same: it was designed after the grammar verdict was seen.
#
#   bash runs/study.sh [OUT]                 # OUT = exp/study, after runs/grammar.sh into
#                                            # exp/grammar (GRAMMAR=folder to name another)
#   bash runs/study.sh --tiny OUT            # toy sizes, after runs/grammar.sh --tiny
#   DEVICE=cuda SIZE=gpu bash runs/study.sh  # the GPU preset, after the GPU grammar run
#
# Rerunning skips finished stages (runs/lib.sh). Results: OUT/VARIANT/score/results.md and .json
# for each variant and for the base (OUT/base: the grammar run's outputs, scored as here).
source "$(dirname "$0")/lib.sh"
OUT="${OUT:-exp/study}"
GRAMMAR="${GRAMMAR:-$(dirname "$OUT")/grammar}"
if [ ! -f "$GRAMMAR/choice/flags.txt" ] || [ ! -d "$GRAMMAR/test-gens" ]; then
    echo "error: $GRAMMAR has no chosen decoder or test outputs: run runs/grammar.sh first" \
         "(or name its folder with GRAMMAR=)" >&2
    exit 2
fi
CHOSEN=$(cat "$GRAMMAR/choice/flags.txt")

case "$SIZE" in
tiny)
    N="--n-train 300 --n-val 2 --n-test 6"; MODEL="--n-layer 1 --n-head 2 --n-embd 32"; B=16
    PRE="--steps 10 --eval-interval 5"; FT="--steps 4 --eval-interval 2"; SEEDS="1"
    N_LONG="--n-train 100 --n-val 2 --n-test 4"; N_BOOT=50
    VARIANTS="${VARIANTS:-uncond pad spread long}" ;;
cpu)  # the model and steps of runs/grammar.sh; fewer test prompts for the long texts
    N="--n-train 20000 --n-val 16 --n-test 256"; MODEL="--n-layer 4 --n-head 4 --n-embd 128"
    B=64; PRE="--steps 6000 --eval-interval 500"; FT="--steps 2000 --eval-interval 500"
    SEEDS="1 2 3"; N_LONG="--n-train 20000 --n-val 16 --n-test 64"; N_BOOT=2000
    VARIANTS="${VARIANTS:-uncond pad spread}" ;;
gpu)  # the GPU preset of runs/grammar.sh
    N="--n-train 200000 --n-val 16 --n-test 256"; MODEL="--n-layer 8 --n-head 8 --n-embd 512"
    B=512; PRE="--steps 24000 --eval-interval 2000"; FT="--steps 3000 --eval-interval 500"
    SEEDS="1 2 3"; N_LONG="--n-train 200000 --n-val 16 --n-test 256"; N_BOOT=2000
    VARIANTS="${VARIANTS:-uncond pad spread long}" ;;
esac
RATES="0 0.01 0.1"
ARMS="ce-ft ctc-random"
DECODE="$CHOSEN --sampler confidence --temperature 0.8 --batch-size 512 $RUN"
SCORE="--task grammar --primary-metric parses_std --baseline ce-ft --primary ctc-random 0.01"
SCORE="$SCORE --n-boot $N_BOOT"

# the task flags, canvas and batch of each variant (the batch keeps about the base's tokens per
# step: base 48 positions x B)
variant() {
    case "$1" in
        uncond) TASK="$N --prompt-words 0 --max-bytes 40"; SEQ=48; VB=$B ;;
        pad) TASK="$N --max-bytes 40"; SEQ=96; VB=$((B / 2)) ;;
        spread) TASK="$N --min-bytes 24 --max-bytes 30"; SEQ=48; VB=$B ;;
        long) TASK="$N_LONG --min-sentences 5 --max-sentences 8 --min-bytes 155 --max-bytes 205"
              SEQ=232; VB=$((B / 4)) ;;
    esac
}

# the base: the grammar run's pretrained model and these arms, its test outputs scored alone
mkdir -p $OUT/base
ln -sfn "$(cd "$GRAMMAR" && pwd)/task" $OUT/base/task
record_setup $OUT/base seq_len=48 slack_rate=0.1 temperature=0.8 variant='"base"' \
    primary_declared_before_test=true
BASE_GENS="$GRAMMAR/test-gens/pretrained.jsonl"
for arm in $ARMS; do BASE_GENS="$BASE_GENS $(ls "$GRAMMAR"/test-gens/"$arm"@*.jsonl)"; done
python evaluate.py score $SCORE --refs $OUT/base/task/test.jsonl --gens $BASE_GENS \
    --out-dir $OUT/base/score

# each variant's task and CE pretraining, then its arms, all spawned (JOBS at once), then its
# test prompts decoded and scored
for v in $VARIANTS; do
    variant $v
    record_setup $OUT/$v seq_len=$SEQ slack_rate=0.1 temperature=0.8 variant="\"$v\"" \
        primary_declared_before_test=true
    renew_task $OUT/$v
    stage $OUT/$v/task python evaluate.py task grammar --out-dir $OUT/$v/task $TASK --seed 0
done
for v in $VARIANTS; do
    variant $v
    spawn $OUT/$v/pretrained python train.py --sft $OUT/$v/task/train.jsonl \
        --out-dir $OUT/$v/pretrained --seq-len $SEQ --batch-size $VB $TRAIN $MODEL $PRE \
        --lr 2e-3 --loss ce --seed 1337
done
settle
CKPTS=""  # train_arms lists them; each variant's are listed again below
for v in $VARIANTS; do
    variant $v
    train_arms $OUT/$v $OUT/$v/pretrained/ckpt.pt --sft $OUT/$v/task/train.jsonl \
        --seq-len $SEQ --batch-size $VB $TRAIN --slack-rate 0.1 $FT --lr 5e-4
done
settle
for v in $VARIANTS; do
    V=$OUT/$v
    CKPTS="$V/pretrained/ckpt.pt"
    for seed in $SEEDS; do
        for arm in $ARMS; do CKPTS="$CKPTS $V/$arm@$seed/ckpt.pt"; done
    done
    decode_all $V/test-gens "$CKPTS" --prompts $V/task/test.jsonl --shift-rates $RATES $DECODE
    python evaluate.py score $SCORE --refs $V/task/test.jsonl --gens $V/test-gens/*.jsonl \
        --out-dir $V/score
    LOGS=""
    for d in "$V"/*@*/; do LOGS="$LOGS $(basename "$d")=$d/log.jsonl"; done
    python evaluate.py curves --logs $LOGS --out-dir $V/curves
done
