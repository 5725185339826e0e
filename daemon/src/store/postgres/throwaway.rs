//! A throwaway PostgreSQL server for tests: `initdb` and `pg_ctl` from the Debian packages in a
//! temporary directory, listening only on a Unix socket there (no TCP port, no container), run as an
//! unprivileged user when the tests run as root (`initdb` refuses root).
//!
//! [`TempPostgres::start`] gives a server of one's own, stopped when dropped; [`shared_database`]
//! gives a fresh database on one server per test process, stopped when the process exits.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// Where the server binaries are; `ORCH_PG_BIN` overrides.
pub fn bin_dir() -> PathBuf {
    std::env::var_os("ORCH_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

const USER: &str = "orchestrator";
/// `nobody`, for a test run as root.
const UNPRIVILEGED: u32 = 65534;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A running server and its directory; stopped (by `pg_ctl stop -m fast`) and removed on drop.
pub struct TempPostgres {
    dir: PathBuf,
    /// Extra server settings (`-c name=value`).
    settings: String,
    /// Keeps the process-exit guard of a shared server alive; see [`shared_database`].
    guard: Option<Mutex<Child>>,
}

fn as_server_user(cmd: &mut Command) -> &mut Command {
    if nix::unistd::geteuid().is_root() {
        // std drops the supplementary groups when it switches away from root.
        cmd.uid(UNPRIVILEGED).gid(UNPRIVILEGED);
    }
    cmd
}

fn run(cmd: &mut Command, what: &str) -> io::Result<()> {
    let out = as_server_user(cmd).stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl TempPostgres {
    /// initdb and start a server in a new temporary directory.
    pub fn start() -> io::Result<TempPostgres> {
        Self::start_with("")
    }

    /// [`TempPostgres::start`] with extra server settings (`-c name=value …`).
    pub fn start_with(settings: &str) -> io::Result<TempPostgres> {
        let bin = bin_dir();
        if !bin.join("initdb").exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "no PostgreSQL binaries in {} (apt-get install postgresql)",
                    bin.display()
                ),
            ));
        }
        // Short: the socket path must fit in 107 bytes.
        let dir = std::env::temp_dir().join(format!(
            "orch-pg-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        if nix::unistd::geteuid().is_root() {
            let id = Some(nix::unistd::Uid::from_raw(UNPRIVILEGED));
            let gid = Some(nix::unistd::Gid::from_raw(UNPRIVILEGED));
            nix::unistd::chown(&dir, id, gid).map_err(io::Error::other)?;
        }
        let pg = TempPostgres {
            dir,
            settings: settings.to_string(),
            guard: None,
        };
        run(
            Command::new(bin.join("initdb"))
                .current_dir(&pg.dir)
                .args([
                    "-U",
                    USER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ])
                .arg("-D")
                .arg(pg.data()),
            "initdb",
        )?;
        pg.pg_ctl(&["start", "-w", "-t", "60"])?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The directory of the server's socket.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    fn pg_ctl(&self, args: &[&str]) -> io::Result<()> {
        let options = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c max_connections=200 {}",
            self.dir.display(),
            self.settings
        );
        run(
            Command::new(bin_dir().join("pg_ctl"))
                .current_dir(&self.dir)
                .args(args)
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.dir.join("server.log"))
                .arg("-o")
                .arg(options),
            "pg_ctl",
        )
    }

    /// Connection settings for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("host={} user={USER} dbname={db}", self.dir.display())
    }

    pub fn create_database(&self, name: &str) -> io::Result<()> {
        run(
            Command::new(bin_dir().join("createdb"))
                .current_dir(&self.dir)
                .arg("-h")
                .arg(&self.dir)
                .args(["-U", USER, name]),
            "createdb",
        )
    }

    /// Run `sql` in database `db` through `psql`; its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> io::Result<String> {
        let out = as_server_user(
            Command::new(bin_dir().join("psql"))
                .current_dir(&self.dir)
                .arg("-h")
                .arg(&self.dir)
                .args(["-U", USER, "-d", db, "-X", "-A", "-t", "-c", sql]),
        )
        .stdin(Stdio::null())
        .output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(io::Error::other(format!(
                "psql failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Stop the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop_immediate(&self) -> io::Result<()> {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"])
    }

    /// Start the server again after [`TempPostgres::stop_immediate`].
    pub fn start_again(&self) -> io::Result<()> {
        self.pg_ctl(&["start", "-w", "-t", "60"])
    }

    /// `pg_ctl restart -m immediate`: a crash and a recovery.
    pub fn restart_immediate(&self) -> io::Result<()> {
        self.pg_ctl(&["restart", "-m", "immediate", "-w", "-t", "60"])
    }

    /// The server's log, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        if self.guard.is_none() {
            let _ = self.pg_ctl(&["stop", "-m", "fast", "-w"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh, empty database on this test process's shared server. The server is stopped when the
/// process exits, however it exits: a guard process waits on a pipe only this process holds open.
pub fn shared_database() -> io::Result<String> {
    static SERVER: OnceLock<Result<TempPostgres, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        // The contract checks behaviour, not crash safety: no fsync, so that creating a database
        // per case stays cheap. Tests of crashes start a server of their own.
        let mut pg = TempPostgres::start_with("-c fsync=off").map_err(|e| e.to_string())?;
        let stop = format!(
            "read _; {} stop -m fast -D '{}'; rm -rf '{}'",
            bin_dir().join("pg_ctl").display(),
            pg.data().display(),
            pg.dir.display()
        );
        let child = as_server_user(
            Command::new("sh")
                .current_dir(&pg.dir)
                .args(["-c", &stop])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .spawn()
        .map_err(|e| e.to_string())?;
        pg.guard = Some(Mutex::new(child));
        Ok(pg)
    });
    let server = server.as_ref().map_err(|e| io::Error::other(e.clone()))?;
    let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
    server.create_database(&name)?;
    Ok(server.url(&name))
}
