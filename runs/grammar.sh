#!/usr/bin/env bash
# The grammar experiment: open-ended generation from a small stochastic grammar whose words differ
# in byte length, so a masked diffusion model that commits a byte far to the right must guess how
# long the words before it will be. Pretrain an MDLM with CE, fine-tune arms from that one
# checkpoint (CE with tail slack; CTC and CTC+CE with random and with model-aligned slack), decode
# the held-out prompts with the confidence sampler in blocks (the paper's decoder) and with the
# ancestral one, at shift-probe rates 0..10%, and score every output exactly with the grammar.
#
#   bash runs/grammar.sh [OUT]          # OUT defaults to exp/grammar; ~20 min on 2 CPU cores (measured: see README)
#   bash runs/grammar.sh --tiny OUT     # toy sizes, seconds per stage (the tests run this)
#
# Rerunning skips finished stages (runs/lib.sh). Results: OUT/score-*/results.md and .json, plots
# OUT/score-*/*.svg; learning curves of every arm: OUT/curves/curves.md.
source "$(dirname "$0")/lib.sh"
OUT="${OUT:-exp/grammar}"

if [ "$TINY" = 1 ]; then
    TASK="--n-train 300 --n-test 8"
    MODEL="--n-layer 1 --n-head 2 --n-embd 32"
    PRE="--steps 20 --eval-interval 10"; FT="--steps 6 --eval-interval 3 --lr 1e-3"; N_BOOT=50
else
    TASK="--n-train 20000 --n-test 320"
    MODEL="--n-layer 4 --n-head 4 --n-embd 128"
    PRE="--steps 1500 --eval-interval 250"; FT="--steps 300 --eval-interval 50 --lr 5e-4"; N_BOOT=2000
fi
COMMON="--seq-len 48 --batch-size 64 --seed 1337 --device cpu --no-progress --sample-interval 0"
RATES="0 0.01 0.02 0.05 0.1"

# 1. the task: prompt = the first word of a text of 1-3 sentences, response = the rest; at most
#    40 bytes in all, so that prompt + response + EOS + 10% slack fit the 48-position canvas. Short
#    texts repeat, so about half of the 320 drawn test texts also occur in train.jsonl: those are
#    dropped (task.json counts them) and every test text is new to the models
stage $OUT/task python evaluate.py task grammar --out-dir $OUT/task $TASK --max-bytes 40 --seed 0

# 2. pretrain with CE: slack rate 0, the response and its EOS padded with EOS (as LLaDA pads)
stage $OUT/pretrained python train.py --sft $OUT/task/train.jsonl --out-dir $OUT/pretrained \
    $COMMON $MODEL $PRE --lr 2e-3 --loss ce

# 3. the arms: same init, data, steps, seed and learning rate; 10% of each canvas is slack
INIT="--sft $OUT/task/train.jsonl --init-from $OUT/pretrained/ckpt.pt --slack-rate 0.1 $COMMON $FT"
stage $OUT/ce-ft          python train.py $INIT --out-dir $OUT/ce-ft --loss ce --slack-placement tail
stage $OUT/ctc-random     python train.py $INIT --out-dir $OUT/ctc-random --loss ctc --slack-placement random
stage $OUT/ctc-model      python train.py $INIT --out-dir $OUT/ctc-model --loss ctc --slack-placement model
stage $OUT/ctc+ce-random  python train.py $INIT --out-dir $OUT/ctc+ce-random --loss ctc+ce --slack-placement random
stage $OUT/ctc+ce-model   python train.py $INIT --out-dir $OUT/ctc+ce-model --loss ctc+ce --slack-placement model
ARMS="pretrained ce-ft ctc-random ctc-model ctc+ce-random ctc+ce-model"

# 4. decode every held-out prompt with every arm, 2 positions per step, temperature 0.8: the
#    confidence sampler in 3 blocks of 16 positions (the primary rows), and ancestral (one block)
for arm in $ARMS; do
    stage $OUT/gens/$arm-confidence python decode.py --ckpt $OUT/$arm/ckpt.pt --prompts $OUT/task/test.jsonl \
        --out $OUT/gens/$arm-confidence/gens.jsonl --sampler confidence --block-length 16 --per-step 2 \
        --temperature 0.8 --shift-rates $RATES --device cpu --batch-size 128
    stage $OUT/gens/$arm-ancestral python decode.py --ckpt $OUT/$arm/ckpt.pt --prompts $OUT/task/test.jsonl \
        --out $OUT/gens/$arm-ancestral/gens.jsonl --sampler ancestral --per-step 2 \
        --temperature 0.8 --shift-rates $RATES --device cpu --batch-size 128
done

# 5. score: one table per sampler (arms x rates), paired bootstrap intervals against ce-ft
for sampler in confidence ancestral; do
    GENS=""; for arm in $ARMS; do GENS="$GENS $arm=$OUT/gens/$arm-$sampler/gens.jsonl"; done
    python evaluate.py score --task grammar --refs $OUT/task/test.jsonl --gens $GENS --baseline ce-ft \
        --n-boot $N_BOOT --out-dir $OUT/score-$sampler
done
LOGS=""; for arm in $ARMS; do [ "$arm" = pretrained ] || LOGS="$LOGS $arm=$OUT/$arm/log.jsonl"; done
python evaluate.py curves --logs $LOGS --out-dir $OUT/curves
