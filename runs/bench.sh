#!/usr/bin/env bash
# The benchmarks, as result files: bench.py's three benchmarks, each a ratio against a baseline
# timed in the same run, written as JSON beside the machine's description (setup.json), for
# python runs/report.py to put on the results page. Run it on an idle machine: a benchmark that
# shares the CPU with another job times both.
#
#   bash runs/bench.sh [OUT]                 # OUT = exp/bench; CPU sizes
#   bash runs/bench.sh --tiny OUT            # toy sizes, seconds (the tests run this)
#   DEVICE=cuda SIZE=gpu bash runs/bench.sh  # on a GPU: bf16 training steps, compiled too
source "$(dirname "$0")/lib.sh"
OUT="${OUT:-exp/bench}"

case "$SIZE" in
tiny) CTC="--tiny"; STEPS="--tiny"; CACHE="--tiny" ;;
cpu) CTC="--quick"; STEPS="--steps 15"; CACHE="--steps 1000 --length 128" ;;
gpu) CTC=""; STEPS="--steps 30 --dtype bf16 --compile"; CACHE="--steps 1000 --length 512" ;;
esac
record_setup "$OUT"

# the loss against F.ctc_loss; whole training steps (MDLM / AR, ours / nn.TransformerEncoder,
# CTC / CE fine-tuning); the sampler's cache. Every ratio is a median of the same run
stage $OUT/ctc python bench.py ctc $CTC --device $DEVICE --json $OUT/bench-ctc.json
stage $OUT/train python bench.py train $STEPS --device $DEVICE --json $OUT/bench-train.json
stage $OUT/cache python bench.py cache $CACHE --device $DEVICE --json $OUT/bench-cache.json
