//! A cloneable "stop now" signal shared by every running pipeline.

use tokio::sync::watch;

/// Fires the [`Shutdown`] signal; dropping it never fires it.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Resolves once the matching [`ShutdownTrigger`] fires.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A new trigger and its signal.
pub fn shutdown() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Signals every clone of the [`Shutdown`].
    pub fn fire(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Whether the signal has fired.
    pub fn is_fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits for the signal; waits forever if the trigger was dropped
    /// without firing.
    pub async fn wait(mut self) {
        if self.0.wait_for(|fired| *fired).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::shutdown;

    #[tokio::test]
    async fn fires_every_clone_and_dropped_trigger_never_fires() {
        let (trigger, signal) = shutdown();
        let other = signal.clone();
        assert!(!signal.is_fired());
        trigger.fire();
        signal.wait().await;
        assert!(other.is_fired());

        let (trigger, signal) = shutdown();
        drop(trigger);
        let waited = tokio::time::timeout(Duration::from_millis(20), signal.wait()).await;
        assert!(waited.is_err());
    }
}
