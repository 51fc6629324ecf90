#!/usr/bin/env bash
# What decides whether slack helps? The grammar experiment (runs/grammar.sh) is the base; each
# variant here changes one property of its task and holds the rest of the protocol: the model,
# the batch in texts (64), the steps, its own CE pretraining held to the base's competence, then
# the two arms of the primary comparison (ce-ft and ctc-random) with three seeds each, the
# decoder chosen on the variant's own validation prompts by the same rule, and the test prompts
# decoded once, at shift-probe rates 0, 1%, 5% and 10%. The variants:
#   uncond   no prompt: the whole text is generated (the base gives its first word), after a
#            start token (train.py --bos). Without it the variant measures the architecture,
#            not the prompt: positions are rotary, relative only, so at a canvas of MASK alone the
#            model predicts the same at every position (P(EOS) 0.45 at each of the 48, after 2000
#            CE steps), the first commit is EOS anywhere, and the texts end early (the first
#            study's uncond models wrote 6 bytes a text against the data's 31). With the start
#            token, the same 2000 steps write 23 and 33 bytes a text (confidence sampler, blocks
#            of 16 and 8) against the validation texts' 33; without it, 12 and 0
#   pad      a canvas twice as long for the same texts: most of it is EOS padding
#   spread   texts of 24-30 bytes only: the base's mean length, but the output lengths barely
#            vary (base: 8-40 bytes); the same canvas, so the same mean padding
# The long texts are an experiment of their own (TEXTS=long bash runs/grammar.sh); they change
# the length, the sentences per text and the padding share together, which this study does not
# separate (pad varies the padding share alone, spread the spread of lengths alone).
#
# The competence gate: a variant's arms start from a pretrained model that parses as well as the
# base's. After its pretraining, the variant's validation prompts are decoded at shift 0 with the
# decoder the base chose; its parses_std must be at least the base pretrained model's on its own
# validation prompts less GATE_MARGIN (0.05). If not, the pretraining is continued once for as
# many steps again; a variant that still falls short is recorded as such (gate.json) and not
# fine-tuned: its arms could not be read against the base's.
# The choice of the decoder: the slack rules plain and last, one position per step, blocks of 8
# or 16 (the base's grid less the settings that lost on the base's validation prompts: two
# positions per step, and the rules first and threshold), chosen by `evaluate.py choose` (the
# best mean parses_std over the fine-tunes at validation rates 0 and 5%).
# Each variant's test prompts come from a seed never decoded before (task seed + 3). Its primary
# metric is the grammar run's, parses_std, and its primary comparison ctc-random - ce-ft at 1%,
# declared here. The study is exploratory all the same: it was designed after the grammar verdict
# was seen, and it trains the two arms of the primary comparison only (no ctc+ce-random).
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
if [ ! -f "$GRAMMAR/choice/choice.json" ] || [ ! -d "$GRAMMAR/test-gens" ]; then
    echo "error: $GRAMMAR has no chosen decoder or test outputs: run runs/grammar.sh first" \
         "(or name its folder with GRAMMAR=)" >&2
    exit 2
fi
BASE_CHOSEN=$(cat "$GRAMMAR/choice/flags.txt")
GATE_MARGIN=0.05

case "$SIZE" in
tiny)
    N="--n-train 300 --n-val 2 --n-test 6"; MODEL="--n-layer 1 --n-head 2 --n-embd 32"; B=16
    PRE="--steps 10 --eval-interval 5"; FT="--steps 4 --eval-interval 2"; SEEDS="1"
    N_BOOT=50; VARIANTS="${VARIANTS:-uncond pad spread}"; BLOCKS="16" ;;
cpu)  # the model, batch and steps of runs/grammar.sh
    N="--n-train 20000 --n-val 64 --n-test 256"; MODEL="--n-layer 4 --n-head 4 --n-embd 128"
    B=64; PRE="--steps 6000 --eval-interval 500"; FT="--steps 2000 --eval-interval 500"
    SEEDS="1 2 3"; N_BOOT=2000; VARIANTS="${VARIANTS:-uncond pad spread}"; BLOCKS="16 8" ;;
gpu)  # the GPU preset of runs/grammar.sh
    N="--n-train 200000 --n-val 64 --n-test 256"; MODEL="--n-layer 8 --n-head 8 --n-embd 512"
    B=512; PRE="--steps 24000 --eval-interval 2000"; FT="--steps 3000 --eval-interval 500"
    SEEDS="1 2 3"; N_BOOT=2000; VARIANTS="${VARIANTS:-uncond pad spread}"; BLOCKS="16 8" ;;
esac
RATES="0 0.01 0.05 0.1"
ARMS="ce-ft ctc-random"
DECODE="--sampler confidence --temperature 0.8 --batch-size 512 $RUN"
SCORE="--task grammar --primary-metric parses_std --baseline ce-ft --n-boot $N_BOOT"
GRID="--slack-rules plain last --per-steps 1 --block-lengths $BLOCKS"

# the task flags, canvas and start token of each variant (its fine-tunes inherit the start
# token from the checkpoint); every variant keeps the base's batch of B texts
variant() {
    case "$1" in
        uncond) TASK="$N --prompt-words 0 --max-bytes 40"; SEQ=48; START="--bos" ;;
        pad) TASK="$N --max-bytes 40"; SEQ=96; START="" ;;
        spread) TASK="$N --min-bytes 24 --max-bytes 30"; SEQ=48; START="" ;;
        *) echo "error: unknown variant $1 (uncond, pad, spread)" >&2; exit 2 ;;
    esac
    COMMON="--seq-len $SEQ --batch-size $B $TRAIN"
}

