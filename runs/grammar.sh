#!/usr/bin/env bash
# The decisive experiment: open-ended sentences from a small grammar whose words differ in
# length, so a masked diffusion model that commits a byte far to the right must guess how long the
# words before it will be. Pretrain an MDLM with CE until it writes well; fine-tune the arms from
# it, three seeds each, all for the same steps (CE with tail slack, the baseline; CTC with random
# and with model-aligned slack; CTC+CE with each; the CPU preset leaves out the model-aligned two,
# see ARMS); choose the decoder on validation prompts; only
# then decode the fresh test prompts, once, at shift-probe rates 0..10%. Every output is scored
# exactly, and as a whole: its length against the data's, its sentences and words, how many valid
# outputs are distinct.
# Then the evidence that the fine-tunes have converged: each continued at a constant learning rate.
#
#   bash runs/grammar.sh [OUT]                 # OUT = exp/grammar; CPU sizes (JOBS=2 THREADS=1 on
#                                              # 2 cores: results/README.md gives the stage times)
#   bash runs/grammar.sh --tiny OUT            # toy sizes, seconds per stage (the tests run this)
#   DEVICE=cuda SIZE=gpu bash runs/grammar.sh  # the GPU preset (see below)
#   TEXTS=long bash runs/grammar.sh            # OUT = exp/long: the long-output experiment
#
# TEXTS=long is the paper's regime, where a shift can compound: texts of 5-8 sentences
# (155-205 bytes) after the same one-word prompt, on a canvas of 232 positions. The protocol is
# the same; what its cost asks to change: a step keeps about the base's tokens (a quarter of the
# texts), a decoding costs about the canvas's length squared (23 times the base's per text), so
# fewer validation and test prompts, rates 0, 1%, 5% and 10%, a decoder grid of the slack rules
# plain and last and blocks of 8 or 32 at one position per step (on the short texts, two per
# step lost more than half the parse rate on validation), and no second test set or end-of-text
# probe (there are no earlier test prompts; a first sentence never ends these texts).
#
# Declared before any test prompt is decoded, and read by the report from the score files:
#   the arms of the verdict   ARMS below, every one against the CE fine-tune (ce-ft)
#   the primary metric        parses_std: the share of outputs that parse, standardised to the
#                             data's length distribution (per length bin of the data's quintiles,
#                             the share that parses, weighted by the data's share of the bin; a bin
#                             an arm never reaches counts 0): writing shorter or simpler texts than
#                             the data cannot raise it, as it raises the plain share that parses
#                             (kept beside it, with the coverage of the data's lengths)
#   the primary comparison    ctc-random (the default slack CTC) - ce-ft, parses_std, at the
#                             paper's 1% probe rate; every other comparison is exploratory
#   the decoder               the confidence sampler at temperature 0.8; its slack rule,
#                             positions per step and block length chosen on validation prompts by
#                             `evaluate.py choose` (the best mean parses_std over the fine-tunes
#                             and the validation rates 0 and 5%)
#   the test prompts          drawn from a seed never decoded before (task seed + 3), decoded once,
#                             after every choice; the earlier test prompts (seed + 1, decoded for
#                             the slack-rule and rate sweeps before these declarations) are scored
#                             too, as a second, labelled set (score-test-old), at shift 0 and 1%
#                             only: they cost two fifths of a test decoding
#
# Rerunning skips finished stages (runs/lib.sh). Results: OUT/score-*/results.md and .json,
# learning curves OUT/curves/; python runs/report.py turns them into results/README.md.
source "$(dirname "$0")/lib.sh"
TEXTS="${TEXTS:-short}"
case "$TEXTS" in
    short) OUT="${OUT:-exp/grammar}" ;;
    long) OUT="${OUT:-exp/long}" ;;
    *) echo "error: TEXTS must be short or long, not $TEXTS" >&2; exit 2 ;;
