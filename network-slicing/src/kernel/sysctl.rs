//! Per-link IPv4 settings that netlink does not set piecemeal, through
//! `/proc/sys/net/ipv4/conf/<link>/`. /proc/sys/net shows the network
//! namespace of the thread that opens the file, so for a [`Kernel`]
//! connected to another namespace the file is opened from a helper thread
//! inside that namespace.

use std::path::PathBuf;

use super::{Kernel, KernelError};

impl Kernel {
    /// Whether IPv4 packets arriving on link `name` may be routed on
    /// (`net.ipv4.conf.<name>.forwarding`).
    pub fn ipv4_forwarding(&self, name: &str) -> Result<bool, KernelError> {
        let path = forwarding_path(name)?;
        let text = self
            .in_namespace(|| std::fs::read_to_string(&path))?
            .map_err(|source| KernelError::Sysctl {
                what: format!("read {}", path.display()),
                source,
            })?;
        Ok(text.trim() != "0")
    }

    /// Lets IPv4 packets arriving on link `name` be routed on, or not.
    pub fn set_ipv4_forwarding(&self, name: &str, on: bool, what: &str) -> Result<(), KernelError> {
        let path = forwarding_path(name)?;
        self.in_namespace(|| std::fs::write(&path, if on { "1" } else { "0" }))?
            .map_err(|source| KernelError::Sysctl {
                what: what.to_string(),
                source,
            })
    }

    fn in_namespace<T: Send>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send,
    ) -> Result<std::io::Result<T>, KernelError> {
        match &self.netns {
            None => Ok(f()),
            Some(netns) => Ok(crate::netns::open_in(netns, f)?),
        }
    }
}

/// The sysctl file of `name`; refuses names that are not a single path
/// component (link names never are).
fn forwarding_path(name: &str) -> Result<PathBuf, KernelError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(KernelError::NoSuchLink(name.to_string()));
    }
    Ok(PathBuf::from("/proc/sys/net/ipv4/conf")
        .join(name)
        .join("forwarding"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_link_names_make_a_path() {
        assert_eq!(
            forwarding_path("mvb0a1b2c3d").expect("path"),
            PathBuf::from("/proc/sys/net/ipv4/conf/mvb0a1b2c3d/forwarding")
        );
        for bad in ["", ".", "..", "../all", "a/b"] {
            assert!(forwarding_path(bad).is_err(), "{bad:?}");
        }
    }
}
