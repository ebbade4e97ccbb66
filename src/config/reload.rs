//! Watches the config file and says when it may have changed.
//!
//! The folder is watched rather than the file, because editors and config-management tools replace a
//! file by renaming a new one over it, which ends a watch on the old inode. Events are coalesced: a
//! burst of writes yields one signal, and the consumer reloads once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Keeps the watch alive; dropping it stops the watch.
pub struct FileWatch {
    _watcher: RecommendedWatcher,
}

/// How long to wait for a burst of file events to settle before reloading.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Starts watching `file`. Each change (write, create, rename onto it) sends `()` on the returned channel.
pub fn watch(file: &Path) -> notify::Result<(FileWatch, mpsc::Receiver<()>)> {
    let (tx, rx) = mpsc::channel(1);
    let file: PathBuf = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if event.kind.is_access() {
            return;
        }
        let ours = event
            .paths
            .iter()
            .any(|p| p.file_name().map(|n| n.to_os_string()) == name);
        if ours {
            // A full channel already holds a pending signal: this change is covered by it.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    Ok((FileWatch { _watcher: watcher }, rx))
}
