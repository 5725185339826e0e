#!/bin/bash
# A real systemd, booted in a throwaway systemd-nspawn container, for tests that need one.
#
# Source it for the ct_* functions (tests/systemd/run.sh does), or run it:
#   tests/systemd/container.sh root       build the cached Debian root if needed; print its path
#   tests/systemd/container.sh selftest   boot a fresh copy, run `systemctl --version` inside, stop it
#   tests/systemd/container.sh boot       boot a fresh copy and leave it running (prints how to stop it)
#   tests/systemd/container.sh stop NSPAWN_PID WORKDIR
#   tests/systemd/container.sh exec CONTAINER_PID CMD…
#
# Life of a container: ct_ensure_root (debootstrap once, cached) → ct_boot (copy the cache to a fresh
# working root, start systemd-nspawn in the background, find the container's systemd) → ct_wait_running
# → ct_exec … → ct_stop (always, by the pid we started; callers put it in an EXIT trap).
#
# Environment:
#   ORCH_SYSTEMD_ROOT_CACHE  cached pristine root (default /var/cache/orchestrator-systemd-root)
#   ORCH_SYSTEMD_WORK_BASE   where working copies go (default /var/tmp)
#   ORCH_SYSTEMD_KEEP=1      keep the working copy after stop (for post-mortems)
#   ORCH_DEBIAN_MIRROR       mirror for debootstrap (default: the one in the host's apt sources)
#   ORCH_NSPAWN_KEEP_UNIT    1/0 to force --keep-unit on or off (default: on unless the host runs systemd)
#
# Quirks seen on the machines this was written on (Debian 12 host, systemd 252, no systemd as PID 1,
# cgroup v1+v2 "hybrid" mounts, running as root):
# - With no systemd on the host there is no D-Bus to ask for a scope unit or to register with machined,
#   so nspawn needs --register=no --keep-unit (the container simply lives in our own cgroup). On a host
#   that does run systemd, --keep-unit would put the container's systemd into the caller's (undelegated)
#   unit, so there we leave it off and let nspawn allocate a delegated scope.
# - The container inherits the host's cgroup layout (hybrid here); systemd 252 boots fine in it and
#   needs no SYSTEMD_NSPAWN_UNIFIED_HIERARCHY.
# - --private-network: the container gets only its own loopback, so nothing in it (DHCP clients,
#   orchestratord's optional HTTP port) can touch or collide with the host's network.
# - --console=pipe with stdin from /dev/null: no TTY needed, which suits CI; the console goes to a log.
# - SIGTERM to nspawn is turned into an orderly poweroff of the container (well under a second here).
#   nspawn then prints 'Attempted to remove disk file system under "/run/systemd/nspawn/propagate/…"',
#   which is harmless.
# - nsenter -a enters the container's mount namespace, which also sets root and cwd to the container's
#   /. We wrap commands in `env -i` so the host's environment does not leak in.
# - For a moment after exec, the container's systemd does not answer yet and `systemctl
#   is-system-running --wait` fails with no output; ct_wait_running retries that case.
# - nspawn mounts a tmpfs over the container's /tmp: files copied there from the host are hidden.
#   Copy into /root or /var/tmp instead.
# - The cached root has an empty /etc/machine-id, so each boot gets a fresh transient one.
# - Timing here: debootstrap of the minbase root ~35 s (once; cached), copy + boot to "running" ~1–3 s,
#   poweroff ~0.3 s.

# Packages in the cached root beyond minbase. man-db so that `man -w` works, bash-completion for the
# completion check, procps for pgrep/ps, passwd is already in minbase (useradd for test users).
CT_INCLUDE=${CT_INCLUDE:-systemd,systemd-sysv,dbus,man-db,bash-completion,procps,curl}
CT_SUITE=${CT_SUITE:-bookworm}
CT_ROOT_CACHE=${ORCH_SYSTEMD_ROOT_CACHE:-/var/cache/orchestrator-systemd-root}
CT_WORK_BASE=${ORCH_SYSTEMD_WORK_BASE:-/var/tmp}
CT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Set by ct_boot.
CT_NSPAWN_PID=""   # systemd-nspawn, started by us
CT_PID=""          # the container's systemd (PID 1 inside), as seen from the host
CT_WORK=""         # working directory: root/ and console.log
CT_ROOT=""         # $CT_WORK/root, the container's /

