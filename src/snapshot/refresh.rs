//! The refresher: a pingora background service that keeps the snapshot current.
//!
//! It rebuilds when the store's revision moves (polled), on a longer full-resync interval, when
//! the configuration file changes, and when the admin API asks. The proxy service depends on it
//! and starts accepting only after the first snapshot is in place.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::{Builder, Snapshot, SnapshotHandle, StaticEntry};
use crate::config::{Config, RefreshConfig};
use crate::store::{self, StoreConfig};

/// Longest pause between retries while the store is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Editors and Kubernetes replace a file in several steps; wait for them to settle.
const CONFIG_SETTLE: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct Refresher {
    handle: Arc<SnapshotHandle>,
    store: StoreConfig,
    expires_soon_days: i64,
    refresh: RefreshConfig,
    statics: Vec<StaticEntry>,
    /// The configuration file, watched for changes to the static mappings.
    config_path: Option<PathBuf>,
}

impl Refresher {
    pub fn new(handle: Arc<SnapshotHandle>, config: &Config, config_path: Option<PathBuf>) -> Self {
        Self {
            handle,
            store: config.store.clone(),
            expires_soon_days: config.p12.expires_soon_days,
            refresh: config.refresh.clone(),
            statics: config.mappings.clone(),
            config_path,
        }
    }
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let mut state = State {
            handle: Arc::clone(&self.handle),
            statics: self.statics.clone(),
            unverified: BTreeSet::new(),
        };
        let builder = tokio::select! {
            builder = first_snapshot(&self.store, self.expires_soon_days, &mut state) => builder,
            _ = shutdown.changed() => return,
        };
        ready.notify_ready();

        let (config_tx, mut config_rx) = mpsc::channel(1);
        let _watcher = match (&self.config_path, self.refresh.watch_config) {
            (Some(path), true) => watch_file(path, config_tx),
            _ => None,
        };
        let mut poll = tokio::time::interval(Duration::from_secs(self.refresh.poll_seconds));
        let resync = Duration::from_secs(self.refresh.resync_seconds);
        let mut last_full = Instant::now();
        loop {
            let why = tokio::select! {
                _ = poll.tick() => Trigger::Poll,
                Some(()) = config_rx.recv() => Trigger::ConfigFile,
                _ = self.handle.woken() => Trigger::Asked,
                _ = shutdown.changed() => break,
            };
            let rebuild = match why {
                Trigger::Poll if last_full.elapsed() >= resync => true,
                Trigger::Poll => revision_moved(&builder, &self.handle).await,
                Trigger::ConfigFile => {
                    tokio::time::sleep(CONFIG_SETTLE).await;
                    self.config_path
                        .as_deref()
                        .is_some_and(|path| state.reload_statics(path))
                }
                Trigger::Asked => true,
            };
            if rebuild {
                state.rebuild(&builder).await;
                last_full = Instant::now();
            }
        }
        info!("snapshot refresher stopped");
    }
}

enum Trigger {
    Poll,
    ConfigFile,
    Asked,
}

struct State {
    handle: Arc<SnapshotHandle>,
    statics: Vec<StaticEntry>,
    /// Mappings with server verification off, so each is logged when it first appears.
    unverified: BTreeSet<String>,
}

impl State {
    async fn rebuild(&mut self, builder: &Builder) -> bool {
        match builder.build(&self.statics).await {
            Ok(snapshot) => {
                self.report(&snapshot);
                self.handle.publish(Ok(snapshot));
                true
            }
            Err(e) => {
                let cause = std::error::Error::source(&e)
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                warn!(error = %e, %cause, "snapshot rebuild failed; serving the previous one");
                self.handle.publish(Err(format!("{e}: {cause}")));
                false
            }
        }
    }

    fn report(&mut self, snapshot: &Snapshot) {
        for skipped in &snapshot.skipped {
            warn!(
                entry = %skipped.entry,
                account = %skipped.account,
                reason = skipped.reason.as_str(),
                detail = %skipped.detail,
                "mapping skipped"
            );
        }
        let unverified: BTreeSet<String> = snapshot
            .bindings()
            .filter(|b| !b.verify_server)
            .map(|b| format!("{} {} {} {}", b.origin.label(), b.account, b.service, b.url))
            .collect();
        for entry in unverified.difference(&self.unverified) {
            warn!(mapping = %entry, "partner certificate verification is OFF for this mapping");
        }
        self.unverified = unverified;
        info!(
            revision = snapshot.revision,
            mappings = snapshot.len(),
            skipped = snapshot.skipped.len(),
            "snapshot loaded"
        );
    }

    /// Re-reads the configuration file; keeps the old mappings when the new file is invalid.
    fn reload_statics(&mut self, path: &Path) -> bool {
        match Config::load(path) {
            Ok(config) if config.mappings == self.statics => false,
            Ok(config) => {
                let mappings = config.mappings.len();
                info!(config = %path.display(), mappings, "configuration reloaded");
                self.statics = config.mappings;
                true
            }
            Err(problems) => {
                let problems: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
                error!(
                    config = %path.display(),
                    problems = %problems.join("; "),
                    "configuration change refused; keeping the previous mappings"
                );
                false
            }
        }
    }
}

async fn first_snapshot(
    config: &StoreConfig,
    expires_soon_days: i64,
    state: &mut State,
) -> Builder {
    let mut backoff = Duration::from_millis(250);
    let builder = loop {
        match store::open(config).await {
            Ok(store) => {
                state.handle.set_store(Arc::clone(&store));
                break Builder::new(store, expires_soon_days);
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "store could not be opened");
                state.handle.publish(Err(e.to_string()));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    backoff = Duration::from_millis(250);
    while !state.rebuild(&builder).await {
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    builder
}

async fn revision_moved(builder: &Builder, handle: &SnapshotHandle) -> bool {
    match builder.store().revision().await {
        Ok(revision) => revision != handle.load().revision,
        Err(e) => {
            warn!(error = %e, "store revision poll failed; serving the current snapshot");
            handle.publish(Err(e.to_string()));
            false
        }
    }
}

/// Watches the file's directory (Kubernetes swaps a ConfigMap through a symlink in it) and
/// sends one message per burst of changes.
fn watch_file(path: &Path, changed: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = changed.try_send(());
        }
    });
    let mut watcher = match watcher {
        Ok(watcher) => watcher,
        Err(e) => {
            warn!(error = %e, "configuration file cannot be watched; edits need a restart");
            return None;
        }
    };
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        warn!(error = %e, dir = %dir.display(), "configuration directory cannot be watched");
        return None;
    }
    Some(watcher)
}
