//! Manifests: the YAML documents operators apply. Parsing refuses unknown
//! fields and reports YAML line numbers; validation lists every problem.

use std::collections::{BTreeMap, BTreeSet};

use mecvisor_protocol::validate::check_name;
use mecvisor_protocol::{DeviceSpec, SliceSpec, WorkloadSpec};
use serde::{Deserialize, Serialize};

/// A manifest as operators write it (see the contract and examples/fleet.yaml).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest name (same rules as device names).
    pub name: String,
    /// Devices this manifest applies to by name.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Labels a device must all have (from its hello) to match.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Network slices.
    #[serde(default)]
    pub slices: Vec<SliceSpec>,
    /// Containers and VMs.
    #[serde(default)]
    pub workloads: Vec<WorkloadSpec>,
}

/// Why a manifest was refused; every problem is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid manifest: {}", .problems.join("; "))]
pub struct ManifestError {
    /// Every problem, as `where: what`.
    pub problems: Vec<String>,
}

/// Keys a workload may have; serde's `flatten` on `WorkloadSpec` disables
/// `deny_unknown_fields`, so they are checked here.
const WORKLOAD_KEYS: [&str; 9] = [
    "name",
    "container",
    "vm",
    "slice",
    "resources",
    "restart",
    "allow",
    "port_qos",
    "address",
];

impl Manifest {
    /// Parses and validates manifest YAML.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let value: serde_norway::Value = serde_norway::from_str(text).map_err(yaml_error)?;
        let mut problems = unknown_workload_keys(&value);
        let manifest: Manifest = match serde_norway::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                problems.extend(yaml_error(e).problems);
                return Err(ManifestError { problems });
            }
        };
        problems.extend(manifest.problems());
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(ManifestError { problems })
        }
    }

    /// The objects of this manifest as a device spec (not validated).
    pub fn spec(&self) -> DeviceSpec {
        DeviceSpec {
            slices: self.slices.clone(),
            workloads: self.workloads.clone(),
        }
    }

    /// Whether this manifest applies to a device with these labels.
    pub fn matches(&self, device: &str, labels: &BTreeMap<String, String>) -> bool {
        self.devices.iter().any(|d| d == device)
            || (!self.selector.is_empty()
                && self
                    .selector
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|have| have == v)))
    }

    /// Every problem of an already-parsed manifest, prefixed with its name.
    pub fn problems(&self) -> Vec<String> {
        let prefix = format!("manifest {:?}", self.name);
        let mut out = Vec::new();
        if let Err(e) = check_name(&self.name) {
            out.push(format!("{prefix}: name: {e}"));
        }
        let mut seen = BTreeSet::new();
        for (i, device) in self.devices.iter().enumerate() {
            if let Err(e) = check_name(device) {
                out.push(format!("{prefix}: devices[{i}]: {e}"));
            }
            if !seen.insert(device) {
                out.push(format!(
                    "{prefix}: devices[{i}]: device {device:?} is listed twice"
                ));
            }
        }
        for key in self.selector.keys() {
            if key.is_empty() {
                out.push(format!("{prefix}: selector: label keys must not be empty"));
            }
        }
        if self.devices.is_empty() && self.selector.is_empty() {
            out.push(format!(
                "{prefix}: give `devices` or a `selector`; this manifest matches no device"
            ));
        }
        if let Err(invalid) = self.spec().validate() {
            // A workload may use (or allow traffic from) a slice defined by
            // another manifest for the same device; that is checked on the
            // composed spec instead.
            for p in invalid.0 {
                let names_a_slice = p.path.ends_with(".slice") || p.path.ends_with(".from_slice");
                if names_a_slice && p.message.starts_with("unknown slice") {
                    continue;
                }
                out.push(format!("{prefix}: {p}"));
            }
        }
        out
    }
}

