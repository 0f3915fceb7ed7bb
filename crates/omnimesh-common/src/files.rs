//! Files that hold secrets (master keys, signing keys).

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes a new 0600 file that appears whole or not at all: the bytes go to a private
/// temporary file first, which is then hard-linked into place. Fails with
/// `AlreadyExists` when the file exists (another process got there first), so a
/// concurrent reader never sees a partial secret and two writers never both win.
///
/// # Errors
/// `AlreadyExists`, or any I/O error.
pub fn write_private_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let temporary = parent.join(format!(
        ".{}.{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::hard_link(&temporary, path)
    })();
    let _ = std::fs::remove_file(&temporary);
    written
}

/// Reads the secret at `path`, creating it with `generate()` first when it is missing;
/// when several processes start at once, all of them end up with the same bytes.
///
/// # Errors
/// When the file cannot be read or written.
pub fn read_or_create_private(
    path: &Path,
    generate: impl FnOnce() -> std::io::Result<Vec<u8>>,
) -> std::io::Result<(Vec<u8>, bool)> {
    match std::fs::read(path) {
        Ok(bytes) => Ok((bytes, false)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let bytes = generate()?;
            match write_private_new(path, &bytes) {
                Ok(()) => Ok((bytes, true)),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    Ok((std::fs::read(path)?, false))
                }
                Err(error) => Err(error),
            }
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn concurrent_creators_agree_and_leave_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/secret");
        let results: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0u8..8)
                .map(|n| {
                    let path = &path;
                    scope.spawn(move || read_or_create_private(path, || Ok(vec![n; 32])).unwrap().0)
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(results.windows(2).all(|pair| pair[0] == pair[1]));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        assert_eq!(
            write_private_new(&path, b"x").unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
    }
}
