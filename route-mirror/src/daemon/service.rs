//! systemd integration (Type=notify): READY=1 only once the initial sync is done, a
//! watchdog that pings only while the core loop is alive, and a STATUS= line.
//! Without $NOTIFY_SOCKET every call here is a no-op.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

use crate::shared::Shared;

/// The core loop wakes at least once a second; silence much longer than that means it is
/// stuck, and systemd should restart the daemon.
const CORE_STALL: Duration = Duration::from_secs(20);

pub fn spawn(instances: Vec<Arc<Shared>>) {
    tokio::spawn(async move {
        let watchdog = sd_notify::watchdog_enabled();
        let tick = watchdog.map_or(Duration::from_secs(1), |w| {
            (w / 2).min(Duration::from_secs(1))
        });
        let mut ready = false;
        loop {
            tokio::time::sleep(tick).await;
            let mut synced = true;
            let mut alive = true;
            let mut routes = 0usize;
            let mut sources = Vec::new();
            for shared in &instances {
                let st = shared.status.lock().expect("status lock").clone();
                synced &= st.synced;
                alive &= st.heartbeat.is_some_and(|h| h.elapsed() < CORE_STALL);
                if !sources.contains(&st.source) {
                    sources.push(st.source);
                }
                if st.synced {
                    routes += shared.mirror.read().expect("mirror lock").fib.len();
                }
            }
            let source = sources.join("+");
            let mut states = Vec::new();
            if synced && !ready {
                ready = true;
                states.push(NotifyState::Ready);
            }
            let status = if synced {
                format!(
                    "mirroring {routes} routes in {} namespace(s) ({source} source)",
                    instances.len()
                )
            } else {
                "initial sync".to_string()
            };
            states.push(NotifyState::Status(&status));
            if watchdog.is_some() {
                if alive {
                    states.push(NotifyState::Watchdog);
                } else {
                    warn!("core loop silent for {CORE_STALL:?}: withholding the watchdog ping");
                }
            }
            if let Err(e) = sd_notify::notify(&states) {
                debug!(error = %e, "sd_notify failed");
            }
        }
    });
}

/// Tells systemd the daemon is stopping (or reloading), if it listens.
pub fn notify(state: NotifyState<'_>) {
    let _ = sd_notify::notify(&[state]);
}
