//! The bearer token and the files `orchctl init` creates. Secrets are written atomically:
//! a temporary file created with mode 0600, written, fsynced, renamed over the target, and the
//! directory fsynced, so a crash leaves either the old token or the new one, never half of one.
//!
//! Ownership: the daemon reads the token as whatever user owns its state directory (`orchestrator`
//! in the package), while `orchctl init` usually runs as root. So the token is handed to the state
//! directory's owner, and a config file `init` creates is group-readable by the state directory's
//! group only (`root:orchestrator 0640`, as the package installs it).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The default config written by `orchctl init`: every key commented out with its default.
pub const DEFAULT_CONFIG: &str = include_str!("../../packaging/orchestrator.toml");

/// 32 random bytes from the kernel, as 64 hex characters.
pub fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Who should own a file: `None` keeps the writer's own user and group.
pub type Owner = Option<(Option<u32>, Option<u32>)>;

/// Write `contents` to `path` atomically with the given mode.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_owned(path, contents, mode, None)
}

/// [`write_atomic`], handing the file to `owner` (user, group) before it takes the target's name,
/// so that no moment exists where the target is there but unreadable to its reader.
pub fn write_atomic_owned(path: &Path, contents: &[u8], mode: u32, owner: Owner) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, uid, gid)?;
        }
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A problem with the token file that an operator must hear about, if any.
pub fn token_problem(path: &Path) -> Option<String> {
    match fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => Some(format!("cannot read token file {}: {e}", path.display())),
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            (mode & 0o077 != 0).then(|| {
                format!(
                    "token file {} has mode {mode:04o}; it must not be readable by group or others (chmod 600)",
                    path.display()
                )
            })
        }
    }
}

/// Read the token, refusing a file others can read.
pub fn read_token(path: &Path) -> Result<String, String> {
    if let Some(problem) = token_problem(path) {
        return Err(problem);
    }
    let text = fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Created(PathBuf),
    Exists(PathBuf),
    Replaced(PathBuf),
    Problem(String),
}

/// Create what is missing: config file, state directory, token. With `force`, replace the token.
pub fn init(config: &Path, state_dir: &Path, force: bool) -> io::Result<Vec<Step>> {
    let mut steps = Vec::new();
    let mut dir_step = Step::Exists(state_dir.to_path_buf());
    if !state_dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(state_dir)?;
        dir_step = Step::Created(state_dir.to_path_buf());
    }
    if config.exists() {
        steps.push(Step::Exists(config.to_path_buf()));
    } else {
        if let Some(dir) = config.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
        }
        // The daemon reads it through the state directory's group; nobody else needs to.
        let group = fs::metadata(state_dir).ok().map(|m| m.gid());
        write_atomic_owned(
            config,
            DEFAULT_CONFIG.as_bytes(),
            0o640,
            group.map(|g| (None, Some(g))),
        )?;
        steps.push(Step::Created(config.to_path_buf()));
    }
    steps.push(dir_step);
    let token = state_dir.join("token");
    let owner = daemon_owner(state_dir);
    if token.exists() && !force {
        steps.push(Step::Exists(token.clone()));
        if let Some(p) = token_problem(&token).or_else(|| owner_problem(&token, state_dir)) {
            steps.push(Step::Problem(p));
        }
    } else {
        let existed = token.exists();
        write_atomic_owned(
            &token,
            format!("{}\n", new_token()?).as_bytes(),
            0o600,
            owner,
        )?;
        steps.push(if existed {
            Step::Replaced(token)
        } else {
            Step::Created(token)
        });
    }
    Ok(steps)
}

/// Always write a new token.
pub fn rotate(state_dir: &Path) -> io::Result<PathBuf> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(state_dir)?;
    let token = state_dir.join("token");
    write_atomic_owned(
        &token,
        format!("{}\n", new_token()?).as_bytes(),
        0o600,
        daemon_owner(state_dir),
    )?;
    Ok(token)
}

