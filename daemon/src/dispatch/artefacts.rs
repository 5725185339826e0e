//! The files a specialist leaves in its artefact directory, listed for `result.artefacts`.

use orchestrator_proto::task::Artefact;
use std::path::Path;

/// Most files listed; a specialist that leaves more gets the first ones (in name order).
pub const MAX_ARTEFACTS: usize = 1000;
/// How deep subdirectories are followed.
const MAX_DEPTH: usize = 8;

/// The media type for a file name, by its extension; `application/octet-stream` when unknown.
pub fn media_type(name: &str) -> &'static str {
    let ext = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
        _ => return "application/octet-stream",
    };
    match ext.as_str() {
        "txt" | "log" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "csv" => "text/csv",
        "diff" | "patch" => "text/x-diff",
        "json" => "application/json",
        "jsonl" | "ndjson" => "application/x-ndjson",
        "xml" => "application/xml",
        "yaml" | "yml" => "application/yaml",
        "toml" => "application/toml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "tar" => "application/x-tar",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "sh" => "text/x-shellscript",
        "py" => "text/x-python",
        "rs" => "text/x-rust",
        "js" => "text/javascript",
        _ => "application/octet-stream",
    }
}

/// Regular files under `dir` (subdirectories followed, symlinks not), in name order. A missing
/// directory lists as empty. An entry that cannot be read (gone between the listing and its
/// look, or a subdirectory that cannot be opened) is left out and logged: the others are kept.
pub fn list(dir: &Path) -> std::io::Result<Vec<Artefact>> {
    let mut out = Vec::new();
    walk(dir, 0, &mut out)?;
    Ok(out)
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<Artefact>) -> std::io::Result<()> {
    let mut entries: Vec<_> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| skipped(dir, e)).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if out.len() >= MAX_ARTEFACTS {
            break;
        }
        let path = entry.path();
        let Some(meta) = skipped(&path, std::fs::symlink_metadata(&path)) else {
            continue;
        };
        if meta.is_dir() && depth < MAX_DEPTH {
            if let Err(e) = walk(&path, depth + 1, out) {
                skipped::<()>(&path, Err(e));
            }
        } else if meta.is_file() {
            let name = entry.file_name().to_string_lossy().into_owned();
            out.push(Artefact {
                path: path.to_string_lossy().into_owned(),
                media_type: media_type(&name).to_string(),
                bytes: meta.len(),
            });
        }
    }
    Ok(())
}

/// `read`'s value, or `None` with a warning that what is at `at` is left out of the artefacts.
fn skipped<T>(at: &Path, read: std::io::Result<T>) -> Option<T> {
    match read {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(path = %at.display(), error = %e, "artefacts: cannot read an entry; it is left out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_by_extension() {
        assert_eq!(media_type("report.md"), "text/markdown");
        assert_eq!(media_type("PLOT.PNG"), "image/png");
        assert_eq!(media_type("changes.patch"), "text/x-diff");
        assert_eq!(media_type("data.tar.gz"), "application/gzip");
        assert_eq!(media_type("Makefile"), "application/octet-stream");
        assert_eq!(media_type(".hidden"), "application/octet-stream");
    }

    #[test]
    fn lists_files_with_sizes_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.json"), "{}").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("a.txt"), "hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let got = list(dir.path()).unwrap();
        let names: Vec<(String, &str, u64)> = got
            .iter()
            .map(|a| {
                let rel = Path::new(&a.path)
                    .strip_prefix(dir.path())
                    .unwrap()
                    .display()
                    .to_string();
                (rel, a.media_type.as_str(), a.bytes)
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("b.json".to_string(), "application/json", 2),
                ("sub/a.txt".to_string(), "text/plain", 5),
            ]
        );
        assert!(list(&dir.path().join("missing")).unwrap().is_empty());
    }
}
