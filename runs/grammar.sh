#!/usr/bin/env bash
# The decisive experiment: open-ended sentences from a small grammar whose words differ in
# length, so a masked diffusion model that commits a byte far to the right must guess how long the
# words before it will be. Pretrain an MDLM with CE until it writes well, fine-tune four arms
# from it with several seeds (CE with tail slack; CTC with random and with model-aligned slack;
# CTC+CE with model-aligned slack), all for the same steps; choose the confidence sampler's slack
# rule and positions per step on validation prompts; decode the test prompts at shift-probe rates
# 0..10%; then the slack rate (0.05, 0.1, 0.2) of the random-placement CTC, and CTC+CE with
# random slack at the same rates. Every output is scored exactly.
#
#   bash runs/grammar.sh [OUT]                 # OUT = exp/grammar; CPU sizes: with JOBS=2
#                                              # THREADS=1 3 h 10 min on 2 cores, beside copy.sh
#   bash runs/grammar.sh --tiny OUT            # toy sizes, seconds per stage (the tests run this)
#   DEVICE=cuda SIZE=gpu bash runs/grammar.sh  # the GPU preset (see below)
#
# Rerunning skips finished stages (runs/lib.sh). Results: OUT/score-*/results.md and .json,
# learning curves OUT/curves/; python runs/report.py turns them into results/README.md.
source "$(dirname "$0")/lib.sh"
OUT="${OUT:-exp/grammar}"

case "$SIZE" in
tiny)
    TASK="--n-train 300 --n-val 6 --n-test 6"; MODEL="--n-layer 1 --n-head 2 --n-embd 32"; B=16
    PRE="--steps 20 --eval-interval 10"; FT="--steps 6 --eval-interval 3"; SEEDS="1 2"
    N_BOOT=50; MIN_COUNT=1 ;;
cpu)  # 0.83M parameters, 18M pretraining tokens; each fine-tune 2000 steps, 6M tokens
    TASK="--n-train 20000 --n-val 200 --n-test 320"; MODEL="--n-layer 4 --n-head 4 --n-embd 128"
    B=64; PRE="--steps 6000 --eval-interval 500"; FT="--steps 2000 --eval-interval 250"
    SEEDS="1 2 3"; N_BOOT=2000; MIN_COUNT=50 ;;
gpu)  # 25M parameters, 590M pretraining tokens: about 40 minutes on one H100 (estimated)
    TASK="--n-train 200000 --n-val 200 --n-test 320"; MODEL="--n-layer 8 --n-head 8 --n-embd 512"
    B=512; PRE="--steps 24000 --eval-interval 2000"; FT="--steps 3000 --eval-interval 500"
    SEEDS="1 2 3"; N_BOOT=2000; MIN_COUNT=50 ;;
esac
COMMON="--seq-len 48 --batch-size $B $TRAIN"
RATES="0 0.01 0.02 0.05 0.1"
DECODE="--sampler confidence --block-length 16 --temperature 0.8 --batch-size 512 $RUN"
record_setup "$OUT"

# 1. the task: prompt = the first word of a text of 1-3 sentences, response = the rest; at most
#    40 bytes in all, so that prompt + response + EOS + 10% slack fit the 48-position canvas.
#    Validation prompts (seed + 2) choose settings; test prompts (seed + 1) only score them.
#    Texts drawn before are dropped (task.json counts them), so every prompt is new to the models
stage $OUT/task python evaluate.py task grammar --out-dir $OUT/task $TASK --max-bytes 40 --seed 0

# 2. pretrain with CE: slack rate 0, the response and its EOS padded with EOS (as LLaDA pads)
stage $OUT/pretrained python train.py --sft $OUT/task/train.jsonl --out-dir $OUT/pretrained \
    $COMMON $MODEL $PRE --lr 2e-3 --loss ce --seed 1337

# 3. the arms, each with every seed: same init, data, steps and learning rate; 10% slack
INIT="--sft $OUT/task/train.jsonl --init-from $OUT/pretrained/ckpt.pt $COMMON $FT --lr 5e-4"
ARMS="ce-ft ctc-random ctc-model ctc+ce-model"
CKPTS="$OUT/pretrained/ckpt.pt"
for seed in $SEEDS; do
    for arm in $ARMS; do
        spawn $OUT/$arm@$seed python train.py $INIT $(arm_flags $arm) --slack-rate 0.1 \
            --seed $seed --out-dir $OUT/$arm@$seed
        CKPTS="$CKPTS $OUT/$arm@$seed/ckpt.pt"
    done
done
settle

# the slack rate, 0.05 and 0.2 beside the arms' 0.1, same seeds, for the random placement (slack
# among the text, where the rate sets how much of it there is). Trained here, in the background
# when JOBS > 1, while the decoder is chosen; decoded and scored in 6.
RATE_CKPTS=""
for rate in 0.05 0.2; do
    for seed in $SEEDS; do
        spawn $OUT/ctc-random-$rate@$seed python train.py $INIT $(arm_flags ctc-random) \
            --slack-rate $rate --seed $seed --out-dir $OUT/ctc-random-$rate@$seed
        RATE_CKPTS="$RATE_CKPTS $OUT/ctc-random-$rate@$seed/ckpt.pt"
    done
