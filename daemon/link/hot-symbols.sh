#!/bin/bash
# The order of the release binary's hot functions (read by daemon/build.rs; docs/BENCHMARKS.md,
# "Idle memory").
#
#   daemon/link/hot-symbols.sh generate   build, run a daemon under callgrind through a start, a rest
#                                         and every common request, write daemon/link/hot-symbols.txt
#   daemon/link/hot-symbols.sh check BIN  how many of the listed names BIN defines; fails below 90 %
#
# The names carry the hashes rustc gives them, which change with the compiler, a dependency's
# version or its features: regenerate after `cargo update` or a new toolchain (check says when).
# generate needs valgrind; check needs nm (binutils).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
list=$here/hot-symbols.txt

die() { echo "hot-symbols: $*" >&2; exit 1; }

# Names of the functions BIN defines, one per line, sorted.
defined() { nm --defined-only "$1" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u; }

check() {
    local bin=$1 total found
    [ -f "$bin" ] || die "$bin not found"
    total=$(grep -c . "$list")
    found=$(comm -12 <(sort -u "$list") <(defined "$bin") | wc -l)
    echo "hot-symbols: $found of $total listed functions are in $bin"
    if [ $((found * 100)) -lt $((total * 90)) ]; then
        die "the list no longer matches this build (new compiler or dependencies?): run $0 generate"
    fi
}

# Function names of a callgrind dump (run with --demangle=no --compress-strings=no).
functions() { awk -F= '/^c?fn=/ { sub(/^\([0-9]+\) ?/, "", $2); if (!seen[$2]++) print $2 }' "$1"; }

generate() {
    command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
    (cd "$root" && cargo build --release --locked -p orchestratord -p orchctl >&2)
    local bin=$root/target/release/orchestratord ctl
    work=$(mktemp -d /var/tmp/hot-symbols.XXXXXX)
    pid=
    trap 'if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
    local sock=$work/run/orchestrator.sock
    printf 'mode = "synthetic"\n' > "$work/orchestrator.toml"
    ctl=("$root/target/release/orchctl" --socket "$sock")
    env -u NOTIFY_SOCKET -u WATCHDOG_USEC valgrind --tool=callgrind --demangle=no \
        --compress-strings=no --compress-pos=no --dump-instr=no --dump-line=no \
        --callgrind-out-file="$work/cg" "$bin" --socket "$sock" --state-dir "$work/state" \
        --config "$work/orchestrator.toml" 2>"$work/daemon.log" >/dev/null &
    pid=$!
    local i
    for i in $(seq 1 600); do [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { cat "$work/daemon.log" >&2; die "the daemon did not start under valgrind"; }
    # A start and a rest, as an idle daemon spends them: the first dump.
    for i in 1 2 3; do "${ctl[@]}" status >/dev/null; done
    sleep 3
    callgrind_control -d "$pid" >/dev/null
    # The common requests: the second dump, written at the stop.
    local ids="" id n=0
    for i in 1 2 3 4 5 6; do "${ctl[@]}" submit "draft an email reply to the procurement team" >/dev/null; done
    for i in 1 2 3 4 5 6; do
        ids="$ids $("${ctl[@]}" submit "please debug this function and fix the off-by-one" | awk 'NR == 1 { print $1 }')"
    done
    "${ctl[@]}" status >/dev/null
    "${ctl[@]}" --format json status >/dev/null
    "${ctl[@]}" route "please debug this function and fix the off-by-one" >/dev/null
    "${ctl[@]}" tasks list >/dev/null
    "${ctl[@]}" --format json tasks list >/dev/null
    for id in $ids; do
        "${ctl[@]}" tasks show "$id" >/dev/null
        case $((n % 3)) in
            0) "${ctl[@]}" approve "$id" >/dev/null 2>&1 ;;
            1) "${ctl[@]}" reject "$id" --reason "not this way" >/dev/null 2>&1 ;;
            *) "${ctl[@]}" cancel "$id" >/dev/null 2>&1 ;;
        esac
        n=$((n + 1))
    done
    # Its verdict on a store without shadow tasks is FAIL, with exit status 1.
    "${ctl[@]}" shadow-summary --window 24 >/dev/null || [ $? -eq 1 ]
    "${ctl[@]}" sweep >/dev/null
    "${ctl[@]}" metrics >/dev/null
    "${ctl[@]}" agents >/dev/null
    kill -HUP "$pid"
    sleep 2
    "${ctl[@]}" status >/dev/null
    kill -TERM "$pid"
    local status=0
    wait "$pid" || status=$?
    pid=
    [ "$status" -eq 0 ] || die "the daemon under valgrind exited with $status"
    [ -f "$work/cg.1" ] && [ -f "$work/cg" ] || die "callgrind wrote no dumps"
    # The start and rest first, then the requests; each part sorted by name, so that the list
    # changes only where the set of functions does.
    { functions "$work/cg.1" | LC_ALL=C sort -u; functions "$work/cg" | LC_ALL=C sort -u; } |
        awk 'NR == FNR { def[$0] = 1; next } def[$0] && !seen[$0]++' <(defined "$bin") - > "$list.new"
    mv "$list.new" "$list"
    echo "hot-symbols: $(wc -l < "$list") functions written to $list"
}

case "${1:-}" in
    generate) generate ;;
    check) [ $# -eq 2 ] || die "usage: $0 check BINARY"; check "$2" ;;
    *) die "usage: $0 generate | check BINARY" ;;
esac