esac
# a folder's stages are skipped when done: they must be of the same texts
if [ -f "$OUT/task/DONE" ] && [ "$(python -c 'import json, sys
print(json.load(open(sys.argv[1])).get("texts", "short"))' "$OUT/setup.json")" != "$TEXTS" ]; then
    echo "error: $OUT holds an experiment on other texts than TEXTS=$TEXTS: give another" \
         "folder" >&2
    exit 2
fi

case "$SIZE" in
tiny)
    TASK="--n-train 300 --n-val 6 --n-test 6"; MODEL="--n-layer 1 --n-head 2 --n-embd 32"; B=16
    PRE="--steps 20 --eval-interval 10"; FT="--steps 6 --eval-interval 3"; SEEDS="1 2"
    MORE="--steps 4 --eval-interval 2 --warmup 1"; N_BOOT=50; MIN_COUNT=1
    BLOCKS="16" ;;  # one block length: the decoder grid is most of the toy run's time
cpu)  # 0.83M parameters, 18M pretraining tokens; each fine-tune 2000 steps, 6M tokens
    TASK="--n-train 20000 --n-val 200 --n-test 320"; MODEL="--n-layer 4 --n-head 4 --n-embd 128"
    B=64; PRE="--steps 6000 --eval-interval 500"; FT="--steps 2000 --eval-interval 250"
    SEEDS="1 2 3"; MORE="--steps 500 --eval-interval 100 --warmup 50"; N_BOOT=2000
    MIN_COUNT=50; BLOCKS="16 8" ;;
gpu)  # 25M parameters, 590M pretraining tokens: about 40 minutes on one H100 (estimated)
    TASK="--n-train 200000 --n-val 200 --n-test 320"; MODEL="--n-layer 8 --n-head 8 --n-embd 512"
    B=512; PRE="--steps 24000 --eval-interval 2000"; FT="--steps 3000 --eval-interval 500"
    SEEDS="1 2 3"; MORE="--steps 750 --eval-interval 150 --warmup 75"; N_BOOT=2000
    MIN_COUNT=50; BLOCKS="16 8" ;;
esac
SEQ=48
RATES="0 0.01 0.02 0.05 0.1"
TASK="$TASK --max-bytes 40"
GRID="--slack-rules plain last threshold first --per-steps 1 2 --block-lengths $BLOCKS"
START=ce-ft:plain/1/16
if [ "$TEXTS" = long ]; then
    case "$SIZE" in
        tiny) TASK="--n-train 100 --n-val 2 --n-test 3" ;;
        cpu) TASK="--n-train 20000 --n-val 16 --n-test 64" ;;
        gpu) TASK="--n-train 200000 --n-val 64 --n-test 256" ;;
    esac
    TASK="$TASK --min-sentences 5 --max-sentences 8 --min-bytes 155 --max-bytes 205"
    SEQ=232; B=$((B / 4)); RATES="0 0.01 0.05 0.1"
    GRID="--slack-rules plain last --per-steps 1 --block-lengths 32 8"; START=ce-ft:plain/1/32
    if [ "$SIZE" = tiny ]; then  # one seed: the toy run only has to make every file
        GRID="--slack-rules plain --per-steps 4 8 --block-lengths 32"; START=ce-ft:plain/4/32
        SEEDS="1"
    fi
fi
COMMON="--seq-len $SEQ --batch-size $B $TRAIN"
# the CPU preset trains the three arms that the primary comparison and random slack need; the
# model-placement arms, whose fine-tunes cost twice as much there (an alignment every step), on
# request (ARMS_CPU) and in every other preset
ALL_ARMS="ce-ft ctc-random ctc-model ctc+ce-model ctc+ce-random"
ARMS="$ALL_ARMS"
if [ "$SIZE" = cpu ]; then ARMS="${ARMS_CPU:-ce-ft ctc-random ctc+ce-random}"; fi
DECODE="--sampler confidence --temperature 0.8 --batch-size 512 $RUN"
SCORE="--task grammar --primary-metric parses_std --baseline ce-ft --n-boot $N_BOOT"
record_setup "$OUT" seq_len=$SEQ slack_rate=0.1 temperature=0.8 \
    primary_declared_before_test=true arms="\"$ARMS\"" texts="\"$TEXTS\""

# 1. the task: prompt = the first word of a text of 1-3 sentences, response = the rest; at most
#    40 bytes in all, so that prompt + response + EOS + 10% slack fit the 48-position canvas.
#    Validation prompts (seed + 2) choose settings; test prompts (seed + 3) only score them, and
#    the earlier test prompts (seed + 1) are the labelled second set test-old. Texts drawn before
#    are dropped (task.json counts them), so every prompt is new to the models
renew_task $OUT
stage $OUT/task python evaluate.py task grammar --out-dir $OUT/task $TASK --seed 0