fn yaml_error(e: serde_norway::Error) -> ManifestError {
    let text = match e.location() {
        Some(loc) if !e.to_string().contains("line ") => {
            format!("yaml: line {} column {}: {e}", loc.line(), loc.column())
        }
        _ => format!("yaml: {e}"),
    };
    ManifestError {
        problems: vec![text],
    }
}

fn unknown_workload_keys(value: &serde_norway::Value) -> Vec<String> {
    let Some(workloads) = value.get("workloads").and_then(|w| w.as_sequence()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, w) in workloads.iter().enumerate() {
        let Some(map) = w.as_mapping() else { continue };
        for key in map.keys() {
            let name = key.as_str().unwrap_or("<non-string key>");
            if !WORKLOAD_KEYS.contains(&name) {
                out.push(format!(
                    "workloads[{i}]: unknown field {name:?}, expected one of {}",
                    WORKLOAD_KEYS.join(", ")
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
name: base
devices: [edge-1]
slices:
  - name: video
    vlan_id: 100
    uplink: eth0
    qos: {tier: gold}
    subnet: 10.100.0.0/24
workloads:
  - name: cam
    container:
      image: registry.local/cam@sha256:0000000000000000000000000000000000000000000000000000000000000000
    slice: video
    resources: {memory_mib: 64}
    restart: on-failure
";

    #[test]
    fn parses_a_good_manifest() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.name, "base");
        assert_eq!(m.slices[0].vlan_id, 100);
        assert!(m.matches("edge-1", &BTreeMap::new()));
        assert!(!m.matches("edge-2", &BTreeMap::new()));
    }

    #[test]
    fn unknown_top_level_field_is_refused_with_line() {
        let err = Manifest::parse(&format!("{GOOD}\nbogus: 1\n")).unwrap_err();
        let text = err.problems.join("\n");
        assert!(text.contains("bogus"), "{text}");
        assert!(text.contains("line"), "{text}");
    }

    #[test]
    fn unknown_workload_field_is_refused() {
        let text = GOOD.replace(
            "restart: on-failure",
            "restart: on-failure\n    colour: red",
        );
        let err = Manifest::parse(&text).unwrap_err();
        assert!(err.problems.join("\n").contains("colour"), "{err}");
    }

    #[test]
    fn every_problem_is_listed_with_manifest_prefix() {
        let text = GOOD
            .replace("vlan_id: 100", "vlan_id: 5000")
            .replace("memory_mib: 64", "memory_mib: 0")
            .replace("@sha256:0000", "@sha256:zz00");
        let err = Manifest::parse(&text).unwrap_err();
        assert_eq!(err.problems.len(), 3, "{:?}", err.problems);
        assert!(err
            .problems
            .iter()
            .all(|p| p.starts_with("manifest \"base\": ")));
        assert!(err.problems.iter().any(|p| p.contains("slices[0].vlan_id")));
        assert!(err
            .problems
            .iter()
            .any(|p| p.contains("workloads[0].resources.memory_mib")));
        assert!(err
            .problems
            .iter()
            .any(|p| p.contains("workloads[0].container.image")));
    }

    #[test]
    fn manifest_without_target_is_refused() {
        let err = Manifest::parse("name: lonely\n").unwrap_err();
        assert!(err.problems[0].contains("matches no device"), "{err}");
    }

    #[test]
    fn selector_matching_needs_every_label() {
        let m = Manifest::parse("name: s\nselector: {site: lab, tier: a}\n").unwrap();
        let mut labels = BTreeMap::new();
        labels.insert("site".to_string(), "lab".to_string());
        assert!(!m.matches("x", &labels));
        labels.insert("tier".to_string(), "a".to_string());
        assert!(m.matches("x", &labels));
    }

    #[test]
    fn broken_yaml_reports_its_line() {
        let err = Manifest::parse("name: x\ndevices: [a\n  b: c\n").unwrap_err();
        assert!(err.problems[0].contains("line"), "{err}");
    }
}
