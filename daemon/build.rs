//! The release link puts the functions a daemon runs at start, at rest and on its common requests
//! first in `.text`, in the order of `link/hot-symbols.txt`. The kernel maps the binary's code in
//! runs around each page that is touched, so code that is used together and kept together is what
//! keeps an idle daemon's resident memory small (docs/BENCHMARKS.md, "Idle memory";
//! `link/hot-symbols.sh` regenerates and checks the list).
//!
//! Only where the linker reads `--symbol-ordering-file` (LLD, as in the toolchains rustup
//! installs for x86_64 Linux from Rust 1.90 on): a small program is linked first with the same
//! compiler, flags and linker, and the option is used only when that link succeeds. Elsewhere
//! (GNU ld, mold, a distribution's rustc), or with `ORCHESTRATOR_NO_SYMBOL_ORDER` set, the link
//! is the default one. Names that are not in the binary are skipped without a warning.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rerun-if-changed=link/hot-symbols.txt");
    println!("cargo:rerun-if-env-changed=ORCHESTRATOR_NO_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    if env::var_os("ORCHESTRATOR_NO_SYMBOL_ORDER").is_some()
        || env::var("PROFILE").as_deref() != Ok("release")
    {
        return;
    }
    let (Some(dir), Some(out)) = (env::var_os("CARGO_MANIFEST_DIR"), env::var_os("OUT_DIR")) else {
        return;
    };
    let path = PathBuf::from(dir).join("link/hot-symbols.txt");
    // A path the linker would read otherwise (not UTF-8) is not passed.
    let Some(list) = path.to_str().filter(|_| path.is_file()) else {
        return;
    };
    let args = [
        "-Xlinker".to_string(),
        format!("--symbol-ordering-file={list}"),
        "-Xlinker".to_string(),
        "--no-warn-symbol-ordering".to_string(),
    ];
    if !links(Path::new(&out), &args) {
        return;
    }
    for arg in args {
        println!("cargo:rustc-link-arg-bin=orchestratord={arg}");
    }
}

/// Whether an empty program links with `args` added, the way this build links its binaries.
fn links(out: &Path, args: &[String]) -> bool {
    let src = out.join("symbol_order_probe.rs");
    if std::fs::write(&src, "fn main() {}\n").is_err() {
        return false;
    }
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.arg("--crate-name")
        .arg("symbol_order_probe")
        .arg("--edition=2021")
        .arg("-o")
        .arg(out.join("symbol_order_probe"))
        .arg(&src);
    if let Ok(target) = env::var("TARGET") {
        cmd.arg("--target").arg(target);
    }
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        cmd.arg("-C")
            .arg(format!("linker={}", linker.to_string_lossy()));
    }
    if let Ok(flags) = env::var("CARGO_ENCODED_RUSTFLAGS") {
        cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    }
    for arg in args {
        cmd.arg("-C").arg(format!("link-arg={arg}"));
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
