#!/bin/bash
# Build the orchestrator Debian package with cargo-deb.
#
#   packaging/build-deb.sh [--no-build] OUT_DIR
#
# Builds the release binaries orchestratord and orchctl (not with --no-build: then they must already be
# in the target directory), generates what the binaries produce about themselves — man pages
# (`orchctl man DIR`, `orchestratord --man DIR`) and shell completions (`orchctl completions SHELL`) —
# into target/release/deb-generated/, and runs `cargo deb`. Everything else about the package (name,
# dependencies, files, maintainer scripts, systemd units) is in [package.metadata.deb] of
# daemon/Cargo.toml. The package lands in OUT_DIR; its path is the last line printed on stdout.
#
# Needs cargo-deb (`cargo install cargo-deb --locked`) and dpkg-dev (dpkg-shlibdeps, for Depends).
# Environment: CARGO_TARGET_DIR, DEB_MAINTAINER (overrides the Maintainer field), SOURCE_DATE_EPOCH
# (default: the time of the last commit, so that rebuilding a commit gives the same file dates).
set -euo pipefail

die() { echo "build-deb: $*" >&2; exit 1; }

build=1
if [ "${1:-}" = --no-build ]; then build=0; shift; fi
[ $# -eq 1 ] || die "usage: $0 [--no-build] OUT_DIR"
mkdir -p "$1"
out_dir=$(cd "$1" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

cargo deb --version >/dev/null 2>&1 || die "cargo-deb not found (cargo install cargo-deb --locked)"
command -v dpkg-shlibdeps >/dev/null || die "dpkg-shlibdeps not found (apt-get install dpkg-dev)"

target_dir=${CARGO_TARGET_DIR:-$repo/target}
case $target_dir in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
release="$target_dir/release"

if [ $build = 1 ]; then
    cargo build --release --locked --bins -p orchestratord -p orchctl >&2
fi
for bin in orchestratord orchctl; do
    [ -x "$release/$bin" ] || die "$release/$bin is missing (cargo build --release)"
done

# --- generated assets (paths as in the assets of daemon/Cargo.toml) ---------------------------------
gen="$release/deb-generated"
rm -rf "$gen"
mkdir -p "$gen/man" "$gen/completions" "$gen/scratch"
# Runs one of our binaries for generated content only: no daemon, no user config, bounded in time.
run_generator() {
    env -i PATH=/usr/bin:/bin HOME="$gen/scratch" XDG_RUNTIME_DIR="$gen/scratch" \
        XDG_STATE_HOME="$gen/scratch" XDG_CONFIG_HOME="$gen/scratch" timeout 20 "$@" </dev/null
}
run_generator "$release/orchctl" man "$gen/man" >/dev/null || die "orchctl man failed"
run_generator "$release/orchestratord" --man "$gen/man" >/dev/null || die "orchestratord --man failed"
ls "$gen"/man/*.1 >/dev/null 2>&1 || die "no man pages generated"
# Section 1 only: daemon/Cargo.toml installs $gen/man/*.1.gz into man1.
for page in "$gen"/man/*; do
    case $page in *.1) gzip -9n "$page" ;; *) die "unexpected man page $page (add its section to the assets)" ;; esac
done
run_generator "$release/orchctl" completions bash > "$gen/completions/orchctl.bash"
run_generator "$release/orchctl" completions zsh > "$gen/completions/_orchctl"
run_generator "$release/orchctl" completions fish > "$gen/completions/orchctl.fish"
for f in "$gen"/completions/*; do [ -s "$f" ] || die "empty completion $f"; done
gzip -9n < README.md > "$gen/README.md.gz"
rm -rf "$gen/scratch"

# --- the package -------------------------------------------------------------------------------------
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
args=(-p orchestratord --no-build --output "$out_dir")
[ -n "${DEB_MAINTAINER:-}" ] && args+=(--maintainer "$DEB_MAINTAINER")
deb=$(cargo deb "${args[@]}" | tail -1)
[ -f "$deb" ] || die "cargo deb did not report a package (got '$deb')"
echo "$deb"