done
# the CE term beside random slack (it asks for every token at its place in z0, the CTC term lets
# it move): does it keep the random placement's robustness and win back its loss at shift 0? At
# the same three slack rates
TERM_CKPTS=""
for rate in 0.1 0.05 0.2; do
    name=ctc+ce-random$([ $rate = 0.1 ] || echo "-$rate")  # ctc+ce-random, ctc+ce-random-0.05, ...
    for seed in $SEEDS; do
        spawn $OUT/$name@$seed python train.py $INIT $(arm_flags ctc+ce-random) \
            --slack-rate $rate --seed $seed --out-dir $OUT/$name@$seed
        TERM_CKPTS="$TERM_CKPTS $OUT/$name@$seed/ckpt.pt"
    done
done

# 4. the decoder, chosen on validation prompts at shift 0 and 5%: every slack rule, 1 and 2
#    positions per step, the same for every arm (decode.py's default for slack-trained
#    checkpoints is the rule chosen here); and the ancestral sampler, whose lengths show what the
#    model itself wants
stage $OUT/val-gens python decode.py --ckpt $CKPTS --prompts $OUT/task/val.jsonl \
    --out $OUT/val-gens --slack-rules plain last threshold first --per-steps 1 2 \
    --shift-rates 0 0.05 $DECODE
python evaluate.py score --task grammar --refs $OUT/task/val.jsonl --gens $OUT/val-gens/*.jsonl \
    --baseline ce-ft:plain/1 --n-boot $N_BOOT --out-dir $OUT/val-score
stage $OUT/val-ancestral python decode.py --ckpt $CKPTS --prompts $OUT/task/val.jsonl \
    --out $OUT/val-ancestral --sampler ancestral --per-step 1 --temperature 0.8 $RUN
python evaluate.py score --task grammar --refs $OUT/task/val.jsonl --baseline ce-ft \
    --gens $OUT/val-ancestral/*.jsonl --n-boot $N_BOOT --out-dir $OUT/val-score-ancestral

# the block length, on validation prompts at shift 0: if the confidence sampler shortens the CE
# model's words by committing bytes far to the right first, blocks of 4 and 8 positions (less far
# to reach) should lengthen them. Fine-tunes only; each file named BLOCK/ARM@SEED
FT_CKPTS="${CKPTS#"$OUT/pretrained/ckpt.pt "}"
BLOCK_GENS=""
for bl in 4 8; do
    stage $OUT/val-block$bl python decode.py --ckpt $FT_CKPTS --prompts $OUT/task/val.jsonl \
        --out $OUT/val-block$bl --slack-rule auto --per-step 1 --shift-rates 0 $DECODE \
        --block-length $bl
    for f in $OUT/val-block$bl/*.jsonl; do
        BLOCK_GENS="$BLOCK_GENS b$bl/$(basename "$f" .jsonl)=$f"
    done
done
python evaluate.py score --task grammar --refs $OUT/task/val.jsonl --gens $BLOCK_GENS \
    --baseline b4/ce-ft --n-boot $N_BOOT --out-dir $OUT/val-score-blocks

# 5. the test prompts at every probe rate with decode.py's defaults: the slack rule chosen above
#    (auto), one position per step as chosen above
PER_STEP=1
stage $OUT/test-auto python decode.py --ckpt $CKPTS --prompts $OUT/task/test.jsonl \
    --out $OUT/test-auto --slack-rule auto --per-step $PER_STEP --shift-rates $RATES $DECODE
python evaluate.py score --task grammar --refs $OUT/task/test.jsonl --baseline ce-ft \
    --gens $OUT/test-auto/*.jsonl --n-boot $N_BOOT --out-dir $OUT/score-auto

# 6. the slack rates and the CE term (trained after 3), on the test prompts with decode.py's
#    defaults
settle
stage $OUT/test-rates python decode.py --ckpt $RATE_CKPTS --prompts $OUT/task/test.jsonl \
    --out $OUT/test-rates --per-step $PER_STEP --shift-rates $RATES $DECODE
python evaluate.py score --task grammar --refs $OUT/task/test.jsonl --baseline ce-ft \
    --gens $OUT/test-auto/{ce-ft,ctc-random}@*.jsonl $OUT/test-rates/*.jsonl \
    --n-boot $N_BOOT --out-dir $OUT/score-rates

stage $OUT/test-term python decode.py --ckpt $TERM_CKPTS --prompts $OUT/task/test.jsonl \
    --out $OUT/test-term --per-step $PER_STEP --shift-rates $RATES $DECODE
python evaluate.py score --task grammar --refs $OUT/task/test.jsonl --baseline ce-ft \
    --gens $OUT/test-auto/{ce-ft,ctc-random,ctc+ce-model}@*.jsonl $OUT/test-term/*.jsonl \
    --n-boot $N_BOOT --out-dir $OUT/score-term

# 7. does each model know when a text must end? P(EOS) after a first sentence of L bytes, against
#    the data's P(end | L), for every checkpoint (seeds pooled)
python evaluate.py lengths --ckpts $CKPTS $RATE_CKPTS $TERM_CKPTS --refs $OUT/task/train.jsonl \
    --min-count $MIN_COUNT --out-dir $OUT/lengths

# 8. learning curves of every fine-tune, on the same held-out canvases
LOGS=""
for d in "$OUT"/*@*/; do LOGS="$LOGS $(basename "$d")=$d/log.jsonl"; done
python evaluate.py curves --logs $LOGS --out-dir $OUT/curves
