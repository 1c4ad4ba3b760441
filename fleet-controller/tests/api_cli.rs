//! The HTTP API and fleetctl against the real controller: validation errors,
//! conflicts, restart safety.

mod common;

use std::process::Command;

use common::{delete, get, post, Controller};

fn fleetctl(api: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .env("FLEETCTL_SERVER", api)
        .output()
        .expect("running fleetctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const OTHER: &str = "name: zz-extra
devices: [edge-1]
workloads:
  - name: video-analytics
    container: {image: r/x@sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}
    resources: {memory_mib: 16}
";

#[test]
fn invalid_and_conflicting_manifests_change_nothing_and_state_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Controller::start_embedded(dir.path());
    let api = ctl.api.clone();
    let (_, key1) = get(&api, "/v1/pubkey");

    // Every problem is listed, prefixed with the manifest name.
    let bad = common::example_manifest()
        .replace("vlan_id: 200", "vlan_id: 100")
        .replace("vcpus: 2", "vcpus: 0");
    let (status, body) = post(&api, "/v1/manifests", &bad);
    assert_eq!(status, 400, "{body}");
    let problems: Vec<String> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems
        .iter()
        .all(|p| p.starts_with("manifest \"edge-1-baseline\": ")));
    assert!(problems.iter().any(|p| p.contains("slices[1].vlan_id")));
    assert!(problems.iter().any(|p| p.contains("workloads[2].vm.vcpus")));
    assert_eq!(get(&api, "/v1/devices").1, serde_json::json!([]));
    assert_eq!(get(&api, "/v1/manifests").1, serde_json::json!([]));

    // YAML errors carry the line.
    let (status, body) = post(
        &api,
        "/v1/manifests",
        "name: x\ndevices: [edge-1]\nsurprise: 1\n",
    );
    assert_eq!(status, 400);
    assert!(
        body["problems"][0].as_str().unwrap().contains("line 3"),
        "{body}"
    );

    // fleetctl apply of the example works; of a bad file fails listing problems.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/fleet.yaml");
    let (ok, out, err) = fleetctl(&api, &["apply", "-f", example]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("edge-1: desired generation 1"), "{out}");
    let bad_file = dir.path().join("bad.yaml");
    std::fs::write(&bad_file, &bad).unwrap();
    let (ok, _, err) = fleetctl(&api, &["apply", "-f", bad_file.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.lines().count() >= 3, "{err}");
    assert!(
        err.contains("slices[1].vlan_id") && err.contains("workloads[2].vm.vcpus"),
        "{err}"
    );

    // A second manifest redefining an object for the same device is refused,
    // naming both manifests.
    let (status, body) = post(&api, "/v1/manifests", OTHER);
    assert_eq!(status, 400, "{body}");
    let p = body["problems"][0].as_str().unwrap();
    assert!(
        p.contains("edge-1-baseline") && p.contains("zz-extra"),
        "{p}"
    );
    assert_eq!(get(&api, "/v1/manifests").1.as_array().unwrap().len(), 1);

    // CLI views.
    let (ok, out, _) = fleetctl(&api, &["get", "devices"]);
    assert!(ok && out.contains("edge-1"), "{out}");
    let (ok, out, _) = fleetctl(&api, &["get", "manifests", "-o", "json"]);
    assert!(ok);
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m[0]["slices"], 2);
    assert_eq!(m[0]["workloads"], 3);
    let (ok, out, _) = fleetctl(&api, &["describe", "device", "edge-1"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("Generation: desired 1, acked 0, applied 0"),
        "{out}"
    );
    assert!(
        out.contains("OBJECT") && out.contains("video-analytics"),
        "{out}"
    );
    let (ok, _, err) = fleetctl(&api, &["describe", "device", "nope"]);
    assert!(!ok && err.contains("not found"), "{err}");

    // Restart: manifests, devices, generations and the key survive.
    ctl.stop();
    let ctl = Controller::start_embedded(dir.path());
    let api = ctl.api.clone();
    assert_eq!(get(&api, "/v1/pubkey").1, key1);
    let (_, d) = get(&api, "/v1/devices/edge-1");
    assert_eq!(d["desired_generation"], 1, "{d}");
    let (status, body) = post(&api, "/v1/manifests", &common::example_manifest());
    assert_eq!(status, 200);
    assert_eq!(
        body["devices"][0]["generation"], 1,
        "no bump without change"
    );
    let (_, body) = post(
        &api,
        "/v1/manifests",
        &common::example_manifest().replace("vcpus: 2", "vcpus: 4"),
    );
    assert_eq!(body["devices"][0]["generation"], 2);

    // Deletes.
    assert_eq!(delete(&api, "/v1/manifests/missing").0, 404);
    let (ok, out, err) = fleetctl(&api, &["delete", "manifest", "edge-1-baseline"]);
    assert!(ok, "{err}");
    assert!(out.contains("edge-1: desired generation 3"), "{out}");
    let (ok, _, _) = fleetctl(&api, &["delete", "device", "edge-1"]);
    assert!(ok);
    assert_eq!(get(&api, "/v1/devices/edge-1").0, 404);
    assert_eq!(delete(&api, "/v1/devices/edge-1").0, 404);
}
