//! Sample documents shared by the protocol tests.

use mecvisor_protocol::*;

/// A valid spec with two slices, a container and a VM.
pub fn sample_spec() -> DeviceSpec {
    let digest = format!("sha256:{}", "ab".repeat(32));
    DeviceSpec {
        slices: vec![
            SliceSpec {
                name: "video".into(),
                vlan_id: 100,
                uplink: "eth0".into(),
                qos: QosSpec {
                    tier: Some(QosTier::Gold),
                    ..QosSpec::default()
                },
                subnet: Some("10.100.0.0/24".into()),
                gateway: None,
            },
            SliceSpec {
                name: "iot".into(),
                vlan_id: 200,
                uplink: "eth0".into(),
                qos: QosSpec {
                    cir_kbit: Some(1000),
                    pir_kbit: Some(5000),
                    ..QosSpec::default()
                },
                subnet: None,
                gateway: None,
            },
        ],
        workloads: vec![
            WorkloadSpec {
                name: "transcoder".into(),
                kind: WorkloadKind::Container(ContainerSpec {
                    image: format!("registry.local/transcoder@{digest}"),
                    command: vec![],
                    args: vec!["--fast".into()],
                    env: vec![EnvVar {
                        name: "MODE".into(),
                        value: "edge".into(),
                    }],
                    ..Default::default()
                }),
                slice: Some("video".into()),
                resources: Resources {
                    cpu_millis: 500,
                    memory_mib: 256,
                },
                restart: RestartPolicy::OnFailure,
                allow: Vec::new(),
                port_qos: None,
                address: None,
            },
            WorkloadSpec {
                name: "upf".into(),
                kind: WorkloadKind::Vm(VmSpec {
                    kernel: format!("registry.local/kernel@{digest}"),
                    initrd: None,
                    disks: vec![DiskSpec {
                        image: format!("registry.local/disk@{digest}"),
                        read_only: true,
                    }],
                    cmdline: "console=ttyS0".into(),
                    vcpus: 2,
                    health: Some(HealthCheck {
                        guest_agent: true,
                        interval_s: Some(30),
                        ..HealthCheck::default()
                    }),
                }),
                slice: Some("iot".into()),
                resources: Resources {
                    cpu_millis: 0,
                    memory_mib: 512,
                },
                restart: RestartPolicy::Always,
                allow: Vec::new(),
                port_qos: None,
                address: None,
            },
        ],
    }
}

/// A valid document for device `edge-1` at `generation`.
pub fn sample_state(generation: u64) -> DesiredState {
    let spec = sample_spec();
    DesiredState {
        device: "edge-1".into(),
        generation,
        content_hash: spec.content_hash(),
        spec,
    }
}
