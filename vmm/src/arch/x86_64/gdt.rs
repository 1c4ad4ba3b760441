//! Segment descriptors: packing a GDT entry from flags, base and limit, and
//! the `kvm_segment` a loaded selector of that entry amounts to.

use kvm_bindings::kvm_segment;

/// Flags of a 64-bit code segment: G, L, P, DPL 0, S, type execute/read
/// (accessed).
pub const CODE_64: u16 = 0xa09b;
/// Flags of a data segment: G, D/B, P, DPL 0, S, type read/write
/// (accessed).
pub const DATA: u16 = 0xc093;
/// Flags of a busy 64-bit TSS: G, P, type 0xb.
pub const TSS_64: u16 = 0x808b;

/// Packs a descriptor: `flags` holds the access byte (bits 0-7) and the
/// G/DB/L/AVL nibble (bits 12-15); `limit` is 20 bits.
pub fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The hidden segment state of selector `index * 8` referring to
/// descriptor `entry` (what the CPU loads; KVM takes it in this form).
pub fn segment(entry: u64, index: u8) -> kvm_segment {
    let granular = (entry >> 55) & 1 == 1;
    let raw_limit = (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g: u8::from(granular),
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_descriptors_pack_to_the_known_values() {
        // The values every 64-bit boot GDT holds (Intel SDM vol. 3, 3.4.5).
        assert_eq!(entry(CODE_64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(entry(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(entry(TSS_64, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(entry(0, 0, 0), 0);
    }

    #[test]
    fn a_descriptor_decodes_to_its_segment() {
        let code = segment(entry(CODE_64, 0, 0xfffff), 1);
        assert_eq!((code.selector, code.base, code.limit), (8, 0, 0xffff_ffff));
        assert_eq!(
            (code.type_, code.l, code.db, code.g, code.s, code.present),
            (0xb, 1, 0, 1, 1, 1)
        );
        let odd = segment(entry(0x0093, 0x1234_5678, 0xabcde), 2);
        assert_eq!(
            (odd.base, odd.limit, odd.g, odd.selector),
            (0x1234_5678, 0xabcde, 0, 16)
        );
        assert_eq!(segment(0, 0).unusable, 1);
    }
}
