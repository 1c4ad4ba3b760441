//! One apply: read the kernel, refuse conflicts, then links (bridges, VLAN
//! links, ifbs), shaping (tc), isolation (nftables), each read back and
//! diffed; if a step fails, undo what this apply created (no half-built
//! slice is left).

use std::collections::BTreeMap;

use tracing::{info, warn};

use crate::conflicts::{check, Conflict, HostFacts, UplinkFacts};
use crate::isolation::{self, IsolationError, NfTables, Ruleset};
use crate::kernel::{Kernel, KernelError, Link};
use crate::model::{Port, Slice};
use crate::names::{alias, link_name, Role};
use crate::plan::{plan, plan_addresses, plan_forwarding, Action};
use crate::shaping::{self, DeviceTc, TcAction};

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
        /// What was removed again.
        undone: Vec<String>,
    },
    /// The isolation rules could not be installed (nftables applies all or
    /// nothing); what this apply had created was removed again.
    #[error("isolation rules: {source}; undone: {}", if .undone.is_empty() { "nothing to undo".to_string() } else { .undone.join(", ") })]
    Isolation {
        /// Why.
        #[source]
        source: IsolationError,
        /// What was removed again.
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
    nft: NfTables,
    capacities: BTreeMap<String, u64>,
}

/// What an apply created so far, to undo on failure.
#[derive(Default)]
struct Created {
    links: Vec<String>,
    tc: Vec<TcAction>,
}

impl Slicer {
    /// A slicer for the namespace `kernel` and `nft` are connected to;
    /// `capacities` gives uplinks' capacity in kbit/s (slices' committed
    /// rates on an uplink may not add up to more, and HTB shares exactly
    /// that much between them).
    pub fn new(kernel: Kernel, nft: NfTables, capacities: BTreeMap<String, u64>) -> Slicer {
        Slicer {
            kernel,
            nft,
            capacities,
        }
    }

    /// Makes the kernel hold exactly `desired` (and no other mecvisor
    /// slice), with no workload port in any slice.
    pub async fn apply(&self, desired: &[Slice]) -> Result<ApplyReport, SlicerError> {
        self.apply_with_ports(desired, &[]).await
    }

    /// Makes the kernel hold exactly `desired` with `ports` in them (each in
    /// its slice's bridge, shaped and opened as it says; any other link in a
    /// mecvisor bridge is let go).
    #[tracing::instrument(name = "slices_apply", skip_all, fields(slices = desired.len(), ports = ports.len()))]
    pub async fn apply_with_ports(
        &self,
        desired: &[Slice],
        ports: &[Port],
    ) -> Result<ApplyReport, SlicerError> {
        let links = self.kernel.links().await.map_err(SlicerError::Read)?;
        let tc = shaping::observe(&self.kernel, &links)
            .await
            .map_err(SlicerError::Read)?;
        let facts = self.host_facts(&links, &tc).await?;
        let conflicts = check(desired, ports, &facts);
        if !conflicts.is_empty() {
            return Err(SlicerError::Conflicts(conflicts));
        }
        let mut created = Created::default();
        let mut report = ApplyReport::default();

        for action in plan(desired, ports, &links) {
            if let Err(source) = self.run(&action, &mut created.links).await {
                return Err(self.failed(action.to_string(), source, &created).await);
            }
            info!(%action, "slice change");
            report.changes.push(action.to_string());
        }

        let links = self.kernel.links().await.map_err(SlicerError::Read)?;
        let addresses = self
            .kernel
            .ipv4_addresses()
            .await
            .map_err(SlicerError::Read)?;
        for action in plan_addresses(desired, &links, &addresses) {
            if let Err(source) = self.run(&action, &mut created.links).await {
                return Err(self.failed(action.to_string(), source, &created).await);
            }
            info!(%action, "slice change");
            report.changes.push(action.to_string());
        }

        let mut forwarding = BTreeMap::new();
        for slice in desired {
            let name = link_name(&slice.name, Role::Bridge);
            if links.iter().any(|l| l.name == name && l.is_ours()) {
                let on = self
                    .kernel
                    .ipv4_forwarding(&name)
                    .map_err(SlicerError::Read)?;
                forwarding.insert(name, on);
            }
        }
        for action in plan_forwarding(desired, &forwarding) {
            if let Err(source) = self.run(&action, &mut created.links).await {
                return Err(self.failed(action.to_string(), source, &created).await);
            }
            info!(%action, "slice change");
            report.changes.push(action.to_string());
        }

        let wanted = shaping::desired(desired, &self.capacities);
        let port_shaping = shaping::desired_ports(ports);
        match shaping::reconcile(&self.kernel, &wanted, &port_shaping, &mut created.tc).await {
            Ok(changes) => report.changes.extend(changes),
            Err((action, source)) => return Err(self.failed(action, source, &created).await),
        }

        let rules = Ruleset::new(desired.iter().map(|s| s.name.as_str()), ports);
        match isolation::apply(&self.nft, &rules) {
            Ok(Some(change)) => report.changes.push(change),
            Ok(None) => {}
            Err(source) => {
                let undone = self.undo(&created).await;
                warn!(error = %source, ?undone, "isolation failed; undone");
                return Err(SlicerError::Isolation { source, undone });
            }
        }
        Ok(report)
    }

