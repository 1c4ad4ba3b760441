//! HTB options as the kernel reads and dumps them (`tc_htb_glob`,
//! `tc_htb_opt`, `tc_ratespec` from `include/uapi/linux/pkt_sched.h`).
//! netlink-packet-route has no HTB types; these are the few fields mecvisor
//! sets. Rates are given with link layer "ethernet", so the kernel needs no
//! rate tables; rates above 4 GB/s travel in the 64-bit attributes.

use crate::model::Rates;
use crate::nla::{attributes, find, Malformed};

/// `TCA_HTB_PARMS`: a class's `tc_htb_opt`.
pub const TCA_HTB_PARMS: u16 = 1;
/// `TCA_HTB_INIT`: the qdisc's `tc_htb_glob`.
pub const TCA_HTB_INIT: u16 = 2;
const TCA_HTB_RATE64: u16 = 6;
const TCA_HTB_CEIL64: u16 = 7;
/// `TC_LINKLAYER_ETHERNET`.
const LINKLAYER_ETHERNET: u8 = 1;
/// HTB's protocol version (`HTB_VER >> 16`).
const HTB_VERSION: u32 = 3;
/// The kernel's scheduler tick is 64 ns (`PSCHED_SHIFT` 6).
const NS_PER_TICK: u64 = 64;

/// The parameters of one HTB class, in the kernel's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassParams {
    /// Guaranteed rate, bytes/s.
    pub rate: u64,
    /// Ceiling, bytes/s.
    pub ceil: u64,
    /// Burst at `rate`, in scheduler ticks.
    pub buffer: u32,
    /// Burst at `ceil`, in scheduler ticks.
    pub cbuffer: u32,
    /// Bytes per round when borrowing.
    pub quantum: u32,
    /// Priority, 0 (first) ..= 7.
    pub prio: u32,
}

/// Ticks needed to send `bytes` at `rate` bytes/s.
fn ticks(bytes: u32, rate: u64) -> u32 {
    let ns = u64::from(bytes) * 1_000_000_000 / rate.max(1);
    (ns / NS_PER_TICK).min(u64::from(u32::MAX)) as u32
}

impl ClassParams {
    /// A slice's class: rate CIR, ceil PIR, its burst at both.
    pub fn for_slice(rates: &Rates) -> ClassParams {
        let rate = rates.cir_kbit * 125;
        let ceil = rates.pir_kbit * 125;
        ClassParams {
            rate,
            ceil,
            buffer: ticks(rates.burst_bytes, rate),
            cbuffer: ticks(rates.burst_bytes, ceil),
            quantum: rates.quantum_bytes,
            prio: u32::from(rates.priority),
        }
    }

    /// The class every slice borrows from: the uplink's capacity.
    pub fn for_uplink(capacity_kbit: u64) -> ClassParams {
        let rate = capacity_kbit.max(1) * 125;
        let burst = uplink_burst_bytes(capacity_kbit);
        ClassParams {
            rate,
            ceil: rate,
            buffer: ticks(burst, rate),
            cbuffer: ticks(burst, rate),
            quantum: 200_000,
            prio: 0,
        }
    }

    /// The `TCA_OPTIONS` attributes of a class: (type, value) pairs.
    pub fn encode(&self) -> Vec<(u16, Vec<u8>)> {
        let mut opt = Vec::with_capacity(44);
        ratespec(&mut opt, self.rate);
        ratespec(&mut opt, self.ceil);
        for field in [self.buffer, self.cbuffer, self.quantum, 0, self.prio] {
            opt.extend_from_slice(&field.to_ne_bytes());
        }
        let mut out = vec![(TCA_HTB_PARMS, opt)];
        if self.rate > u64::from(u32::MAX) {
            out.push((TCA_HTB_RATE64, self.rate.to_ne_bytes().to_vec()));
        }
        if self.ceil > u64::from(u32::MAX) {
            out.push((TCA_HTB_CEIL64, self.ceil.to_ne_bytes().to_vec()));
        }
        out
    }

    /// Reads a class's `TCA_OPTIONS` payload back.
    pub fn decode(options: &[u8]) -> Result<ClassParams, Malformed> {
        let attrs = attributes(options)?;
        let opt = find(&attrs, TCA_HTB_PARMS).ok_or(Malformed("HTB class without parameters"))?;
        if opt.len() < 44 {
            return Err(Malformed("short tc_htb_opt"));
        }
        let u32_at =
            |at: usize| u32::from_ne_bytes([opt[at], opt[at + 1], opt[at + 2], opt[at + 3]]);
        let wide = |kind: u16, narrow: u32| {
            find(&attrs, kind)
                .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                .map(u64::from_ne_bytes)
                .unwrap_or(u64::from(narrow))
        };
        Ok(ClassParams {
            rate: wide(TCA_HTB_RATE64, u32_at(8)),
            ceil: wide(TCA_HTB_CEIL64, u32_at(20)),
            buffer: u32_at(24),
            cbuffer: u32_at(28),
            quantum: u32_at(32),
            prio: u32_at(40),
        })
    }
}

/// Burst of the uplink's class: 10 ms at line rate, at least ten frames.
pub fn uplink_burst_bytes(capacity_kbit: u64) -> u32 {
    (capacity_kbit.max(1) * 125 / 100).clamp(15_140, u64::from(u32::MAX)) as u32
}

/// `tc_ratespec`: cell_log, linklayer, overhead, cell_align, mpu, rate.
fn ratespec(out: &mut Vec<u8>, rate: u64) {
    out.push(0);
    out.push(LINKLAYER_ETHERNET);
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&0i16.to_ne_bytes());
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&(rate.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
}

/// The qdisc's `TCA_OPTIONS`, unclassified packets going to class
/// `default_class`. On an uplink that is 0: they bypass the classes, so
/// traffic that belongs to no slice (the agent's own link to its
/// controller) is never held back by slices' shaping. On a workload's port
/// it is the port's one class.
pub fn qdisc_options(default_class: u16) -> Vec<(u16, Vec<u8>)> {
    let mut glob = Vec::with_capacity(20);
    for field in [HTB_VERSION, 10, u32::from(default_class), 0, 0] {
        glob.extend_from_slice(&field.to_ne_bytes());
    }
    vec![(TCA_HTB_INIT, glob)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nla::Malformed;

    fn options(pairs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        pairs
            .iter()
            .fold(crate::nla::Attrs::default(), |a, (kind, value)| {
                a.bytes(*kind, value)
            })
            .into_bytes()
    }

    #[test]
    fn class_parameters_round_trip_including_64_bit_rates() {
        for params in [
            ClassParams::for_uplink(1_000_000),
            ClassParams::for_uplink(100_000_000),
            ClassParams::for_slice(&Rates {
                cir_kbit: 10_000,
                pir_kbit: 100_000,
                burst_bytes: 125_000,
                quantum_bytes: 12_500,
                priority: 5,
            }),
        ] {
            let decoded = ClassParams::decode(&options(&params.encode())).expect("decode");
            assert_eq!(decoded, params);
        }
    }

    #[test]
    fn burst_becomes_ticks_of_64_ns() {
        // 125 000 bytes at 12.5 MB/s (100 Mbit/s) take 10 ms = 156 250 ticks.
        assert_eq!(ticks(125_000, 12_500_000), 156_250);
    }

    #[test]
    fn garbage_options_are_refused() {
        assert!(matches!(ClassParams::decode(&[]), Err(Malformed(_))));
        assert!(ClassParams::decode(&options(&[(TCA_HTB_PARMS, vec![0; 8])])).is_err());
    }
}
