//! What the server asks of the guest's system: its uptime and powering off.
//! Behind [`System`] so tests run the server without touching the host.

use std::io;
use std::time::Duration;

/// The guest system the server reports on and powers off.
pub trait System: Send + Sync + 'static {
    /// Time since the guest booted.
    fn uptime(&self) -> io::Result<Duration>;
    /// Syncs and powers off; returns only when that failed, with why.
    fn power_off(&self) -> io::Error;
}

/// The real guest: `/proc/uptime` and `reboot(RB_POWER_OFF)`.
pub struct Linux;

impl System for Linux {
    fn uptime(&self) -> io::Result<Duration> {
        parse_uptime(&std::fs::read_to_string("/proc/uptime")?)
    }

    fn power_off(&self) -> io::Error {
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
        // SAFETY: reboot with RB_POWER_OFF takes no pointers; it either
        // stops the machine or returns -1 with errno set.
        unsafe { libc::reboot(libc::RB_POWER_OFF) };
        io::Error::last_os_error()
    }
}

/// Reads the first field of `/proc/uptime` ("12345.67 23456.78").
fn parse_uptime(text: &str) -> io::Result<Duration> {
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| io::Error::other(format!("unreadable /proc/uptime: {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_uptime() {
        assert_eq!(
            parse_uptime("350735.47 234388.90\n").expect("parse"),
            Duration::from_secs_f64(350735.47)
        );
        for bad in ["", "x 1", "-1 2", "inf 0"] {
            assert!(parse_uptime(bad).is_err(), "{bad:?}");
        }
        // This host's own /proc/uptime has the same format.
        assert!(Linux.uptime().expect("uptime") > Duration::ZERO);
    }
}
