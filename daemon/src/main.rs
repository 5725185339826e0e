//! `orchestratord`: the daemon binary. Parses flags, sets up logging, and hands over to
//! [`orchestrator::run`].

use clap::Parser;
use orchestrator::background;
use orchestrator::config::Config;
use orchestrator::logging::{self, LogFormat};
use orchestrator::run::{self, Options};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "orchestratord",
    version,
    about = "Routes AI-agent tasks to specialist agents, runs them, records every step",
    long_about = "Routes AI-agent tasks to specialist agents, runs them, records every step, and holds \
risky results for human approval. Control it with orchctl(1) over its Unix socket.\n\n\
Normally started by systemd (orchestrator.service, Type=notify). SIGHUP reloads the config \
(as `orchctl reload`); SIGTERM and SIGINT stop it cleanly. Started by systemd it logs to the \
journal with structured fields (MODE, TASK_ID, FROM, TO, ACTOR); otherwise to stderr."
)]
struct Cli {
    /// Config file (TOML). Without it, /etc/orchestrator/orchestrator.toml if present, else built-in defaults.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Control socket path (overrides the config).
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// State directory: database, task files, token (overrides the config).
    #[arg(long, value_name = "PATH")]
    state_dir: Option<PathBuf>,
    /// Validate a config file and exit: 0 valid, 5 invalid.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "")]
    check_config: Option<PathBuf>,
    /// Where and how to log: the journal when started by systemd, else text on stderr (auto).
    #[arg(long, value_enum, default_value = "auto")]
    log_format: LogFormat,
    /// Run in the background (hosts without systemd). Returns once the daemon is ready, or fails
    /// with its start-up error.
    #[arg(long, requires = "pidfile")]
    daemonize: bool,
    /// With --daemonize: pidfile, locked while the daemon runs; a second instance refuses it.
    #[arg(long, value_name = "PATH", requires = "daemonize")]
    pidfile: Option<PathBuf>,
    /// With --daemonize: append logs to this file (default: discard them).
    #[arg(long, value_name = "PATH", requires = "daemonize")]
    log_file: Option<PathBuf>,
    /// Copy the stopped daemon's SQLite store (in its state directory) into an empty PostgreSQL
    /// database, check the row counts, and exit: 0 copied, 1 not.
    #[arg(long, value_name = "URL")]
    copy_store_to: Option<String>,
    /// Write the man page into a directory and exit.
    #[arg(long, value_name = "DIR", hide = true)]
    man: Option<PathBuf>,
}

fn man(dir: &Path) -> ExitCode {
    let cmd = <Cli as clap::CommandFactory>::command();
    match std::fs::create_dir_all(dir).and_then(|_| clap_mangen::generate_to(cmd, dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orchestratord: cannot write the man page: {e}");
            ExitCode::from(1)
        }
    }
}

fn check_config(path: PathBuf) -> ExitCode {
    let path = if path.as_os_str().is_empty() {
        PathBuf::from(orchestrator::config::DEFAULT_CONFIG_PATH)
    } else {
        path
    };
    match Config::load(&path) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                println!("warning: {w}");
            }
            println!(
                "{}: valid (mode {}, {} rules)",
                path.display(),
                cfg.mode,
                cfg.routing.rules.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for issue in &e.errors {
                eprintln!("error: {}: {issue}", e.source);
            }
            ExitCode::from(5)
        }
    }
}

fn copy_store(opts: &Options, url: String) -> ExitCode {
    let from = match run::sqlite_path(opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("orchestratord: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let to = orchestrator::store::postgres::Settings {
        url,
        pool_size: 1,
        node: "store-copy".into(),
    };
    // The links and approval deadlines of events still to be sent, as the daemon would build them.
    let config = match orchestrator::config::Config::load_or_builtin(opts.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("orchestratord: {e}");
            return ExitCode::from(2);
        }
    };
    let rules = orchestrator::store::OutboxRules {
        sinks: Vec::new(),
        approval: config.approval.clone(),
        public_url: orchestrator::notify::public_url(&config, None),
    };
    match orchestrator::store::copy::sqlite_to_postgres(&from, &to, &rules) {
        Ok(report) => {
            println!(
                "copied {} from {}; the counts match",
                report,
                from.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("orchestratord: cannot copy the store: {e}");
            ExitCode::from(1)
        }
    }
}

/// glibc's allocator (SQLite's page caches and the C libraries; the daemon's own allocations are
/// mimalloc's, see [`GLOBAL`]), set before any thread starts (see docs/BENCHMARKS.md, "Memory at
/// 1,000,000 tasks"): at most two arenas, so that each short-lived blocking thread of the read
/// pool does not keep an arena of its own with what it freed. The mmap threshold is fixed later,
/// once the config is loaded ([`orchestrator::heap::fix_mmap_threshold`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    const ARENAS: libc::c_int = 2;
    // SAFETY: mallopt only changes allocator parameters; it runs first in `main`, before any other
    // thread exists. A parameter it refuses (return 0) leaves glibc's default, which is harmless.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENAS);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// The daemon's own allocations go to mimalloc: its per-thread heaps take the place of glibc's
/// arena locks, which the runtime's threads and the store writer fought over on every request
/// (docs/BENCHMARKS.md, "mimalloc for the daemon's allocations"). Built without transparent huge
/// pages (`no_thp`), which would fault in whole 2 MiB pages of an idle daemon. SQLite and the other
/// C libraries keep glibc's `malloc`, tuned by [`tune_allocator`].
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    if let Some(dir) = cli.man {
        return man(&dir);
    }
    if let Some(path) = cli.check_config {
        return check_config(path);
    }
    let mut opts = Options {
        config: cli.config,
        socket: cli.socket,
        state_dir: cli.state_dir,
    };
    if let Some(url) = cli.copy_store_to {
        return copy_store(&opts, url);
    }
    let mut pidfile = None;
    if cli.daemonize {
        // The daemon works from `/`; paths typed relative to here must still mean the same files.
        for p in [&mut opts.config, &mut opts.socket, &mut opts.state_dir] {
            *p = p.as_deref().map(background::absolute);
        }
        let path = background::absolute(cli.pidfile.as_deref().unwrap_or(Path::new("")));
        let log_file = cli.log_file.as_deref().map(background::absolute);
        if let Err(e) = background::detach(&path, log_file.as_deref()) {
            eprintln!("orchestratord: {e}");
            return ExitCode::from(1);
        }
        pidfile = Some(path);
    }
    // Files the daemon creates are private to it and its group unless it says otherwise.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
    logging::init(cli.log_format);
    let result = start_and_serve(&opts);
    if let Some(p) = &pidfile {
        background::remove_pidfile(p);
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.exit_code() as u8;
            tracing::error!("{e}");
            background::failed(code, &e.to_string());
            ExitCode::from(code)
        }
    }
}

fn start_and_serve(opts: &Options) -> Result<(), run::StartError> {
    let prepared = run::prepare(opts)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orchestratord")
        .build()
        .map_err(|e| run::StartError::Other(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(async {
        let listener = orchestrator::server::listen(&prepared.paths.socket)
            .map_err(|e| run::StartError::Other(e.to_string()))?;
        run::serve(prepared, listener).await
    });
    // A blocking call stuck in a wedged part must not keep the process from exiting.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}