ct_log() { echo "container: $*" >&2; }

# systemd-nspawn and debootstrap, installed with apt when missing (apt-get update only if that fails).
ct_ensure_tools() {
    local missing=()
    command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v nsenter >/dev/null || missing+=(util-linux)
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
    [ ${#missing[@]} -eq 0 ] && return 0
    ct_log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >&2 ||
        { apt-get update -q >&2 && apt-get install -y -q "${missing[@]}" >&2; }
}

# The host's Debian mirror: first URIs of a deb822 source whose Suites has a plain suite name (not
# -security), else the first `deb` line of sources.list. Only on a Debian host: another distribution's
# mirror has no bookworm, so there ORCH_DEBIAN_MIRROR must say where Debian is.
ct_mirror() {
    if [ -n "${ORCH_DEBIAN_MIRROR:-}" ]; then echo "$ORCH_DEBIAN_MIRROR"; return; fi
    local m=""
    if ! grep -qx 'ID=debian' /etc/os-release 2>/dev/null; then
        ct_log "not a Debian host: set ORCH_DEBIAN_MIRROR to a Debian mirror"
        return 1
    fi
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        m=$(awk '
            /^$/ { if (uri != "" && ok) { print uri; exit } uri = ""; ok = 0; next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /-security$/) ok = 1 }
            END { if (uri != "" && ok) print uri }' /etc/apt/sources.list.d/debian.sources | head -1)
    fi
    if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
        m=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
            /etc/apt/sources.list | head -1)
    fi
    if [ -z "$m" ]; then
        ct_log "no Debian mirror in the host's apt sources: set ORCH_DEBIAN_MIRROR"
        return 1
    fi
    echo "$m"
}

# The pristine root, built once with debootstrap and reused while its recipe (suite, packages) is the
# same. Built beside the cache and renamed into place, under a lock, so concurrent or interrupted runs
# never see half a root.
ct_ensure_root() {
    local stamp="suite=$CT_SUITE variant=minbase include=$CT_INCLUDE"
    if [ -f "$CT_ROOT_CACHE/.orchestrator-root" ] && [ "$(cat "$CT_ROOT_CACHE/.orchestrator-root")" = "$stamp" ]; then
        return 0
    fi
    ct_ensure_tools || return 1
    mkdir -p "$(dirname "$CT_ROOT_CACHE")"
    (
        flock 9
        if [ -f "$CT_ROOT_CACHE/.orchestrator-root" ] && [ "$(cat "$CT_ROOT_CACHE/.orchestrator-root")" = "$stamp" ]; then
            exit 0
        fi
        local tmp="$CT_ROOT_CACHE.new.$$" mirror start
        mirror=$(ct_mirror) || exit 1
        start=$(date +%s)
        ct_log "debootstrap $CT_SUITE ($CT_INCLUDE) from $mirror into $CT_ROOT_CACHE (once; about a minute)"
        rm -rf "$tmp"
        if ! debootstrap --variant=minbase --include="$CT_INCLUDE" "$CT_SUITE" "$tmp" "$mirror" >"$tmp.log" 2>&1; then
            ct_log "debootstrap failed; last lines of $tmp.log:"
            tail -20 "$tmp.log" >&2
            rm -rf "$tmp"
            exit 1
        fi
        # Smaller copies per run; a hostname that says what this is.
        rm -f "$tmp"/var/cache/apt/archives/*.deb
        echo orchestrator-test > "$tmp/etc/hostname"
        # Let the container's systemd generate a fresh machine id at each boot.
        : > "$tmp/etc/machine-id"
        echo "$stamp" > "$tmp/.orchestrator-root"
        rm -rf "$CT_ROOT_CACHE.old"
        [ -e "$CT_ROOT_CACHE" ] && mv "$CT_ROOT_CACHE" "$CT_ROOT_CACHE.old"
        mv "$tmp" "$CT_ROOT_CACHE"
        rm -rf "$CT_ROOT_CACHE.old" "$tmp.log"
        ct_log "root ready in $(( $(date +%s) - start )) s"
    ) 9>"$CT_ROOT_CACHE.lock"
}

# Children of a pid, from /proc (no procps needed on the host).
ct_children() {
    local pid=$1 f
    if [ -r "/proc/$pid/task/$pid/children" ]; then
        for f in /proc/"$pid"/task/*/children; do cat "$f" 2>/dev/null; done | tr ' ' '\n' | sed '/^$/d'
    else
        for f in /proc/[0-9]*/stat; do
            awk -v p="$pid" '{ sub(/^.*\) /, ""); if ($2 == p) { split(FILENAME, a, "/"); print a[3] } }' "$f" 2>/dev/null
        done
    fi
}

# Boots a fresh copy of the cached root. Sets CT_NSPAWN_PID, CT_PID, CT_WORK, CT_ROOT. Returns when
# the container's systemd exists (not yet when it has finished booting: see ct_wait_running).
ct_boot() {
    ct_ensure_root || return 1
    mkdir -p "$CT_WORK_BASE"
    CT_WORK=$(mktemp -d "$CT_WORK_BASE/orchestrator-systemd.XXXXXX") || return 1
    CT_ROOT="$CT_WORK/root"
    cp -a --reflink=auto "$CT_ROOT_CACHE" "$CT_ROOT" || return 1

    local keep_unit=${ORCH_NSPAWN_KEEP_UNIT:-}
    if [ -z "$keep_unit" ]; then
        if [ -d /run/systemd/system ]; then keep_unit=0; else keep_unit=1; fi
    fi
    local args=(-D "$CT_ROOT" -b --register=no --console=pipe --private-network
                --machine="orch-test-$$" --quiet)
    [ "$keep_unit" = 1 ] && args+=(--keep-unit)

    # Our own background child, so that we know exactly which pid to stop.
    systemd-nspawn "${args[@]}" </dev/null >"$CT_WORK/console.log" 2>&1 &
    CT_NSPAWN_PID=$!
    echo "$CT_NSPAWN_PID" > "$CT_WORK/nspawn.pid"

    # The container's systemd is nspawn's child once the namespaces are set up (well under a second).
    local child
    CT_PID=""
    for _ in $(seq 1 300); do
        if ! kill -0 "$CT_NSPAWN_PID" 2>/dev/null; then
            ct_log "systemd-nspawn exited early; console:"
            cat "$CT_WORK/console.log" >&2
            return 1
        fi
        for child in $(ct_children "$CT_NSPAWN_PID"); do
            if [ "$(cat "/proc/$child/comm" 2>/dev/null)" = systemd ]; then CT_PID=$child; break 2; fi
        done
        sleep 0.1
    done
    if [ -z "$CT_PID" ]; then
        ct_log "no systemd under systemd-nspawn (pid $CT_NSPAWN_PID) after 30 s"
        return 1
    fi
    echo "$CT_PID" > "$CT_WORK/container.pid"
}

# Runs a command inside the container as root, with a clean environment.
ct_exec() {
    nsenter -t "$CT_PID" -a -- env -i PATH="$CT_PATH" HOME=/root LANG=C.UTF-8 TERM=dumb \
        SYSTEMD_PAGER=cat SYSTEMD_COLORS=0 "$@"
}

# Waits (bounded) until the container's systemd has finished booting: running, or degraded (some
# unrelated unit failed; that is listed on stderr but not fatal).
ct_wait_running() {
    local timeout=${1:-120} state="" deadline
    deadline=$(( $(date +%s) + timeout ))
    # Right after exec the container's systemd has not yet opened its private socket and systemctl
    # fails to connect (no output at all), so retry that case until the deadline.
    while :; do
        state=$(ct_exec timeout "$timeout" systemctl is-system-running --wait 2>/dev/null)
        [ -n "$state" ] && break
        [ "$(date +%s)" -ge "$deadline" ] && break
        kill -0 "$CT_PID" 2>/dev/null || break
        sleep 0.1
    done
    case $state in
        running) return 0 ;;
        degraded)
            ct_log "system is degraded; failed units:"
            ct_exec systemctl --failed --no-legend >&2
            return 0 ;;
        *)
            ct_log "system did not come up (state '${state:-none}'); console:"
            tail -30 "$CT_WORK/console.log" >&2
            return 1 ;;
    esac
}

