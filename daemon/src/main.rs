//! `orchestratord`: the daemon binary. Parses flags, sets up logging, and hands over to
//! [`orchestrator::run`].

use clap::Parser;
use orchestrator::config::Config;
use orchestrator::run::{self, Options};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "orchestratord",
    version,
    about = "Routes AI-agent tasks to specialist agents, runs them, records every step"
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
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("ORCHESTRATOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(path) = cli.check_config {
        return check_config(path);
    }
    // Files the daemon creates are private to it and its group unless it says otherwise.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o027));
    init_logging(cli.log_format);
    let opts = Options {
        config: cli.config,
        socket: cli.socket,
        state_dir: cli.state_dir,
    };
    let prepared = match run::prepare(&opts) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("orchestratord: {e}");
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("orchestratord")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orchestratord: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let listener = orchestrator::server::bind(&prepared.paths.socket)
            .map_err(|e| run::StartError::Other(e.to_string()))?;
        run::serve(prepared, listener).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("orchestratord: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
