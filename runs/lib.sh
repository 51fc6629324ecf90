# Shared by the experiment scripts in this folder: option parsing and stage skipping. Sourced, not run.
#
#   stage DIR COMMAND...   runs COMMAND unless DIR/DONE exists, then writes DIR/DONE. A stage that
#                          fails (or is interrupted) leaves no DONE and is started afresh next time,
#                          so rerunning a script redoes only what is missing.

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the project root: the scripts call train.py etc. from there

TINY=0
OUT=""
for arg in "$@"; do
    case "$arg" in
        --tiny) TINY=1 ;;                 # toy sizes: every stage in seconds (the tests run this)
        -h|--help) sed -n '2,/^$/p' "$0"; exit 0 ;;
        -*) echo "error: unknown option $arg (use --tiny, or give an output folder)" >&2; exit 2 ;;
        *) OUT="$arg" ;;
    esac
done

stage() {
    local dir="$1"; shift
    if [ -f "$dir/DONE" ]; then echo "== done already: $dir"; return 0; fi
    rm -rf "$dir"
    echo "== $*"
    local t0=$SECONDS
    "$@"
    mkdir -p "$dir"
    echo "$((SECONDS - t0))" > "$dir/DONE"  # the stage's wall time in seconds
}