# the base: the grammar run's pretrained model and these arms, its test outputs scored alone
mkdir -p $OUT/base
ln -sfn "$(cd "$GRAMMAR" && pwd)/task" $OUT/base/task
record_setup $OUT/base seq_len=48 slack_rate=0.1 temperature=0.8 variant='"base"' \
    primary_declared_before_test=true
BASE_GENS="$GRAMMAR/test-gens/pretrained.jsonl"
for arm in $ARMS; do BASE_GENS="$BASE_GENS $(ls "$GRAMMAR"/test-gens/"$arm"@*.jsonl)"; done
python evaluate.py score $SCORE --primary ctc-random 0.01 --refs $OUT/base/task/test.jsonl \
    --gens $BASE_GENS --out-dir $OUT/base/score

# gate V CKPT: the pretrained checkpoint's parses_std on V's validation prompts at shift 0 with
# the base's decoder, against the base pretrained model's on its own (the grammar run's val-score
# under the setting it chose); writes V/gate.json and succeeds if it is within GATE_MARGIN
gate() {
    local v=$1 ckpt=$2 name
    name=$(basename "$(dirname "$ckpt")")
    mkdir -p $v/gate-gens
    stage $v/gate-gens/$name python decode.py --ckpt $ckpt --prompts $v/task/val.jsonl \
        $BASE_CHOSEN --shift-rates 0 $DECODE --out $v/gate-gens/$name.jsonl
    python evaluate.py score $SCORE --refs $v/task/val.jsonl --gens $v/gate-gens/$name.jsonl \
        --baseline $name --out-dir $v/gate-score/$name
    python - "$v" "$name" "$GRAMMAR" "$GATE_MARGIN" <<'EOF'
import json, sys
v, name, grammar, margin = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
setting = json.load(open(f"{grammar}/choice/choice.json"))["setting"]
base = json.load(open(f"{grammar}/val-score/results.json"))["arms"][f"pretrained:{setting}"]
score = json.load(open(f"{v}/gate-score/{name}/results.json"))["arms"][name]
base, here = base["0"]["summary"]["parses_std"], score["0"]["summary"]["parses_std"]
passed = here >= base - margin
json.dump({"checkpoint": name, "parses_std": here, "base": base, "margin": margin,
           "setting": setting, "passed": passed}, open(f"{v}/gate.json", "w"), indent=1)
print(f"{v}: {name} parses_std {here:.3f} on validation, the base's {base:.3f}: "
      f"{'passed' if passed else 'short of'} the gate (margin {margin})")
sys.exit(0 if passed else 1)
EOF
}

# each variant's task and CE pretraining (spawned, JOBS at once)
for v in $VARIANTS; do
    variant $v
    record_setup $OUT/$v seq_len=$SEQ slack_rate=0.1 temperature=0.8 variant="\"$v\"" \
        primary_declared_before_test=true batch_texts=$B
    renew_task $OUT/$v
    stage $OUT/$v/task python evaluate.py task grammar --out-dir $OUT/$v/task $TASK --seed 0
done
for v in $VARIANTS; do
    variant $v
    spawn $OUT/$v/pretrain-1 python train.py --sft $OUT/$v/task/train.jsonl \
        --out-dir $OUT/$v/pretrain-1 $COMMON $MODEL $PRE $START --lr 2e-3 --loss ce --seed 1337
done
settle

# the gate, then the arms of every variant that passed it, from the checkpoint that did:
# V/pretrained links to it (pretrain-1, or pretrain-2, its continuation)
READY=""
CKPTS=""  # train_arms lists them; each variant's are listed again below
for v in $VARIANTS; do
    variant $v
    V=$OUT/$v
    if ! gate $V $V/pretrain-1/ckpt.pt; then
        stage $V/pretrain-2 python train.py --sft $V/task/train.jsonl \
            --init-from $V/pretrain-1/ckpt.pt --out-dir $V/pretrain-2 $COMMON $PRE --lr 2e-3 \
            --loss ce --seed 1337
        if ! gate $V $V/pretrain-2/ckpt.pt; then
            echo "== $v: short of the competence gate after twice the steps: not fine-tuned"
            continue
        fi
    fi
    ln -sfn "$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["checkpoint"])' \
        $V/gate.json)" $V/pretrained
    READY="$READY $v"
    train_arms $V $V/pretrained/ckpt.pt --sft $V/task/train.jsonl $COMMON --slack-rate 0.1 $FT \
        --lr 5e-4
done
settle

# each variant's decoder, chosen on its validation prompts; then its test prompts, decoded once
for v in $READY; do
    V=$OUT/$v
    CKPTS="$V/pretrained/ckpt.pt"
    for seed in $SEEDS; do
        for arm in $ARMS; do CKPTS="$CKPTS $V/$arm@$seed/ckpt.pt"; done
    done
    choose_decoder $V ce-ft:plain/1/16 $GRID
    decode_all $V/test-gens "$CKPTS" --prompts $V/task/test.jsonl $CHOSEN --shift-rates $RATES \
        $DECODE
    python evaluate.py score $SCORE --primary ctc-random 0.01 --refs $V/task/test.jsonl \
        --gens $V/test-gens/*.jsonl --out-dir $V/score
    LOGS=""
    for d in "$V"/*@*/; do LOGS="$LOGS $(basename "$d")=$d/log.jsonl"; done
    python evaluate.py curves --logs $LOGS --out-dir $V/curves
done
