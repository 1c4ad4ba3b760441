//! Untrusted bytes on the controller's uplink topics: hello, ack, report.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mecvisor_protocol::{decode, topics, Ack, Hello, Report};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<Hello>(data);
    let _ = decode::<Ack>(data);
    let _ = decode::<Report>(data);
    if let Ok(topic) = std::str::from_utf8(data) {
        let _ = topics::parse_uplink(topic);
    }
});
