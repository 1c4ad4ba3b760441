//! The runtime of a kind this agent cannot run (switched off in the
//! config, a missing OCI runtime, no /dev/kvm), and the artifact store of
//! an agent whose content store cannot open. Applying fails with
//! [`RuntimeError::Unsupported`] and the reason, so the reconciler reports
//! the objects `unsupported` and fetches nothing for them; removing
//! succeeds (nothing of the kind can exist here).

use super::{ArtifactStore, ObjectSpec, Observed, Runtime, RuntimeError, RuntimeFuture};

/// A kind (or the artifact store) that is not available, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    reason: String,
}

impl Unsupported {
    /// Unsupported for `reason` (what an operator reads).
    pub fn new(reason: impl Into<String>) -> Unsupported {
        Unsupported {
            reason: reason.into(),
        }
    }

    fn refusal(&self) -> RuntimeError {
        RuntimeError::Unsupported {
            reason: self.reason.clone(),
        }
    }
}

impl Runtime for Unsupported {
    fn unsupported(&self) -> Option<&str> {
        Some(&self.reason)
    }

    fn apply<'a>(&'a mut self, _spec: &'a ObjectSpec) -> RuntimeFuture<'a, ()> {
        let refusal = self.refusal();
        Box::pin(async move { Err(refusal) })
    }

    fn remove<'a>(&'a mut self, _name: &'a str) -> RuntimeFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn observe<'a>(&'a mut self, _name: &'a str) -> RuntimeFuture<'a, Observed> {
        Box::pin(async { Ok(Observed::Missing) })
    }
}

impl ArtifactStore for Unsupported {
    fn unsupported(&self) -> Option<&str> {
        Some(&self.reason)
    }

    fn ensure<'a>(&'a mut self, _reference: &'a str) -> RuntimeFuture<'a, ()> {
        let refusal = self.refusal();
        Box::pin(async move { Err(refusal) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mecvisor_protocol::{QosSpec, SliceSpec};

    #[tokio::test(flavor = "current_thread")]
    async fn refuses_to_apply_and_removes_nothing() {
        let mut runtime = Unsupported::new("network slicing is off");
        let spec = ObjectSpec::Slice(SliceSpec {
            name: "net".into(),
            vlan_id: 10,
            uplink: "eth0".into(),
            qos: QosSpec::default(),
            subnet: None,
            gateway: None,
        });
        assert_eq!(
            Runtime::unsupported(&runtime),
            Some("network slicing is off")
        );
        let err = runtime.apply(&spec).await.unwrap_err();
        assert!(err.is_unsupported());
        assert_eq!(err.to_string(), "network slicing is off");
        runtime.remove("net").await.unwrap();
        assert_eq!(runtime.observe("net").await.unwrap(), Observed::Missing);
    }
}
