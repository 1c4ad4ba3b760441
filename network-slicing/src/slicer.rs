//! One apply: read the kernel, refuse conflicts, run the plan, and undo what
//! this apply created if a step fails (no half-built slice is left).

use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::conflicts::{check, Conflict, HostFacts, UplinkFacts};
use crate::kernel::{Kernel, KernelError, Link};
use crate::model::Slice;
use crate::names::alias;
use crate::plan::{plan, Action};

/// Why an apply did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum SlicerError {
    /// The slices cannot coexist on this host; nothing was changed.
    #[error("refused, nothing changed: {}", list(.0))]
    Conflicts(Vec<Conflict>),
    /// The kernel state could not be read; nothing was changed.
    #[error("cannot read the kernel's state: {0}")]
    Read(#[source] KernelError),
    /// A step failed; what this apply had created was removed again.
    #[error("{action} failed: {source}; undone: {}", if .undone.is_empty() { "nothing to undo".to_string() } else { .undone.join(", ") })]
    Step {
        /// The step.
        action: String,
        /// The kernel's refusal.
        #[source]
        source: KernelError,
        /// Links removed again.
        undone: Vec<String>,
    },
}

fn list(conflicts: &[Conflict]) -> String {
    conflicts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What an apply changed (empty when the kernel already matched).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Every action taken, in order, as text.
    pub changes: Vec<String>,
}

/// Applies slices to one network namespace.
pub struct Slicer {
    kernel: Kernel,
    capacities: BTreeMap<String, u64>,
}

impl Slicer {
    /// A slicer for `kernel`; `capacities` gives uplinks' capacity in kbit/s
    /// (slices' committed rates on an uplink may not add up to more).
    pub fn new(kernel: Kernel, capacities: BTreeMap<String, u64>) -> Slicer {
        Slicer { kernel, capacities }
    }

    /// Makes the kernel hold exactly `desired` (and no other mecvisor slice).
    #[tracing::instrument(name = "slices_apply", skip_all, fields(slices = desired.len()))]
    pub async fn apply(&self, desired: &[Slice]) -> Result<ApplyReport, SlicerError> {
        let links = self.kernel.links().await.map_err(SlicerError::Read)?;
        let facts = self.host_facts(&links).await?;
        let conflicts = check(desired, &facts);
        if !conflicts.is_empty() {
            return Err(SlicerError::Conflicts(conflicts));
        }
        let actions = plan(desired, &links);
        let mut created: Vec<String> = Vec::new();
        let mut report = ApplyReport::default();
        for action in &actions {
            if let Err(source) = self.run(action, &mut created).await {
                let undone = self.undo(&created).await;
                warn!(%action, error = %source, ?undone, "slice apply failed; undone");
                return Err(SlicerError::Step {
                    action: action.to_string(),
                    source,
                    undone,
                });
            }
            info!(%action, "slice change");
            report.changes.push(action.to_string());
        }
        Ok(report)
    }

    async fn host_facts(&self, links: &[Link]) -> Result<HostFacts, SlicerError> {
        let addresses = self
            .kernel
            .ipv4_addresses()
            .await
            .map_err(SlicerError::Read)?;
        let mut facts = HostFacts::default();
        for link in links {
            if link.is_ours() {
                continue;
            }
            facts.foreign_links.push(link.name.clone());
            let uplink = UplinkFacts {
                addresses: addresses
                    .iter()
                    .filter(|(index, _, _)| *index == link.index)
                    .map(|(_, address, prefix)| (*address, *prefix))
                    .collect(),
                capacity_kbit: self.capacities.get(&link.name).copied(),
            };
            facts.uplinks.insert(link.name.clone(), uplink);
        }
        Ok(facts)
    }

    async fn run(&self, action: &Action, created: &mut Vec<String>) -> Result<(), KernelError> {
        let what = action.to_string();
        match action {
            Action::Delete { name, .. } => {
                let index = self.kernel.index_of(name).await?;
                self.kernel.delete(index, &what).await
            }
            Action::CreateBridge { name, .. } => {
                self.kernel.create_bridge(name).await?;
                created.push(name.clone());
                Ok(())
            }
            Action::CreateVlan {
                name,
                uplink,
                vlan_id,
                ..
            } => {
                let parent = self.kernel.index_of(uplink).await?;
                self.kernel.create_vlan(name, parent, *vlan_id).await?;
                created.push(name.clone());
                Ok(())
            }
            Action::Label { name, slice, role } => {
                let index = self.kernel.index_of(name).await?;
                self.kernel
                    .set_alias(index, &alias(slice, *role), &what)
                    .await
            }
            Action::Attach { name, bridge } => {
                let index = self.kernel.index_of(name).await?;
                let controller = self.kernel.index_of(bridge).await?;
                self.kernel.attach(index, controller, &what).await
            }
            Action::Up { name } => {
                let index = self.kernel.index_of(name).await?;
                self.kernel.set_up(index, &what).await
            }
        }
    }

    /// Deletes the links this apply created, newest first; returns their names.
    async fn undo(&self, created: &[String]) -> Vec<String> {
        let mut undone = Vec::new();
        for name in created.iter().rev() {
            let result = match self.kernel.index_of(name).await {
                Ok(index) => self.kernel.delete(index, &format!("undo {name}")).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => undone.push(name.clone()),
                Err(e) => warn!(link = %name, error = %e, "could not undo"),
            }
        }
        undone
    }
}