/// The user and group the daemon runs as: the owners of its state directory. `None` when they are
/// already ours (nothing to hand over) or the directory cannot be read.
fn daemon_owner(state_dir: &Path) -> Owner {
    let meta = fs::metadata(state_dir).ok()?;
    let me = nix::unistd::geteuid().as_raw();
    (meta.uid() != me).then_some((Some(meta.uid()), Some(meta.gid())))
}

/// A token the daemon cannot read because another user owns it (e.g. created by root before the
/// state directory was handed to the service user).
fn owner_problem(token: &Path, state_dir: &Path) -> Option<String> {
    let (t, d) = (fs::metadata(token).ok()?, fs::metadata(state_dir).ok()?);
    (t.uid() != d.uid()).then(|| {
        format!(
            "token file {} is owned by uid {} but the daemon runs as uid {} (the owner of {}); it cannot read it: run `orchctl rotate-token`",
            token.display(),
            t.uid(),
            d.uid(),
            state_dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_force_replaces_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("etc/orchestrator.toml");
        let state = dir.path().join("state");
        let first = init(&cfg, &state, false).unwrap();
        assert!(
            first.iter().all(|s| matches!(s, Step::Created(_))),
            "{first:?}"
        );
        let t1 = fs::read_to_string(state.join("token")).unwrap();
        assert_eq!(t1.trim().len(), 64);
        assert_eq!(
            fs::metadata(state.join("token"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let second = init(&cfg, &state, false).unwrap();
        assert!(
            second.iter().all(|s| matches!(s, Step::Exists(_))),
            "{second:?}"
        );
        assert_eq!(fs::read_to_string(state.join("token")).unwrap(), t1);
        init(&cfg, &state, true).unwrap();
        assert_ne!(fs::read_to_string(state.join("token")).unwrap(), t1);
        let t2 = fs::read_to_string(state.join("token")).unwrap();
        rotate(&state).unwrap();
        assert_ne!(fs::read_to_string(state.join("token")).unwrap(), t2);
    }

    #[test]
    fn the_token_belongs_to_the_state_directorys_owner_and_the_config_to_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("etc/orchestrator.toml");
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        // As root (the packaged `sudo orchctl init`), hand the state directory to another user the
        // way the package hands it to `orchestrator`; as anyone else, the directory stays ours.
        let root = nix::unistd::geteuid().is_root();
        if root {
            std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        }
        let steps = init(&cfg, &state, false).unwrap();
        assert!(
            !steps.iter().any(|s| matches!(s, Step::Problem(_))),
            "{steps:?}"
        );
        let dir_meta = fs::metadata(&state).unwrap();
        let token = fs::metadata(state.join("token")).unwrap();
        assert_eq!((token.uid(), token.gid()), (dir_meta.uid(), dir_meta.gid()));
        assert_eq!(token.permissions().mode() & 0o777, 0o600);
        let config = fs::metadata(&cfg).unwrap();
        assert_eq!(config.gid(), dir_meta.gid());
        assert_eq!(config.uid(), nix::unistd::geteuid().as_raw());
        assert_eq!(config.permissions().mode() & 0o777, 0o640);
        rotate(&state).unwrap();
        let rotated = fs::metadata(state.join("token")).unwrap();
        assert_eq!(rotated.uid(), dir_meta.uid());
        if root {
            assert_eq!(token.uid(), 65534);
            // A token left owned by root is named as a problem the daemon would hit.
            write_atomic(&state.join("token"), b"abc\n", 0o600).unwrap();
            let again = init(&cfg, &state, false).unwrap();
            assert!(
                again
                    .iter()
                    .any(|s| matches!(s, Step::Problem(p) if p.contains("rotate-token"))),
                "{again:?}"
            );
        }
    }

    #[test]
    fn readable_token_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        write_atomic(&token, b"abc\n", 0o644).unwrap();
        fs::set_permissions(&token, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(token_problem(&token).unwrap().contains("0644"));
        assert!(read_token(&token).is_err());
        fs::set_permissions(&token, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(token_problem(&token), None);
        assert_eq!(read_token(&token).unwrap(), "abc");
    }
}
