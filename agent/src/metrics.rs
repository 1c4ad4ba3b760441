//! Agent self-metrics, enqueued as Metrics reports on a timer.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mecvisor_protocol::{AgentMetrics, ReportBody};
use tokio::sync::{watch, Notify};
use tracing::{debug, warn};

use crate::outbox;
use crate::store::Store;

/// Resident set size of this process in bytes, from `/proc/self/statm`
/// (resident pages times the page size); 0 when unavailable.
pub fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .unwrap_or(0);
    pages * page_size()
}

/// The kernel's page size, from the `AT_PAGESZ` entry of `/proc/self/auxv`
/// (pairs of native words); 4096 when unavailable.
fn page_size() -> u64 {
    const AT_PAGESZ: usize = 6;
    const WORD: usize = std::mem::size_of::<usize>();
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return 4096;
    };
    let words: Vec<usize> = auxv
        .chunks_exact(WORD)
        .filter_map(|c| c.try_into().ok().map(usize::from_ne_bytes))
        .collect();
    words
        .chunks_exact(2)
        .find(|pair| pair[0] == AT_PAGESZ)
        .map_or(4096, |pair| pair[1] as u64)
}

/// Every `interval`, enqueues rss, outbox depth and uptime until shutdown.
pub async fn run(
    store: Rc<RefCell<Store>>,
    outbox_ready: Rc<Notify>,
    interval: Duration,
    started: Instant,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        let mut store = store.borrow_mut();
        let depth = match store.outbox_depth() {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "cannot count the outbox");
                continue;
            }
        };
        let metrics = AgentMetrics {
            rss_bytes: rss_bytes(),
            outbox_depth: depth,
            uptime_s: started.elapsed().as_secs(),
        };
        match outbox::push_report(&mut store, &ReportBody::Metrics(metrics.clone())) {
            Ok(e) => {
                debug!(
                    seq = e.seq,
                    rss = metrics.rss_bytes,
                    depth,
                    "metrics queued"
                );
                outbox_ready.notify_one();
            }
            Err(e) => warn!(error = %e, "metrics not queued"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn page_size_is_a_power_of_two() {
        let p = super::page_size();
        assert!(p >= 4096 && p.is_power_of_two(), "{p}");
    }

    #[test]
    fn rss_is_plausible() {
        let rss = super::rss_bytes();
        assert!(rss > 100 * 1024 && rss < 8 * 1024 * 1024 * 1024, "{rss}");
    }
}
