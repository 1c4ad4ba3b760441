//! Validation reports every problem with its path.

mod common;

use mecvisor_protocol::*;

fn problems(spec: &DeviceSpec) -> Vec<String> {
    match spec.validate() {
        Ok(()) => vec![],
        Err(invalid) => invalid.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn sample_is_valid() {
    assert_eq!(problems(&common::sample_spec()), Vec::<String>::new());
}

#[test]
fn every_problem_is_listed_with_its_path() {
    let mut spec = common::sample_spec();
    spec.slices[1].vlan_id = 4095;
    spec.workloads[0].slice = Some("radio".into());
    spec.workloads[1].resources.memory_mib = 0;
    spec.workloads.push(spec.workloads[0].clone());
    let found = problems(&spec);
    for expected in [
        "slices[1].vlan_id: VLAN 4095 is outside 1..4094",
        "workloads[0].slice: unknown slice \"radio\"",
        "workloads[1].resources.memory_mib: memory must be at least 1 MiB",
        "workloads[2].name: duplicate workload name \"transcoder\"",
        "workloads[2].slice: unknown slice \"radio\"",
    ] {
        assert!(
            found.iter().any(|p| p == expected),
            "missing {expected:?} in {found:#?}"
        );
    }
    assert_eq!(found.len(), 5, "{found:#?}");
}

#[test]
fn conflicting_slices_are_refused() {
    let mut spec = common::sample_spec();
    spec.slices[1].vlan_id = 100;
    spec.slices[1].subnet = Some("10.100.0.128/25".into());
    spec.slices.push(spec.slices[0].clone());
    let found = problems(&spec);
    assert!(
        found.contains(
            &"slices[1].vlan_id: VLAN 100 on uplink \"eth0\" is already used by slice \"video\""
                .to_string()
        ),
        "{found:#?}"
    );
    assert!(
        found.contains(&"slices[1].subnet: overlaps the subnet of slice \"video\"".to_string()),
        "{found:#?}"
    );
    assert!(
        found.contains(&"slices[2].name: duplicate slice name \"video\"".to_string()),
        "{found:#?}"
    );
}

#[test]
fn container_images_by_tag_or_digest_vm_artifacts_by_digest() {
    let mut spec = common::sample_spec();
    for ok in [
        "registry.local/transcoder:latest",
        "busybox",
        "127.0.0.1:5000/apps/web:v1.2",
    ] {
        if let WorkloadKind::Container(c) = &mut spec.workloads[0].kind {
            c.image = ok.into();
        }
        assert!(problems(&spec).is_empty(), "{ok}: {:#?}", problems(&spec));
    }
    for bad in [
        "",
        "registry.local/web@sha256:1234",
        "has space:v1",
        "/abs:v1",
        "web:",
    ] {
        if let WorkloadKind::Container(c) = &mut spec.workloads[0].kind {
            c.image = bad.into();
        }
        let found = problems(&spec);
        assert_eq!(found.len(), 1, "{bad}: {found:#?}");
        assert!(
            found[0].starts_with("workloads[0].container.image: "),
            "{found:#?}"
        );
    }
    let mut spec = common::sample_spec();
    if let WorkloadKind::Vm(vm) = &mut spec.workloads[1].kind {
        vm.kernel = "registry.local/kernel:latest".into();
    }
    let found = problems(&spec);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("workloads[1].vm.kernel: "),
        "{found:#?}"
    );
}

#[test]
fn container_settings_are_checked() {
    let mut spec = common::sample_spec();
    if let WorkloadKind::Container(c) = &mut spec.workloads[0].kind {
        c.working_dir = Some("srv".into());
        c.user = Some("1000:1000:1".into());
        c.volumes = vec![
            VolumeSpec {
                name: "data".into(),
                path: "/data".into(),
                read_only: false,
            },
            VolumeSpec {
                name: "data".into(),
                path: "/data".into(),
                read_only: true,
            },
            VolumeSpec {
                name: "Bad_Name".into(),
                path: "/x/../etc".into(),
                read_only: false,
            },
        ];
        c.pids_limit = Some(0);
        c.health = Some(HealthCheck {
            tcp_port: Some(80),
            http: Some(HttpProbe {
                port: 80,
                path: "healthz".into(),
            }),
            interval_s: Some(0),
            ..HealthCheck::default()
        });
    }
    let found = problems(&spec);
    for expected in [
        "workloads[0].container.working_dir: ",
        "workloads[0].container.user: ",
        "workloads[0].container.volumes[1].name: volume \"data\" is listed twice",
        "workloads[0].container.volumes[1].path: two volumes are mounted at \"/data\"",
        "workloads[0].container.volumes[2].name: ",
        "workloads[0].container.volumes[2].path: ",
        "workloads[0].container.pids_limit: must be at least 1",
        "workloads[0].container.health: give exactly one of exec, tcp_port, http",
        "workloads[0].container.health.http.path: ",
        "workloads[0].container.health.interval_s: must be at least 1",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(expected)),
            "{expected}\n{found:#?}"
        );
    }
    assert_eq!(found.len(), 10, "{found:#?}");
}

