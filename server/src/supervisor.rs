//! Restarts the server's long-running background tasks (the hub's dispatcher and heartbeat, the
//! sweep) when they panic. Without it a panic ends the task silently: fan-out stops for every
//! room on the node while connections stay open and look healthy.
//!
//! A task ends for good when it returns (its owner was dropped). A panic is logged at `error`
//! with its message, counted in `rtlink_task_restarts_total`, and the task is started again after
//! a short pause (growing to a second if it keeps panicking, so a task that panics on every
//! start does not spin a core). Its start function learns that it is a restart, so the
//! dispatcher can resynchronise what it may have missed.

use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

/// Whether a task runs for the first time or after a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    First,
    Restart,
}

/// Runs the task `start` returns, and again after each panic, until it returns normally or
/// `start` returns `None` (what the task served is gone).
pub fn supervise<F, Fut>(name: &'static str, metrics: Arc<Metrics>, mut start: F)
where
    F: FnMut(Start) -> Option<Fut> + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut how = Start::First;
        let mut pause = Duration::from_millis(50);
        loop {
            let Some(task) = start(how) else { return };
            let err = match tokio::spawn(task).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => e,
                Err(_) => return, // cancelled: the runtime is shutting down
            };
            let panic = err.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| String::from("(no message)"));
            metrics.task_restarts.fetch_add(1, Relaxed);
            tracing::error!(task = name, panic = %message, "background task panicked; restarting it");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
            how = Start::Restart;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_told_so() {
        let metrics = Arc::new(Metrics::default());
        let starts = Arc::new(AtomicU32::new(0));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let mut done_tx = Some(done_tx);
        let counter = starts.clone();
        supervise("test", metrics.clone(), move |how| {
            let n = counter.fetch_add(1, Relaxed);
            assert_eq!(how == Start::Restart, n > 0);
            let done = if n == 2 { done_tx.take() } else { None };
            Some(async move {
                match done {
                    Some(tx) => {
                        let _ = tx.send(());
                    }
                    None => panic!("boom {n}"),
                }
            })
        });
        tokio::time::timeout(Duration::from_secs(10), done_rx)
            .await
            .expect("restarted twice")
            .expect("sent");
        assert_eq!(metrics.task_restarts.load(Relaxed), 2);
        assert_eq!(starts.load(Relaxed), 3);
    }
}
