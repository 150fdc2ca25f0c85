#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 7: about a minute in all, what .ci/run
# does); `fuzz/smoke.sh 600` is the longer campaign. Needs a nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`). Each target starts from fuzz/seeds/<target>/ plus what earlier
# runs found (fuzz/corpus/, not committed); a crash or hang fails the run and its input is
# left in fuzz/artifacts/<target>/. Prints each target's execution count; FUZZ_TARGETS (names
# separated by spaces) limits the run to those targets.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH="${1:-7}"
ALL="tokenizer_json vocab_txt gpt2_files tiktoken safetensors gguf config_json encode_decode chat_template"
# FUZZ_TARGETS="gguf tiktoken" runs only those (e.g. to split a campaign over two shells).
read -r -a TARGETS <<<"${FUZZ_TARGETS:-$ALL}"
cargo +nightly fuzz build
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    cp -n fuzz/seeds/"$t"/* "fuzz/corpus/$t/" 2>/dev/null || true
    log=$(mktemp)
    if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -40 "$log"
        echo "fuzz target $t FAILED (input in fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz $t: $runs executions in ${SECONDS_EACH} s, no crash"
    rm -f "$log"
done
