//! Following a file that is edited in place, replaced by a rename (editors, `mv`), or
//! swapped through a symlink (a Kubernetes ConfigMap's `..data`): the directory is
//! watched (inotify through `notify`), so every way of changing the file is seen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::mpsc;

/// How long to wait after a change for the writer to finish before reading the file.
const SETTLE: Duration = Duration::from_millis(100);

/// A watched file: [`changed`](FileWatch::changed) resolves after each change.
#[derive(Debug)]
pub(crate) struct FileWatch {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<()>,
    path: PathBuf,
}

impl FileWatch {
    /// Watches `path` (its directory, which must exist).
    ///
    /// # Errors
    /// When the directory cannot be watched.
    pub(crate) fn new(path: &Path) -> notify::Result<Self> {
        let path = if path.is_absolute() {
            path.to_owned()
        } else {
            std::env::current_dir()?.join(path)
        };
        let directory = path
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_owned);
        let name = path.file_name().map(std::ffi::OsStr::to_owned);
        // One pending notice is enough: the file is read afresh when it is handled.
        let (tx, events) = mpsc::channel(1);
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if event.kind.is_access() {
                    return;
                }
                let ours = event.paths.iter().any(|changed| {
                    let file = changed.file_name();
                    file == name.as_deref()
                        || file.is_some_and(|file| file.to_string_lossy().starts_with(".."))
                });
                if ours {
                    let _ = tx.try_send(());
                }
            })?;
        watcher.watch(&directory, notify::RecursiveMode::NonRecursive)?;
        Ok(Self {
            _watcher: watcher,
            events,
            path,
        })
    }

    /// The watched path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves once the file has changed and the writer has had a moment to finish;
    /// `None` when watching has stopped.
    pub(crate) async fn changed(&mut self) -> Option<()> {
        self.events.recv().await?;
        tokio::time::sleep(SETTLE).await;
        // Changes during the pause are part of this one.
        while self.events.try_recv().is_ok() {}
        Some(())
    }
}
