#!/bin/bash
# The order of the release binary's hot functions (read by daemon/build.rs; docs/BENCHMARKS.md,
# "Idle memory").
#
#   daemon/link/hot-symbols.sh generate   build, run a daemon under callgrind through a start, a rest
#                                         and every common request, write daemon/link/hot-symbols.txt
#   daemon/link/hot-symbols.sh check BIN  that BIN (unstripped) defines at least 90 % of the listed
#                                         functions and that they come first in its code
#
# The names carry the hashes rustc gives them and the suffixes the C compiler gives SQLite's
# functions, which change with either compiler or with a dependency's version or features:
# regenerate after `cargo update` or a new toolchain (check says when).
# generate needs valgrind; both need nm (binutils).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
list=$here/hot-symbols.txt

die() { echo "hot-symbols: $*" >&2; exit 1; }
command -v nm >/dev/null || die "nm not found (apt-get install binutils)"

# Names of the functions BIN defines, one per line, in address order.
by_address() {
    local out
    out=$(nm -n --defined-only "$1") || die "nm cannot read $1"
    awk '$2 ~ /^[tTwW]$/ { print $3 }' <<<"$out"
}

check() {
    local bin=$1 total found placed funcs
    [ -f "$bin" ] || die "$bin not found"
    total=$(grep -c . "$list" || true)
    [ "$total" -gt 0 ] || die "$list is empty: run $0 generate"
    funcs=$(by_address "$bin")
    [ -n "$funcs" ] || die "$bin has no symbol table (stripped?)"
    found=$(comm -12 <(sort -u "$list") <(sort -u <<<"$funcs") | wc -l)
    echo "hot-symbols: $found of $total listed functions are in $bin"
    if [ $((found * 100)) -lt $((total * 90)) ]; then
        die "the list no longer matches this build (new compiler or dependencies?): run $0 generate"
    fi
    # The ordering took effect: the first functions of the code are the listed ones.
    placed=$(head -n "$found" <<<"$funcs" | awk 'NR == FNR { hot[$0] = 1; next } hot[$0]' "$list" - | wc -l)
    echo "hot-symbols: $placed of the first $found functions in $bin are listed ones"
    if [ $((placed * 100)) -lt $((found * 90)) ]; then
        die "the release link did not order the functions (daemon/build.rs: is the linker LLD?)"
    fi
}

# Function names of a callgrind dump (run with --demangle=no --compress-strings=no), sorted.
functions() { awk -F= '/^c?fn=/ { sub(/^\([0-9]+\) ?/, "", $2); print $2 }' "$1" | LC_ALL=C sort -u; }

work=
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    if [ -n "$work" ]; then rm -rf "$work"; fi
}

generate() {
    command -v valgrind >/dev/null || die "valgrind not found (apt-get install valgrind)"
    (cd "$root" && cargo build --release --locked -p orchestratord -p orchctl >&2)
    local target=${CARGO_TARGET_DIR:-target}
    case $target in /*) ;; *) target=$root/$target ;; esac
    local bin=$target/release/orchestratord ctl
    work=$(mktemp -d /var/tmp/hot-symbols.XXXXXX)
    trap cleanup EXIT
    trap 'exit 1' INT TERM HUP
    local sock=$work/run/orchestrator.sock
    printf 'mode = "synthetic"\n' > "$work/orchestrator.toml"
    ctl=("$target/release/orchctl" --socket "$sock")
    # A request that fails stops the run with what orchctl said.
    run() { "${ctl[@]}" "$@" >/dev/null 2>"$work/ctl.err" || { cat "$work/ctl.err" >&2; die "orchctl $* failed"; }; }
    env -u NOTIFY_SOCKET -u WATCHDOG_USEC valgrind --tool=callgrind --demangle=no \
        --compress-strings=no --compress-pos=no --dump-instr=no --dump-line=no \
        --callgrind-out-file="$work/cg" "$bin" --socket "$sock" --state-dir "$work/state" \
        --config "$work/orchestrator.toml" 2>"$work/daemon.log" >/dev/null &
    pid=$!
    local i
    for i in $(seq 1 600); do
        [ -S "$sock" ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -S "$sock" ] || { cat "$work/daemon.log" >&2; die "the daemon did not start under valgrind"; }
    # A start and a rest, as an idle daemon spends them: the first dump.
    for i in 1 2 3; do run status; done
    sleep 3
    callgrind_control -d "$pid" >/dev/null
    # The common requests: the second dump, written at the stop.
    local ids="" id n=0
    for i in 1 2 3 4 5 6; do run submit "draft an email reply to the procurement team"; done
    for i in 1 2 3 4 5 6; do
        id=$("${ctl[@]}" submit "please debug this function and fix the off-by-one" | awk 'NR == 1 { print $1 }')
        [ -n "$id" ] || die "orchctl submit printed no id"
        ids="$ids $id"
    done
    run status
    run --format json status
    run route "please debug this function and fix the off-by-one"
    run tasks list
    run --format json tasks list
    for id in $ids; do
        run tasks show "$id"
        case $((n % 3)) in
            0) run approve "$id" ;;
            1) run reject "$id" --reason "not this way" ;;
            *) run cancel "$id" ;;
        esac
        n=$((n + 1))
    done
    # Its verdict on a store without shadow tasks is FAIL, with exit status 1.
    "${ctl[@]}" shadow-summary --window 24 >/dev/null || [ $? -eq 1 ] || die "orchctl shadow-summary failed"
    run sweep
    run metrics
    run agents
    kill -HUP "$pid"
    sleep 2
    run status
    kill -TERM "$pid"
    local status=0
    wait "$pid" || status=$?
    pid=
    [ "$status" -eq 0 ] || die "the daemon under valgrind exited with $status"
    [ -f "$work/cg.1" ] && [ -f "$work/cg" ] || die "callgrind wrote no dumps"
    # The start and rest first, then the requests; each part sorted by name, so that the list
    # changes only where the set of functions does.
    { functions "$work/cg.1"; functions "$work/cg"; } |
        awk 'NR == FNR { def[$0] = 1; next } def[$0] && !seen[$0]++' <(by_address "$bin") - > "$work/list"
    [ "$(wc -l < "$work/list")" -ge 500 ] || die "only $(wc -l < "$work/list") functions seen; the list is left as it was"
    mv "$work/list" "$list"
    echo "hot-symbols: $(wc -l < "$list") functions written to $list"
}

case "${1:-}" in
    generate) generate ;;
    check) [ $# -eq 2 ] || die "usage: $0 check BINARY"; check "$2" ;;
    *) die "usage: $0 generate | check BINARY" ;;
esac