# Copies a host file into the container (the working root is a plain directory on the host).
ct_copy_in() {
    local src=$1 dest=$2
    install -D -m "${3:-0644}" "$src" "$CT_ROOT$dest"
}

# Stops the container we started: orderly poweroff (SIGTERM to nspawn), then SIGKILL to nspawn and to
# the container's PID 1 (which takes its whole pid namespace with it). Idempotent; safe in a trap.
ct_stop() {
    local nspawn=${1:-$CT_NSPAWN_PID} work=${2:-$CT_WORK} ctpid=${3:-$CT_PID}
    if [ -n "$nspawn" ] && kill -0 "$nspawn" 2>/dev/null; then
        kill -TERM "$nspawn" 2>/dev/null
        for _ in $(seq 1 300); do
            kill -0 "$nspawn" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$nspawn" 2>/dev/null; then
            ct_log "container did not power off within 30 s; killing it"
            [ -n "$ctpid" ] && kill -KILL "$ctpid" 2>/dev/null
            kill -KILL "$nspawn" 2>/dev/null
        fi
    fi
    # Reap it if it is our child; harmless otherwise.
    [ -n "$nspawn" ] && wait "$nspawn" 2>/dev/null
    if [ -n "$ctpid" ] && [ -d "/proc/$ctpid" ] && [ "$(cat "/proc/$ctpid/comm" 2>/dev/null)" = systemd ]; then
        kill -KILL "$ctpid" 2>/dev/null
    fi
    if [ -n "$work" ] && [ -d "$work" ] && [ "${ORCH_SYSTEMD_KEEP:-0}" != 1 ]; then
        rm -rf --one-file-system "$work"
    elif [ -n "$work" ] && [ -d "$work" ]; then
        ct_log "kept $work"
    fi
    if [ "$nspawn" = "$CT_NSPAWN_PID" ]; then CT_NSPAWN_PID=""; CT_PID=""; CT_WORK=""; CT_ROOT=""; fi
}

