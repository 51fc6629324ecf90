# Shared by the experiment scripts in this folder: options, sizes, devices, stage skipping.
# Sourced, not run. Every script takes the same options:
#
#   bash runs/NAME.sh [OUT]                    CPU sizes (the README's tables), OUT = exp/NAME
#   bash runs/NAME.sh --tiny [OUT]             toy sizes, seconds per stage (the tests run this)
#   DEVICE=cuda SIZE=gpu bash runs/NAME.sh     the GPU preset of the script, on a CUDA device
#
#   SIZE     tiny | cpu (default) | gpu: the size preset each script defines
#   DEVICE   cpu (default) | cuda | mps: where every stage runs
#   DTYPE    bf16 (default) | fp32: autocast of training (bf16 matmuls; the CTC stays float64)
#   THREADS  CPU threads per process (default: OMP_NUM_THREADS if set, else 2): results on a CPU
#            repeat exactly for the same threads, torch version and machine kind
#   JOBS     fine-tunes trained, and checkpoints decoded, at once (default 1). The CPU models
#            are small and use two threads poorly, so on a 2-core machine JOBS=2 THREADS=1 is the
#            faster way to run a whole script (bench.py train measures a step on your machine)
#
#   stage DIR COMMAND...   runs COMMAND unless DIR/DONE exists, then writes DIR/DONE holding the
#                          stage's wall time in seconds. A stage that fails (or is interrupted)
#                          leaves no DONE and is started afresh next time, so rerunning a script
#                          redoes only what is missing.
#   spawn DIR COMMAND...   stage, in the background once JOBS > 1, at most JOBS at once, its
#                          output in DIR.log; settle waits for every spawned stage and stops the
#                          script if one failed.
#   decode_all DIR "CKPTS" ARGS...   decode.py ARGS for each checkpoint, spawned, into DIR/*.jsonl

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the project root: the scripts call train.py from there

SIZE="${SIZE:-cpu}"
DEVICE="${DEVICE:-cpu}"
DTYPE="${DTYPE:-bf16}"
JOBS="${JOBS:-1}"
export OMP_NUM_THREADS="${THREADS:-${OMP_NUM_THREADS:-2}}"
OUT=""
for arg in "$@"; do
    case "$arg" in
        --tiny) SIZE=tiny ;;
        -h|--help) sed -n '2,/^$/p' "$0"; exit 0 ;;
        -*) echo "error: unknown option $arg (use --tiny, or give an output folder)" >&2; exit 2 ;;
        *) OUT="$arg" ;;
    esac
done
case "$SIZE" in
    tiny|cpu|gpu) ;;
    *) echo "error: SIZE must be tiny, cpu or gpu, not $SIZE" >&2; exit 2 ;;
esac
TINY=$([ "$SIZE" = tiny ] && echo 1 || echo 0)
# every stage: the device, the dtype, no progress bars (the logs are files)
RUN="--device $DEVICE --no-progress"
TRAIN="$RUN --dtype $DTYPE --sample-interval 0"

# the train.py flags of each arm the experiments compare, by the name its folders carry
arm_flags() {
    case "$1" in
        ce-ft) echo "--loss ce --slack-placement tail" ;;  # the matched CE baseline
        ctc-random) echo "--loss ctc --slack-placement random" ;;
        ctc-model) echo "--loss ctc --slack-placement model" ;;
        ctc+ce-model) echo "--loss ctc+ce --slack-placement model" ;;
        ctc+ce-random) echo "--loss ctc+ce --slack-placement random" ;;
        *) echo "error: unknown arm $1" >&2; exit 2 ;;
    esac
}

stage() {
    local dir="$1"; shift
    if [ -f "$dir/DONE" ]; then echo "== done already: $dir"; return 0; fi
    rm -rf "$dir"
    echo "== $*"
    local t0=$SECONDS
    "$@"
    mkdir -p "$dir"
    echo "$((SECONDS - t0))" > "$dir/DONE"
}

# renew_task DIR: a task folder DIR/task made before the fresh test prompts (it has no
# test-old.jsonl) is made again: train, validation and the earlier test prompts come out the same
# (the same seeds, drawn in the same order), so trained checkpoints stay valid; what was decoded
# from its old test prompts, or with a decoder chosen by the old rule, is dropped so that it is
# made again (DIR/choice, DIR/test-gens, DIR/val-more)
renew_task() {
    local dir=$1
    if [ -f "$dir/task/DONE" ] && [ ! -f "$dir/task/test-old.jsonl" ]; then
        echo "== $dir/task predates the fresh test prompts: made again, its test outputs and" \
             "decoder choice dropped"
        rm -rf "$dir/task/DONE" "$dir/choice" "$dir/test-gens" "$dir/val-more"
    fi
}

# where and how the results were made: the commit, the machine, threads and sizes, for the report;
# record_setup DIR [KEY=VALUE...] adds settings of the script's own (seq_len=48), VALUE as JSON
record_setup() {
    local dir=$1
    shift
    mkdir -p "$dir"
    python - "$dir/setup.json" "$SIZE" "$DEVICE" "$DTYPE" "$JOBS" "$@" <<'EOF'
import json, platform, subprocess, sys
import torch
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                       capture_output=True, text=True).stdout.strip()
extra = {k: json.loads(v) for k, v in (a.split("=", 1) for a in sys.argv[6:])}
try:  # a rerun keeps the commit whose run made the folder: its stages may be that commit's
    old = json.load(open(sys.argv[1]))
    first = old.get("first_commit") or old["commit"]
