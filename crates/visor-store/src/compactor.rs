//! Periodic compaction of the store's history, the way kube-apiserver does it.
//!
//! Every interval the compactor remembers the store's current revision and compacts to the
//! revision it remembered one interval earlier. History is thus kept for between one and two
//! intervals: long enough for watchers that reconnect within an interval to resume where they
//! left off, short enough that the history does not grow without bound.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::{DynStore, Revision};

/// Starts the compactor on the current runtime. It runs until the returned handle is aborted.
///
/// Failures (the store being briefly unavailable, say) are logged and retried on the next tick;
/// compaction is idempotent, so a missed round only keeps a little more history.
pub fn spawn(store: DynStore, interval: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut remembered: Option<Revision> = None;
        loop {
            // The first tick fires at once: it only remembers a revision.
            ticker.tick().await;
            if let Some(revision) = remembered.take()
                && revision > 0
            {
                match store.compact(revision).await {
                    Ok(()) => tracing::debug!(revision, "compacted store"),
                    Err(error) => tracing::warn!(revision, %error, "store compaction failed"),
                }
            }
            match store.current_revision().await {
                Ok(revision) => remembered = Some(revision),
                Err(error) => tracing::warn!(%error, "compactor could not read the store revision"),
            }
        }
    })
}