# 2. pretrain with CE: slack rate 0, the response and its EOS padded with EOS (as LLaDA pads)
stage $OUT/pretrained python train.py --sft $OUT/task/train.jsonl --out-dir $OUT/pretrained \
    $COMMON $MODEL $PRE --lr 2e-3 --loss ce --seed 1337

# 3. the arms, each with every seed: same init, data, steps and learning rate; 10% slack
INIT="--sft $OUT/task/train.jsonl $COMMON --slack-rate 0.1"
CKPTS="$OUT/pretrained/ckpt.pt"
train_arms $OUT $OUT/pretrained/ckpt.pt $INIT $FT --lr 5e-4
settle

# 4. the decoder, on validation prompts only: the settings of GRID (every slack rule x 1 or 2
#    positions per step x blocks of 16 or 8; for the long texts, the grid stated at the top), at
#    shift 0 and 5%, for every checkpoint; `choose` then fixes
#    the setting (its rule is stated above). The ancestral sampler beside it shows what lengths
#    the models themselves want
choose_decoder $OUT $START $GRID
decode_all $OUT/val-ancestral "$CKPTS" --prompts $OUT/task/val.jsonl --sampler ancestral \
    --per-step 1 --temperature 0.8 $RUN
python evaluate.py score $SCORE --refs $OUT/task/val.jsonl --gens $OUT/val-ancestral/*.jsonl \
    --out-dir $OUT/val-score-ancestral

# 5. the fresh test prompts, decoded once, at every probe rate, with the chosen decoder; then the
#    earlier test prompts at shift 0 and 1%, the second set
decode_all $OUT/test-gens "$CKPTS" --prompts $OUT/task/test.jsonl $CHOSEN \
    --shift-rates $RATES $DECODE
python evaluate.py score $SCORE --refs $OUT/task/test.jsonl --gens $OUT/test-gens/*.jsonl \
    --primary ctc-random 0.01 --out-dir $OUT/score-test
if [ "$TEXTS" = short ]; then
    decode_all $OUT/test-old-gens "$CKPTS" --prompts $OUT/task/test-old.jsonl $CHOSEN \
        --shift-rates 0 0.01 $DECODE
    python evaluate.py score $SCORE --refs $OUT/task/test-old.jsonl \
        --gens $OUT/test-old-gens/*.jsonl --primary ctc-random 0.01 --out-dir $OUT/score-test-old
fi

# 6. convergence: every fine-tune continued from its last checkpoint at a constant learning rate
#    (the fine-tunes' peak) and validated as it goes; the continued checkpoints decode the
#    validation prompts with the chosen decoder, to be set beside their 2000-step selves
continue_arms $OUT $INIT $MORE --lr 5e-4 --min-lr-ratio 1
decode_all $OUT/val-more "$MORE_CKPTS" --prompts $OUT/task/val.jsonl $CHOSEN \
    --shift-rates 0 0.05 $DECODE
python evaluate.py score $SCORE --refs $OUT/task/val.jsonl --gens $OUT/val-more/*.jsonl \
    --out-dir $OUT/val-score-more

# 7. does each model know when a text must end? P(EOS) after a first sentence of L bytes, against
#    the data's P(end | L), for every checkpoint (seeds pooled)
if [ "$TEXTS" = short ]; then
    python evaluate.py lengths --ckpts $CKPTS --refs $OUT/task/train.jsonl \
        --min-count $MIN_COUNT --out-dir $OUT/lengths
fi

# 8. learning curves of every fine-tune and of every continuation, on the same held-out canvases
LOGS=""
for d in "$OUT"/*@*/; do LOGS="$LOGS $(basename "$d")=$d/log.jsonl"; done
python evaluate.py curves --logs $LOGS --out-dir $OUT/curves
LOGS=""
for d in "$OUT"/more/*@*/; do LOGS="$LOGS $(basename "$d")=$d/log.jsonl"; done
python evaluate.py curves --logs $LOGS --out-dir $OUT/curves-more