ct_main() {
    set -u
    [ "$(id -u)" = 0 ] || { ct_log "must run as root (systemd-nspawn, debootstrap)"; exit 1; }
    case "${1:-}" in
        root)
            ct_ensure_root && echo "$CT_ROOT_CACHE" ;;
        selftest)
            local t0 t1 t2 t3
            t0=$(date +%s%N)
            ct_ensure_root || exit 1
            t1=$(date +%s%N)
            trap ct_stop EXIT
            ct_boot || exit 1
            ct_wait_running 120 || exit 1
            t2=$(date +%s%N)
            ct_exec systemctl --version | head -1
            ct_stop
            t3=$(date +%s%N)
            ct_log "root ready in $(( (t1 - t0) / 1000000 )) ms, copy+boot in $(( (t2 - t1) / 1000000 )) ms," \
                "stop in $(( (t3 - t2) / 1000000 )) ms"
            ;;
        boot)
            ct_boot || exit 1
            ct_wait_running 120 || { ct_stop; exit 1; }
            echo "CT_NSPAWN_PID=$CT_NSPAWN_PID CT_PID=$CT_PID CT_WORK=$CT_WORK"
            echo "run inside:  $0 exec $CT_PID CMD…"
            echo "stop:        $0 stop $CT_NSPAWN_PID $CT_WORK"
            disown "$CT_NSPAWN_PID" 2>/dev/null || true
            ;;
        stop)
            [ $# -ge 3 ] || { echo "usage: $0 stop NSPAWN_PID WORKDIR" >&2; exit 2; }
            [ "$(cat "/proc/$2/comm" 2>/dev/null)" = systemd-nspawn ] || [ ! -d "/proc/$2" ] ||
                { ct_log "pid $2 is not systemd-nspawn"; exit 1; }
            ct_stop "$2" "$3" "$(cat "$3/container.pid" 2>/dev/null)" ;;
        exec)
            [ $# -ge 3 ] || { echo "usage: $0 exec CONTAINER_PID CMD…" >&2; exit 2; }
            CT_PID=$2; shift 2; ct_exec "$@" ;;
        *)
            sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    ct_main "$@"
fi
