//! Composition of a device's desired spec from the manifests that match it,
//! and the generation rule (bump only when the content hash changes).

use std::collections::{BTreeMap, HashMap};

use mecvisor_protocol::DeviceSpec;

use crate::manifest::Manifest;

/// The spec of one device and the manifests it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Composed {
    /// Concatenated slices and workloads, in manifest-name order.
    pub spec: DeviceSpec,
    /// Names of the manifests that matched, in order.
    pub manifests: Vec<String>,
}

/// Composes the spec of `device` from `manifests` and validates it.
///
/// Errors list every problem, each prefixed with the device name: objects
/// defined by two manifests (naming both) and `DeviceSpec::validate` problems.
pub fn compose(
    device: &str,
    labels: &BTreeMap<String, String>,
    manifests: &[Manifest],
) -> Result<Composed, Vec<String>> {
    let mut sorted: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.matches(device, labels))
        .collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut spec = DeviceSpec::default();
    let mut problems = Vec::new();
    let mut slice_owner: HashMap<&str, &str> = HashMap::new();
    let mut workload_owner: HashMap<&str, &str> = HashMap::new();
    for m in &sorted {
        for s in &m.slices {
            if let Some(other) = slice_owner.insert(&s.name, &m.name) {
                if other != m.name {
                    problems.push(format!(
                        "device {device:?}: slice {:?} is defined by both manifest {other:?} and manifest {:?}",
                        s.name, m.name
                    ));
                }
            }
        }
        for w in &m.workloads {
            if let Some(other) = workload_owner.insert(&w.name, &m.name) {
                if other != m.name {
                    problems.push(format!(
                        "device {device:?}: workload {:?} is defined by both manifest {other:?} and manifest {:?}",
                        w.name, m.name
                    ));
                }
            }
        }
        spec.slices.extend(m.slices.iter().cloned());
        spec.workloads.extend(m.workloads.iter().cloned());
    }
    if problems.is_empty() {
        if let Err(invalid) = spec.validate() {
            problems.extend(invalid.0.iter().map(|p| format!("device {device:?}: {p}")));
        }
    }
    if problems.is_empty() {
        Ok(Composed {
            spec,
            manifests: sorted.iter().map(|m| m.name.clone()).collect(),
        })
    } else {
        Err(problems)
    }
}

/// Decides the generation of a device's next document, or `None` when no new
/// document is due.
///
/// - `current`: generation and content hash of the stored document, if any.
/// - `floor`: the highest generation the device ever said it applied; a new
///   document is always numbered above it (so a device that outlived the
///   controller's database never sees a "replayed" generation).
///
/// A device that never had a document gets none while its spec is empty; once
/// it had one, it always gets one (deletions compose an empty spec).
pub fn next_generation(
    current: Option<(u64, &str)>,
    spec: &DeviceSpec,
    new_hash: &str,
    floor: u64,
) -> Option<u64> {
    match current {
        Some((generation, hash)) if hash == new_hash && generation >= floor => None,
        Some((generation, _)) => Some(generation.max(floor) + 1),
        None if spec.slices.is_empty() && spec.workloads.is_empty() && floor == 0 => None,
        None => Some(floor + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Manifest {
        Manifest::parse(text).unwrap()
    }

    const A: &str = "name: a\ndevices: [edge-1]\nslices:\n  - {name: video, vlan_id: 100, uplink: eth0, qos: {tier: gold}}\n";
    const B: &str = "name: b\nselector: {site: lab}\nworkloads:\n  - name: cam\n    container: {image: r/cam@sha256:1111111111111111111111111111111111111111111111111111111111111111}\n    slice: video\n    resources: {memory_mib: 32}\n";

    fn lab() -> BTreeMap<String, String> {
        BTreeMap::from([("site".to_string(), "lab".to_string())])
    }

    #[test]
    fn concatenates_matching_manifests_in_name_order() {
        let got = compose("edge-1", &lab(), &[manifest(B), manifest(A)]).unwrap();
        assert_eq!(got.manifests, vec!["a", "b"]);
        assert_eq!(got.spec.slices.len(), 1);
        assert_eq!(got.spec.workloads.len(), 1);
    }

    #[test]
    fn cross_manifest_reference_fails_without_the_slice() {
        let err = compose("edge-2", &lab(), &[manifest(A), manifest(B)]).unwrap_err();
        assert_eq!(err.len(), 1);
        assert!(
            err[0].starts_with("device \"edge-2\": workloads[0].slice"),
            "{err:?}"
        );
    }

    #[test]
    fn duplicate_objects_name_both_manifests() {
        let c = A.replace("name: a", "name: c");
        let err = compose("edge-1", &lab(), &[manifest(A), manifest(&c)]).unwrap_err();
        assert!(
            err[0].contains("\"a\"") && err[0].contains("\"c\""),
            "{err:?}"
        );
    }

    #[test]
    fn generation_bumps_only_on_hash_change() {
        let spec = compose("edge-1", &lab(), &[manifest(A)]).unwrap().spec;
        let hash = spec.content_hash();
        assert_eq!(next_generation(None, &spec, &hash, 0), Some(1));
        assert_eq!(next_generation(Some((1, &hash)), &spec, &hash, 0), None);
        assert_eq!(
            next_generation(Some((1, "sha256:old")), &spec, &hash, 0),
            Some(2)
        );
        let empty = DeviceSpec::default();
        let empty_hash = empty.content_hash();
        assert_eq!(next_generation(None, &empty, &empty_hash, 0), None);
        assert_eq!(
            next_generation(Some((4, &hash)), &empty, &empty_hash, 0),
            Some(5)
        );
    }

    #[test]
    fn generation_stays_above_what_the_device_applied() {
        let spec = DeviceSpec::default();
        let hash = spec.content_hash();
        assert_eq!(next_generation(None, &spec, &hash, 7), Some(8));
        assert_eq!(next_generation(Some((3, &hash)), &spec, &hash, 7), Some(8));
        assert_eq!(next_generation(Some((7, &hash)), &spec, &hash, 7), None);
    }
}
