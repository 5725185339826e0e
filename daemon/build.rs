//! The release link puts the functions a daemon runs at start, at rest and on its common requests
//! first in `.text`, in the order of `link/hot-symbols.txt`. The kernel maps the binary's code in
//! runs around each page that is touched, so code that is used together and kept together is what
//! keeps an idle daemon's resident memory small (docs/BENCHMARKS.md, "Idle memory";
//! `link/hot-symbols.sh` regenerates and checks the list).
//!
//! Only where the linker is known to be LLD, which reads `--symbol-ordering-file`: Rust's own on
//! x86_64 Linux from 1.90 on. Elsewhere, or with `ORCHESTRATOR_NO_SYMBOL_ORDER` set, the link is
//! the default one; names that are not in the binary are skipped without a warning.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link/hot-symbols.txt");
    println!("cargo:rerun-if-env-changed=ORCHESTRATOR_NO_SYMBOL_ORDER");
    if env::var_os("ORCHESTRATOR_NO_SYMBOL_ORDER").is_some()
        || env::var("PROFILE").as_deref() != Ok("release")
        || env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || !rustc_links_with_lld()
        || linker_overridden()
    {
        return;
    }
    let Some(dir) = env::var_os("CARGO_MANIFEST_DIR") else {
        return;
    };
    let list = PathBuf::from(dir).join("link/hot-symbols.txt");
    if !list.is_file() {
        return;
    }
    println!(
        "cargo:rustc-link-arg-bin=orchestratord=-Wl,--symbol-ordering-file={}",
        list.display()
    );
    println!("cargo:rustc-link-arg-bin=orchestratord=-Wl,--no-warn-symbol-ordering");
}

/// rustc 1.90 and later link x86_64 Linux binaries with their bundled LLD.
fn rustc_links_with_lld() -> bool {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc).arg("-vV").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(version) = text
        .lines()
        .find_map(|l| l.strip_prefix("release: "))
        .and_then(|v| v.split(['.', '-']).nth(1))
        .and_then(|minor| minor.parse::<u32>().ok())
    else {
        return false;
    };
    version >= 90
}

/// A linker or linker flavour chosen by hand (a target `linker` in Cargo's config, `-C linker=…`,
/// `-C linker-features=…`, `-C link-self-contained=…`) may not be LLD.
fn linker_overridden() -> bool {
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    env::var_os("RUSTC_LINKER").is_some()
        || flags.contains("linker")
        || flags.contains("link-self-contained")
}