    async fn failed(&self, action: String, source: KernelError, created: &Created) -> SlicerError {
        let undone = self.undo(created).await;
        warn!(%action, error = %source, ?undone, "slice apply failed; undone");
        SlicerError::Step {
            action,
            source,
            undone,
        }
    }

    async fn host_facts(
        &self,
        links: &[Link],
        tc: &BTreeMap<String, DeviceTc>,
    ) -> Result<HostFacts, SlicerError> {
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
            let controller = link
                .controller
                .and_then(|c| links.iter().find(|l| l.index == c));
            if let Some(bridge) = controller.filter(|b| !b.is_ours()) {
                facts
                    .in_foreign_bridges
                    .insert(link.name.clone(), bridge.name.clone());
            }
            let uplink = UplinkFacts {
                addresses: addresses
                    .iter()
                    .filter(|(index, _, _)| *index == link.index)
                    .map(|(_, address, prefix)| (*address, *prefix))
                    .collect(),
                capacity_kbit: self.capacities.get(&link.name).copied(),
                foreign_qdisc: tc.get(&link.name).and_then(DeviceTc::foreign_root),
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
            Action::CreateIfb { name, .. } => {
                self.kernel.create_ifb(name).await?;
                created.push(name.clone());
                Ok(())
            }
            Action::Label { name, slice, role } => {
                let index = self.kernel.index_of(name).await?;
                self.kernel
                    .set_alias(index, &alias(slice, *role), &what)
                    .await
            }
            Action::Detach { name, .. } => {
                let index = self.kernel.index_of(name).await?;
                self.kernel.detach(index, &what).await
            }
            Action::Attach { name, bridge } => {
                let index = self.kernel.index_of(name).await?;
                let controller = self.kernel.index_of(bridge).await?;
                self.kernel.attach(index, controller, &what).await
            }
            Action::AddAddress {
                name,
                address,
                prefix,
                ..
            } => {
                let index = self.kernel.index_of(name).await?;
                self.kernel
                    .add_address(index, *address, *prefix, &what)
                    .await
            }
            Action::RemoveAddress {
                name,
                address,
                prefix,
            } => {
                let index = self.kernel.index_of(name).await?;
                self.kernel
                    .remove_address(index, *address, *prefix, &what)
                    .await
            }
            Action::Up { name } => {
                let index = self.kernel.index_of(name).await?;
                self.kernel.set_up(index, &what).await
            }
            Action::SetForwarding { name, on, .. } => {
                self.kernel.set_ipv4_forwarding(name, *on, &what)
            }
        }
    }

    /// Removes what this apply created, newest first: tc objects, then
    /// links. Returns what was removed.
    async fn undo(&self, created: &Created) -> Vec<String> {
        let mut undone = Vec::new();
        for action in created.tc.iter().rev() {
            match shaping::run(&self.kernel, action, &mut Vec::new()).await {
                Ok(()) => undone.push(action.to_string()),
                Err(e) => warn!(%action, error = %e, "could not undo"),
            }
        }
        for name in created.links.iter().rev() {
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
