//! Round trips, forward compatibility and bounded decoding.

mod common;

use mecvisor_protocol::*;
use minicbor::{Decode, Encode};

#[test]
fn desired_state_round_trips() {
    let state = common::sample_state(7);
    let back: DesiredState = decode(&encode(&state)).expect("decodes");
    assert_eq!(back, state);
    assert!(back.validate().is_ok());
}

#[test]
fn uplink_messages_round_trip() {
    let report = Report {
        device: "edge-1".into(),
        seq: 42,
        created_ms: 1_700_000_000_000,
        body: ReportBody::State(ActualState {
            applied_generation: 3,
            objects: vec![ObjectStatus {
                name: "video".into(),
                kind: "slice".into(),
                phase: Phase::Unsupported,
                message: "no slice runtime".into(),
                restarts: 0,
                generation: 3,
            }],
        }),
        store_id: Some(7),
    };
    assert_eq!(decode::<Report>(&encode(&report)).expect("report"), report);
    let ack = Ack {
        device: "edge-1".into(),
        generation: 3,
        content_hash: "sha256:00".into(),
        outcome: AckOutcome::Rejected("replay".into()),
    };
    assert_eq!(decode::<Ack>(&encode(&ack)).expect("ack"), ack);
}

/// A later protocol version of `SliceSpec` with a field this agent does not know.
#[derive(Encode, Decode)]
struct SliceSpecV2 {
    #[n(0)]
    name: String,
    #[n(1)]
    vlan_id: u16,
    #[n(2)]
    uplink: String,
    #[n(3)]
    qos: QosSpec,
    #[n(4)]
    subnet: Option<String>,
    #[n(5)]
    gateway: Option<String>,
    #[n(6)]
    mtu: Option<u32>,
}

#[test]
fn old_reader_skips_fields_added_later() {
    let newer = SliceSpecV2 {
        name: "video".into(),
        vlan_id: 100,
        uplink: "eth0".into(),
        qos: QosSpec::default(),
        subnet: None,
        gateway: None,
        mtu: Some(9000),
    };
    let old: SliceSpec = decode(&encode(&newer)).expect("old reader decodes newer slice");
    assert_eq!(old.name, "video");
    assert_eq!(old.vlan_id, 100);
}

#[test]
fn truncated_input_is_an_error_at_every_length() {
    let bytes = encode(&common::sample_state(1));
    for len in 0..bytes.len() {
        assert!(
            decode::<DesiredState>(&bytes[..len]).is_err(),
            "prefix of {len} bytes decoded"
        );
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode(&common::sample_state(1));
    bytes.push(0);
    assert!(matches!(
        decode::<DesiredState>(&bytes),
        Err(DecodeError::TrailingBytes(1))
    ));
}

#[test]
fn oversized_input_is_refused_unread() {
    let bytes = vec![0u8; MAX_MESSAGE_BYTES + 1];
    assert!(matches!(
        decode::<DesiredState>(&bytes),
        Err(DecodeError::TooLarge { .. })
    ));
}

/// Deterministic xorshift so failures reproduce.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn mutated_documents_never_panic() {
    let seeds = [
        encode(&common::sample_state(1)),
        encode(&Hello {
            device: "edge-1".into(),
            arch: "x86_64".into(),
            agent_version: "0.1.0".into(),
            last_applied_generation: 1,
            last_applied_hash: String::new(),
            objects: vec![],
            labels: vec![],
        }),
    ];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..20_000 {
        let seed = &seeds[(next(&mut rng) % 2) as usize];
        let mut bytes = seed.clone();
        for _ in 0..=(next(&mut rng) % 4) {
            let at = (next(&mut rng) as usize) % bytes.len();
            bytes[at] = next(&mut rng) as u8;
        }
        // Any result is fine; a panic or hang fails the test.
        if let Ok(state) = decode::<DesiredState>(&bytes) {
            let _ = state.validate();
        }
        let _ = decode::<Hello>(&bytes);
        let _ = decode::<Report>(&bytes);
    }
}

#[test]
fn deeply_nested_unknown_field_does_not_overflow_the_stack() {
    // A SliceSpec-shaped array whose unknown 7th element nests 500k arrays.
    let mut bytes = encode(&common::sample_spec().slices[0]);
    // Patch the array header from 5 elements (0x85; no gateway) to 7, add a
    // null gateway and the bomb.
    assert_eq!(bytes[0], 0x85);
    bytes[0] = 0x87;
    bytes.push(0xf6);
    bytes.extend(std::iter::repeat_n(0x81u8, 500_000));
    bytes.push(0x00);
    // Reaching the assertion at all is the point (a stack overflow aborts the
    // process); the value itself must still decode with the bomb skipped.
    let slice = decode::<SliceSpec>(&bytes).expect("unknown field skipped");
    assert_eq!(slice.name, "video");
}

#[test]
fn a_workload_written_before_allow_rules_existed_still_decodes() {
    // The same workload with only fields 0..=4: what agents have stored
    // from controllers older than allow rules and port shaping.
    let mut workload = common::sample_spec().workloads.remove(0);
    workload.allow.push(AllowRule {
        from_slice: "iot".into(),
        protocol: IpProtocol::Tcp,
        port: Some(80),
    });
    let full = encode(&workload);
    let mut d = minicbor::Decoder::new(&full);
    assert!(d.array().expect("array header").is_some_and(|n| n >= 6));
    let mut old = minicbor::Encoder::new(Vec::new());
    old.array(5).expect("header");
    let mut old = old.into_writer();
    for _ in 0..5 {
        let start = d.position();
        d.skip().expect("field");
        old.extend_from_slice(&full[start..d.position()]);
    }
    let decoded: WorkloadSpec = decode(&old).expect("old workload decodes");
    workload.allow.clear();
    assert_eq!(decoded, workload);
}

#[test]
fn a_container_written_before_volumes_and_health_checks_still_decodes() {
    // A container spec with only fields 0..=3 (image, command, args, env):
    // what agents stored before issue 5 added the rest.
    let WorkloadKind::Container(mut container) = common::sample_spec().workloads.remove(0).kind
    else {
        panic!("sample workload 0 is a container")
    };
    container.volumes.push(VolumeSpec {
        name: "data".into(),
        path: "/data".into(),
        read_only: false,
    });
    container.read_only_root = true;
    container.health = Some(HealthCheck {
        tcp_port: Some(8080),
        ..HealthCheck::default()
    });
    let full = encode(&container);
    assert_eq!(
        decode::<ContainerSpec>(&full).expect("round trip"),
        container
    );
    let mut d = minicbor::Decoder::new(&full);
    assert!(d.array().expect("array header").is_some_and(|n| n >= 10));
    let mut old = minicbor::Encoder::new(Vec::new());
    old.array(4).expect("header");
    let mut old = old.into_writer();
    for _ in 0..4 {
        let start = d.position();
        d.skip().expect("field");
        old.extend_from_slice(&full[start..d.position()]);
    }
    let decoded: ContainerSpec = decode(&old).expect("old container decodes");
    assert_eq!(
        decoded,
        ContainerSpec {
            image: container.image.clone(),
            command: container.command.clone(),
            args: container.args.clone(),
            env: container.env.clone(),
            ..ContainerSpec::default()
        }
    );
}
