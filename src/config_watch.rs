//! Config that reloads itself (`server.watch_config`): the config file
//! and the key-set files it names are looked at every
//! `server.watch_interval`; when one changed, and then stayed the same for
//! one more look (an editor or the kubelet writing in steps is not caught
//! half-way), the config is reloaded exactly as SIGHUP and `POST
//! /config/reload` reload it (`reload::reload`: full validation; a refused
//! file is logged, counted in `tollgate_config_reloads_total{result=
//! "error"}` and shown in `/health`, and the old config keeps serving), or
//! the key set is re-read at once (`KeyRing::reread`: a set that does not
//! parse keeps the last good keys and shows in `/health` as a failed
//! fetch does). A refused file is not tried again until it changes.
//!
//! The certificate, key, CA and CRL files the config names (listeners and
//! upstream pools) are watched with the config file: a reload is what
//! re-reads them, so a certificate manager renewing one in place (or a
//! Secret volume swapping its `..data`) is picked up with no signal. A
//! certificate and its key written one after the other may be caught in
//! between: that reload is refused (they do not belong together) and the
//! next change, the second file, reloads again.
//!
//! What a file "is" is its resolved path, size, modification time and
//! inode: a Kubernetes ConfigMap update swaps a `..data` symlink to a new
//! directory without touching the file's own name, and the resolved path
//! (and inode) changes with it; an editor's rename-over changes the inode.
//!
//! Polling rather than inotify: a few `stat`s a second, and it follows
//! symlink swaps, renames and network file systems alike. Hand-written:
//! Pingora has no file watch.

use crate::state::{AppState, ConfigSource};
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What one watched file is now: where its name resolves, and its size,
/// modification time and inode; or why it cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileState {
    Present {
        resolved: PathBuf,
        len: u64,
        modified: Option<SystemTime>,
        inode: u64,
    },
    Missing(String),
}

impl FileState {
    fn of(path: &Path) -> Self {
        let resolved = match std::fs::canonicalize(path) {
            Ok(p) => p,
            Err(e) => return FileState::Missing(e.kind().to_string()),
        };
        match std::fs::metadata(&resolved) {
            Ok(meta) => FileState::Present {
                resolved,
                len: meta.len(),
                modified: meta.modified().ok(),
                inode: meta.ino(),
            },
            Err(e) => FileState::Missing(e.kind().to_string()),
        }
    }
}

/// One watched file: what it was when last acted on (`served`) and at the
/// last look (`seen`).
struct Watched {
    path: PathBuf,
    served: FileState,
    seen: FileState,
}

impl Watched {
    fn new(path: PathBuf) -> Self {
        let now = FileState::of(&path);
        Self {
            path,
            served: now.clone(),
            seen: now,
        }
    }

    /// Looks again: true when the file differs from what was acted on and
    /// has stayed the same since the last look (then it counts as acted
    /// on: a refused file is not tried again until it changes).
    fn changed_and_settled(&mut self) -> bool {
        let now = FileState::of(&self.path);
        let settled = now == self.seen;
        self.seen = now.clone();
        if now == self.served || !settled {
            return false;
        }
        self.served = now;
        true
    }
}

/// Watches the config file of `state` and the certificate files the live
/// config names (a change reloads it) and the key-set files it names (a
/// change re-reads that key set at once, as its `refresh` would).
pub struct ConfigWatch {
    state: Arc<AppState>,
}

impl ConfigWatch {
    /// A watch over `state`'s files; it looks only while the live config
    /// has `server.watch_config` (a reload may turn it on or off).
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    /// The config file and the certificate files of the config now
    /// serving: a change to any of them reloads.
    fn reloading_files(&self, config: &Path) -> Vec<Watched> {
        let certificates = self.state.gateway().config.certificate_files();
        std::iter::once(config.to_path_buf())
            .chain(certificates)
            .map(Watched::new)
            .collect()
    }

    fn key_files(&self) -> Vec<Watched> {
        self.state
            .keys
            .files()
            .into_iter()
            .map(Watched::new)
            .collect()
    }
}

#[async_trait]
impl BackgroundService for ConfigWatch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let ConfigSource::File(path) = self.state.source.clone() else {
            return; // the built-in demo config has no file
        };
        // The files as they were when the watch (last) turned on: what
        // serves then is the baseline (at start, what was loaded). `None`
        // while off: no `stat`s.
        let baseline = || (self.reloading_files(&path), self.key_files());
        let mut watching = self
            .state
            .gateway()
            .config
            .server
            .watch_config
            .then(baseline);
        loop {
            let (on, interval) = {
                let server = &self.state.gateway().config.server;
                (server.watch_config, server.watch_interval)
            };
            let pause = if on { interval } else { Duration::from_secs(1) };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
            if !on {
                watching = None;
                continue;
            }
            let (reloading, keys) = watching.get_or_insert_with(baseline);
            for key_set in keys.iter_mut() {
                if key_set.changed_and_settled() {
                    log::info!(
                        "{}: changed on disk, re-reading the key set",
                        key_set.path.display()
                    );
                    self.state.keys.reread(&key_set.path);
                }
            }
            // Every file is looked at (no short cut): each keeps its own
            // last look.
            let changed: Vec<&Path> = reloading
                .iter_mut()
                .filter_map(|f| f.changed_and_settled().then_some(f.path.as_path()))
                .collect();
            let Some(first) = changed.first() else {
                continue;
            };
            log::info!("{}: changed on disk, reloading", first.display());
            let state = self.state.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || crate::reload::reload(&state)).await
            {
                log::error!("config reload task failed: {e}");
            }
            // The key sets and certificates to watch are the ones the
            // config now serving names.
            *keys = self.key_files();
            // (A file still watched keeps what was last acted on: one
            // caught half-written is reloaded again once it settles.)
            let mut before = std::mem::take(reloading);
            *reloading = self
                .reloading_files(&path)
                .into_iter()
                .map(
                    |fresh| match before.iter().position(|w| w.path == fresh.path) {
                        Some(at) => before.swap_remove(at),
                        None => fresh,
                    },
                )
                .collect();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_told_apart_by_content_size_rename_and_symlink_swap() {
        let dir = std::env::temp_dir().join(format!("tollgate-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("v1")).expect("dir");
        std::fs::create_dir_all(dir.join("v2")).expect("dir");
        std::fs::write(dir.join("v1/c.yaml"), "a: 1\n").expect("write");
        std::fs::write(dir.join("v2/c.yaml"), "a: 2\n").expect("write");
        std::os::unix::fs::symlink("v1", dir.join("data")).expect("symlink");
        std::os::unix::fs::symlink("data/c.yaml", dir.join("c.yaml")).expect("symlink");
        let name = dir.join("c.yaml");
        let before = FileState::of(&name);
        assert_eq!(before, FileState::of(&name), "stable while nothing changes");
        // The ConfigMap swap: a new symlink renamed over `data`.
        std::os::unix::fs::symlink("v2", dir.join("data.tmp")).expect("symlink");
        std::fs::rename(dir.join("data.tmp"), dir.join("data")).expect("swap");
        let swapped = FileState::of(&name);
        assert_ne!(before, swapped, "the swap is seen");
        std::fs::write(dir.join("v2/c.yaml"), "a: 22\n").expect("write");
        assert_ne!(swapped, FileState::of(&name), "a longer file is seen");
        std::fs::remove_file(dir.join("v2/c.yaml")).expect("remove");
        assert!(matches!(FileState::of(&name), FileState::Missing(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