#[test]
fn names_follow_dns_label_rules() {
    for good in ["a", "edge-1", "x".repeat(63).as_str()] {
        assert!(validate::check_name(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "-a",
        "a-",
        "Edge",
        "a/b",
        "a+b",
        "a#",
        "x".repeat(64).as_str(),
    ] {
        assert!(validate::check_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn content_hash_must_match_the_spec() {
    let mut state = common::sample_state(3);
    assert!(state.validate().is_ok());
    state.spec.workloads.pop();
    let err = state.validate().expect_err("hash mismatch");
    assert_eq!(err.0[0].path, "content_hash");
}

#[test]
fn yaml_form_is_what_an_operator_writes() {
    let yaml = r#"
slices:
  - name: video
    vlan_id: 100
    uplink: eth0
    qos: { tier: gold }
workloads:
  - name: cam
    container:
      image: "reg.local/cam@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    slice: video
    resources: { memory_mib: 64 }
    restart: on-failure
"#;
    let spec: DeviceSpec = serde_norway::from_str(yaml).expect("parses");
    assert!(spec.validate().is_ok());
    assert_eq!(spec.workloads[0].restart, RestartPolicy::OnFailure);
    assert_eq!(spec.workloads[0].kind.name(), "container");
}

#[test]
fn subnets_parse_and_overlap() {
    use validate::Ipv4Net;
    let a = Ipv4Net::parse("10.0.0.0/8").expect("a");
    let b = Ipv4Net::parse("10.20.0.0/16").expect("b");
    let c = Ipv4Net::parse("192.168.1.0/24").expect("c");
    assert!(a.overlaps(&b) && b.overlaps(&a));
    assert!(!a.overlaps(&c));
    assert!(Ipv4Net::parse("10.0.0.1/8").is_err());
    assert!(Ipv4Net::parse("10.0.0.0/33").is_err());
}

#[test]
fn allow_rules_and_port_qos_are_checked() {
    let mut spec = common::sample_spec();
    spec.workloads[0].allow = vec![
        AllowRule {
            from_slice: "iot".into(),
            protocol: IpProtocol::Tcp,
            port: Some(8080),
        },
        AllowRule {
            from_slice: "video".into(),
            protocol: IpProtocol::Udp,
            port: None,
        },
        AllowRule {
            from_slice: "radio".into(),
            protocol: IpProtocol::Icmp,
            port: Some(1),
        },
        AllowRule {
            from_slice: "iot".into(),
            protocol: IpProtocol::Udp,
            port: Some(0),
        },
    ];
    spec.workloads[0].port_qos = Some(QosSpec::default());
    spec.workloads[1].slice = None;
    spec.workloads[1].port_qos = Some(QosSpec {
        cir_kbit: Some(1000),
        ..QosSpec::default()
    });
    let found = problems(&spec);
    for expected in [
        "workloads[0].allow[1].from_slice: traffic within the workload's own slice is always allowed",
        "workloads[0].allow[2].from_slice: unknown slice \"radio\"",
        "workloads[0].allow[2].port: ICMP has no ports",
        "workloads[0].allow[3].port: port must be 1 to 65535",
        "workloads[1].slice: allow rules and port_qos need the workload to join a slice",
    ] {
        assert!(found.iter().any(|p| p == expected), "missing {expected:?} in {found:#?}");
    }
    assert!(
        found.iter().any(|p| p.starts_with("workloads[0].port_qos")),
        "{found:#?}"
    );
}

#[test]
fn gateways_sit_inside_their_subnet_and_bursts_hold_a_frame() {
    let mut spec = common::sample_spec();
    spec.slices[0].gateway = Some("10.100.0.1".into());
    assert_eq!(problems(&spec), Vec::<String>::new());
    spec.slices[0].gateway = Some("10.101.0.1".into());
    spec.slices[1].gateway = Some("10.200.0.1".into());
    spec.slices[1].qos.burst_bytes = Some(100);
    let found = problems(&spec);
    for expected in [
        "slices[0].gateway: 10.101.0.1 is outside the subnet 10.100.0.0/24",
        "slices[1].gateway: a gateway needs the slice's subnet",
        "slices[1].qos.burst_bytes: burst must be 1514 (one frame) to 100000000 bytes",
    ] {
        assert!(
            found.iter().any(|p| p == expected),
            "missing {expected:?} in {found:#?}"
        );
    }
    spec.slices[1].gateway = None;
    spec.slices[1].qos.burst_bytes = None;
    for (gateway, why) in [
        ("10.100.0.0", "is the network or broadcast address"),
        ("10.100.0.255", "is the network or broadcast address"),
        ("ten", "is not an IPv4 address"),
    ] {
        spec.slices[0].gateway = Some(gateway.into());
        let found = problems(&spec);
        assert!(
            found.iter().any(|p| p.contains(why)),
            "{gateway}: {found:#?}"
        );
    }
}

#[test]
fn workload_addresses_sit_in_their_slice_subnet_once() {
    let mut spec = common::sample_spec();
    spec.workloads[0].address = Some("10.100.0.10".into());
    assert!(problems(&spec).is_empty(), "{:#?}", problems(&spec));

    let mut twin = spec.workloads[0].clone();
    twin.name = "twin".into();
    spec.workloads.push(twin);
    spec.workloads[1].address = Some("10.1.2.3".into());
    let found = problems(&spec);
    assert!(
        found.contains(
            &"workloads[2].address: 10.100.0.10 is already workload \"transcoder\"'s".to_string()
        ),
        "{found:#?}"
    );
    assert!(
        found.contains(
            &"workloads[1].address: slice \"iot\" has no subnet to take an address from"
                .to_string()
        ),
        "{found:#?}"
    );
    spec.workloads[2].address = Some("10.100.0.255".into());
    spec.workloads[1].slice = None;
    spec.workloads[1].address = Some("10.100.0.11".into());
    let found = problems(&spec);
    assert!(
        found.iter().any(
            |p| p.starts_with("workloads[2].address: 10.100.0.255 is the network or broadcast")
        ),
        "{found:#?}"
    );
    assert!(
        found.contains(
            &"workloads[1].address: an address needs the workload to join a slice".to_string()
        ),
        "{found:#?}"
    );
    spec.slices[0].gateway = Some("10.100.0.1".into());
    spec.workloads[2].address = Some("10.100.0.1".into());
    assert!(
        problems(&spec).contains(
            &"workloads[2].address: 10.100.0.1 is the gateway of slice \"video\"".to_string()
        ),
        "{:#?}",
        problems(&spec)
    );
}

#[test]
fn a_vm_is_health_checked_through_its_guest_agent_only() {
    let mut spec = common::sample_spec();
    if let WorkloadKind::Vm(vm) = &mut spec.workloads[1].kind {
        vm.health = Some(HealthCheck {
            tcp_port: Some(80),
            retries: Some(0),
            ..HealthCheck::default()
        });
    }
    if let WorkloadKind::Container(c) = &mut spec.workloads[0].kind {
        c.health = Some(HealthCheck {
            tcp_port: Some(80),
            guest_agent: true,
            ..HealthCheck::default()
        });
    }
    let found = problems(&spec);
    for expected in [
        "workloads[1].vm.health: a VM is checked through its guest agent",
        "workloads[1].vm.health.retries: must be at least 1",
        "workloads[0].container.health: give exactly one of exec, tcp_port, http",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(expected)),
            "{expected}\n{found:#?}"
        );
    }
    assert_eq!(found.len(), 3, "{found:#?}");
}
