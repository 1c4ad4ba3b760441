//! Untrusted bytes on an agent's `desired` topic: envelope, signature, document.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use mecvisor_protocol::{decode, DesiredState, SignedDesired};

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    if let Ok(state) = SignedDesired::open(data, &key) {
        let _ = state.validate();
    }
    // The document decoder is reached only after a good signature above, so
    // fuzz it directly too.
    if let Ok(state) = decode::<DesiredState>(data) {
        let _ = state.validate();
    }
});
