//! `orchestratord --daemonize --pidfile PATH`: running in the background on hosts without systemd.
//!
//! The daemon forks twice (the `daemonize` crate: new session, working directory `/`, umask 0027),
//! holds an exclusive `flock` on the pidfile for as long as it runs, and removes the pidfile when it
//! stops cleanly. A second instance with the same pidfile refuses to start.
//!
//! The command that was typed does not return at the fork: it waits on a pipe until the daemon says
//! it is ready (store open, socket accepting — the moment systemd would get READY=1) or why it could
//! not start, prints that, and exits 0 or with the daemon's start-up exit code (5 for an invalid
//! config, 1 otherwise). Scripts can therefore rely on `orchestratord --daemonize … && orchctl …`.
//!
//! Logs go to `--log-file` (appended), or nowhere: a background process has no terminal, and hosts
//! without systemd have no journal. Start-up failures still reach the terminal through the pipe.

use nix::fcntl::{Flock, FlockArg, OFlag};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The write end of the start-up pipe, in the daemon while it is starting; `None` otherwise.
static STARTUP_PIPE: Mutex<Option<File>> = Mutex::new(None);

/// Paths given relative to where the command was typed, made absolute before the daemon moves to `/`.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn holder_of(pidfile: &Path) -> Option<String> {
    let file = File::open(pidfile).ok()?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // Nobody holds it: a stale pidfile from a killed daemon, which the new one takes over.
        Ok(_unlocked_on_drop) => None,
        Err((mut file, _)) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            Some(pid.trim().to_string())
        }
    }
}

/// Fork into the background. Returns only in the daemon; the original process waits for the
/// daemon's start-up verdict and exits with it. Call before any thread is started (no runtime, no
/// store): only the forking thread survives a fork.
pub fn detach(pidfile: &Path, log_file: Option<&Path>) -> Result<(), String> {
    if let Some(pid) = holder_of(pidfile) {
        return Err(format!(
            "another orchestratord (pid {pid}) holds the pidfile {}",
            pidfile.display()
        ));
    }
    let log = match log_file {
        Some(path) => OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))?,
        None => OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .map_err(|e| format!("cannot open /dev/null: {e}"))?,
    };
    let log_copy = log
        .try_clone()
        .map_err(|e| format!("cannot duplicate the log file: {e}"))?;
    // Close-on-exec: specialists the daemon spawns must not hold the pipe open.
    let (read_end, write_end) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot create a pipe: {e}"))?;

    let outcome = daemonize::Daemonize::new()
        .pid_file(pidfile)
        .chown_pid_file(false)
        .working_directory("/")
        .umask(0o027)
        .stdout(log_copy)
        .stderr(log)
        .execute();
    match outcome {
        daemonize::Outcome::Parent(Err(e)) => Err(format!("cannot fork: {e}")),
        daemonize::Outcome::Parent(Ok(_)) => {
            drop(write_end);
            wait_for_verdict(File::from(read_end), log_file)
        }
        daemonize::Outcome::Child(result) => {
            drop(read_end);
            let pipe = File::from(write_end);
            if let Err(e) = result {
                // The pidfile was taken between our check and the daemon's lock, or the like.
                report(
                    pipe,
                    &format!("failed 1 pidfile {}: {e}", pidfile.display()),
                );
                std::process::exit(1);
            }
            if let Ok(mut slot) = STARTUP_PIPE.lock() {
                *slot = Some(pipe);
            }
            Ok(())
        }
    }
}

fn report(mut pipe: File, line: &str) {
    let one_line = line.replace('\n', "; ");
    let _ = writeln!(pipe, "{one_line}");
}

/// In the original process: wait for `ready <pid>` or `failed <code> <message>` and exit with it.
fn wait_for_verdict(pipe: File, log_file: Option<&Path>) -> ! {
    let mut line = String::new();
    let _ = BufReader::new(pipe).read_line(&mut line);
    let line = line.trim_end();
    if line.starts_with("ready") {
        std::process::exit(0);
    }
    if let Some(rest) = line.strip_prefix("failed ") {
        let (code, message) = rest.split_once(' ').unwrap_or(("1", rest));
        eprintln!("orchestratord: {message}");
        std::process::exit(code.parse().unwrap_or(1));
    }
    let hint = match log_file {
        Some(p) => format!("; see {}", p.display()),
        None => "; run it with --log-file PATH to see why".into(),
    };
    eprintln!("orchestratord: the daemon exited during start-up{hint}");
    std::process::exit(1);
}

/// Tell the waiting command that the daemon is ready (a no-op when not daemonized).
pub fn ready() {
    let pipe = STARTUP_PIPE.lock().ok().and_then(|mut p| p.take());
    if let Some(pipe) = pipe {
        report(pipe, &format!("ready {}", std::process::id()));
    }
}

/// Tell the waiting command why start-up failed and with which exit code (a no-op when not
/// daemonized, or once ready).
pub fn failed(code: u8, message: &str) {
    let pipe = STARTUP_PIPE.lock().ok().and_then(|mut p| p.take());
    if let Some(pipe) = pipe {
        report(pipe, &format!("failed {code} {message}"));
    }
}

/// Remove the pidfile at a clean exit. The lock is still ours until the process ends, so no other
/// instance can have taken the file over.
pub fn remove_pidfile(pidfile: &Path) {
    if let Err(e) = std::fs::remove_file(pidfile) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(pidfile = %pidfile.display(), error = %e, "cannot remove the pidfile");
        }
    }
}