except (OSError, ValueError, KeyError):
    first = None
cpu = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
       if line.startswith("model name")] if platform.system() == "Linux" else []
now = (commit.stdout.strip() or "unknown") + ("+changes" if dirty else "")
json.dump({"commit": now, "first_commit": first or now,
           "size": sys.argv[2], "device": sys.argv[3], "dtype": sys.argv[4],
           "threads": torch.get_num_threads(), "jobs": int(sys.argv[5]),
           "torch": torch.__version__,
           "python": platform.python_version(), "machine": platform.machine(),
           "cpu": cpu[0] if cpu else platform.processor() or None, "cores": len(cpu) or None,
           "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None, **extra},
          open(sys.argv[1], "w"), indent=1)
EOF
}

SPAWNED=""
spawn() {
    if [ "$JOBS" -le 1 ]; then stage "$@"; return; fi
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
    echo "== in the background, output in $1.log: ${*:2}"
    mkdir -p "$(dirname "$1")"
    stage "$@" > "$1.log" 2>&1 &
    SPAWNED="$SPAWNED $!"
}
settle() {
    local pid
    for pid in $SPAWNED; do
        wait "$pid" || { echo "error: a background stage failed (its .log says why)" >&2; exit 1; }
    done
    SPAWNED=""
}
# background stages ignore Ctrl-C (no job control in a script): stop them with the script
stop_spawned() {
    local pid
    for pid in $SPAWNED; do pkill -TERM -P "$pid" 2>/dev/null; kill "$pid" 2>/dev/null; done
    exit 130
}
trap stop_spawned INT TERM

# decode_all DIR "CKPTS" ARGS...: decode.py ARGS for each checkpoint into DIR/NAME.jsonl, NAME the
# name of the checkpoint's folder (ARM@SEED). With JOBS > 1 each checkpoint is its own stage
# DIR/NAME, JOBS at once; else one process decodes them all (one stage DIR: no interpreter start
# per checkpoint). Each checkpoint's file is the same either way
decode_all() {
    local dir=$1 ckpts=$2 ckpt name
    shift 2
    if [ "$JOBS" -le 1 ]; then
        stage "$dir" python decode.py --ckpt $ckpts --out "$dir/" "$@"
        return
    fi
    mkdir -p "$dir"
    for ckpt in $ckpts; do
        name=$(basename "$(dirname "$ckpt")")
        spawn "$dir/$name" python decode.py --ckpt "$ckpt" --out "$dir/$name.jsonl" "$@"
    done
    settle
}

# The protocol's steps, shared by the experiment scripts; they read the script's SEEDS, ARMS,
# DECODE and SCORE. train_arms DIR INIT FLAGS...: every arm with every seed, fine-tuned from the
# checkpoint INIT with train.py FLAGS into DIR/ARM@SEED (spawned: settle waits for them); their
# checkpoints are added to CKPTS
train_arms() {
    local dir=$1 init=$2 seed arm
    shift 2
    for seed in $SEEDS; do
        for arm in $ARMS; do
            spawn $dir/$arm@$seed python train.py "$@" --init-from $init $(arm_flags $arm) \
                --seed $seed --out-dir $dir/$arm@$seed
            CKPTS="$CKPTS $dir/$arm@$seed/ckpt.pt"
        done
    done
}

# continue_arms DIR FLAGS...: each fine-tune DIR/ARM@SEED continued from its last checkpoint
# with train.py FLAGS into DIR/more/ARM@SEED; their checkpoints in MORE_CKPTS
continue_arms() {
    local dir=$1 seed arm
    shift
    MORE_CKPTS=""
    for seed in $SEEDS; do
        for arm in $ARMS; do
            spawn $dir/more/$arm@$seed python train.py "$@" --init-from $dir/$arm@$seed/ckpt.pt \
                $(arm_flags $arm) --seed $seed --out-dir $dir/more/$arm@$seed
            MORE_CKPTS="$MORE_CKPTS $dir/more/$arm@$seed/ckpt.pt"
        done
    done
    settle
}

# choose_decoder DIR BASELINE SWEEP...: the validation prompts DIR/task/val.jsonl decoded by
# every checkpoint of CKPTS under every setting of the decode.py SWEEP flags, at shift 0 and 5%,
# scored against BASELINE (ARM:SETTING), then the setting chosen by evaluate.py choose; its flags
# in CHOSEN
choose_decoder() {
    local dir=$1 baseline=$2
    shift 2
    decode_all $dir/val-gens "$CKPTS" --prompts $dir/task/val.jsonl "$@" --shift-rates 0 0.05 \
        $DECODE
    python evaluate.py score $SCORE --refs $dir/task/val.jsonl --gens $dir/val-gens/*.jsonl \
        --baseline $baseline --out-dir $dir/val-score
    stage $dir/choice python evaluate.py choose --scores $dir/val-score/results.json \
        --out-dir $dir/choice
    CHOSEN=$(cat $dir/choice/flags.txt)
}
