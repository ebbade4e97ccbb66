//! A second, single-threaded runtime on a thread of its own, for the webhook listeners.
//!
//! The sidecar serves payments on one thread by default. A webhook flood (a provider redelivering a
//! backlog, or a hostile client) would share that thread with the payments and slow them down: reading
//! and verifying bodies, hashing, delivering to the shop. The webhook listeners run here instead, so
//! the operating system schedules the two kinds of work apart, and a flood costs payments at most a
//! share of a core rather than their place in one queue. Nothing is shared between the two but the
//! metrics, the audit queue, the buffer budget and the dedupe tables, which are all thread-safe and
//! cheap to touch.

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The runtime and its thread; both end when this is dropped or stopped.
pub struct SideRuntime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SideRuntime {
    /// Starts the runtime on a thread called `name`.
    pub fn start(name: &str) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Ends on `stop`, or when the sender is dropped with this value.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Dropped here, outside any async context: its tasks are cancelled.
                drop(runtime);
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The runtime's handle, to spawn on it.
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Stops the runtime (its remaining tasks are cancelled) and waits for its thread.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for SideRuntime {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_run_on_their_own_thread_and_stop_with_it() {
        let side = SideRuntime::start("side-test").unwrap();
        let here = std::thread::current().id();
        let there = side
            .handle()
            .spawn(async { std::thread::current().id() })
            .await
            .unwrap();
        assert_ne!(here, there);
        let forever = side.handle().spawn(std::future::pending::<()>());
        side.stop().await;
        assert!(forever.await.unwrap_err().is_cancelled());
    }
}
