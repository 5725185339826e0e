//! The daemon under test as a process: start it, know when it is ready, read its memory, stop it.

use crate::client::Conn;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Daemon {
    child: Child,
    /// From spawn to the first answered hello.
    pub ready_after: Duration,
}

impl Daemon {
    pub fn start(
        bin: &Path,
        socket: &Path,
        state_dir: &Path,
        config: Option<&Path>,
        log: &Path,
    ) -> Result<Daemon> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state_dir);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        cmd.env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let started = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        loop {
            if Conn::open(socket).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                bail!("orchestratord exited with {status}; see {}", log.display());
            }
            if started.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                bail!("orchestratord was not ready after 120 s");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(Daemon {
            ready_after: started.elapsed(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (VmRSS, VmHWM) in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64)> {
        memory_kib(self.pid())
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> Result<()> {
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("orchestratord exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("orchestratord did not stop within 60 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) of process `pid`, or of its threads named `thread` when given (an
/// error if it has none).
pub fn cpu_time(pid: u32, thread: Option<&str>) -> Result<Duration> {
    match thread {
        None => Ok(ticks_to_time(stat_ticks(Path::new(&format!(
            "/proc/{pid}/stat"
        )))?)),
        Some(name) => match threads_cpu_time(pid, name)? {
            (_, 0) => bail!("no thread named {name} in {pid}"),
            (t, _) => Ok(t),
        },
    }
}

/// CPU time so far of the daemon `pid`, of its store writer thread and of this process (the load
/// generator), in that order: sampled around a run, their differences are what the run cost each.
pub fn cpu_sample(pid: u32) -> Result<[Duration; 3]> {
    Ok([
        cpu_time(pid, None)?,
        cpu_time(pid, Some(orchestrator::store::sqlite::WRITER_TASK))?,
        own_cpu_time()?,
    ])
}

/// CPU time (user + system) this process has spent: the load generator's own cost, which shares
/// the machine's cores with the daemon under test.
fn own_cpu_time() -> Result<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointer it is given, which is valid for it.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        bail!("getrusage: {}", std::io::Error::last_os_error());
    }
    // SAFETY: getrusage succeeded, so it filled the struct (and it was zeroed before).
    let usage = unsafe { usage.assume_init() };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok(time(usage.ru_utime) + time(usage.ru_stime))
}

/// CPU time of the threads of `pid` named `name`, and how many there are. A thread that ends
/// between the listing and the read counts nothing.
pub fn threads_cpu_time(pid: u32, name: &str) -> Result<(Duration, usize)> {
    let (mut total, mut threads) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = entry?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            threads += 1;
            total += stat_ticks(&dir.join("stat")).unwrap_or(0);
        }
    }
    Ok((ticks_to_time(total), threads))
}

/// utime + stime of a `stat` file, in clock ticks.
fn stat_ticks(path: &Path) -> Result<u64> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("cannot parse {}", path.display()))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("cannot parse {}", path.display()))
    };
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    Ok(ticks(11)? + ticks(12)?)
}

fn ticks_to_time(ticks: u64) -> Duration {
    Duration::from_micros(ticks * 1_000_000 / clock_ticks_per_sec())
}

/// The unit of `/proc/PID/stat`'s CPU times, per second.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory effects.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64
}
