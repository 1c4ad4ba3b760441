//! Loading an arm64 Linux `Image` into guest RAM: its 64-byte header
//! (Documentation/arch/arm64/booting.rst) gives the text_offset from a
//! 2 MiB-aligned base and the image_size the kernel occupies (its .bss
//! included); the image goes to the start of RAM plus text_offset and is
//! entered at its first byte. The copy itself is linux-loader's PE loader.
//!
//! What is refused, with a clear error: files shorter than the header,
//! files without the "ARM\x64" magic (naming the compressed `vmlinuz`
//! forms, which must be decompressed first), big-endian kernels, and
//! images whose image_size does not fit in RAM.
//!
//! Header parsing and placement are plain arithmetic (tested on every
//! host); the load itself exists on aarch64 only, where linux-loader has
//! its PE loader.

use super::layout::KERNEL_ALIGNMENT;

/// Size of the arm64 Image header.
pub const IMAGE_HEADER_SIZE: usize = 64;
/// Offset of the magic in the header.
const MAGIC_OFFSET: usize = 0x38;
/// "ARM\x64", little-endian.
const IMAGE_MAGIC: u32 = 0x644d_5241;
/// text_offset of kernels older than 3.17 (image_size 0).
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
/// Header flags bit 0: the kernel is big-endian.
const FLAG_BIG_ENDIAN: u64 = 1;

/// What the Image header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset of the image from a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Bytes the kernel occupies from its load address (0 for old kernels,
    /// which do not say).
    pub image_size: u64,
    /// Header flags (endianness, page size, placement).
    pub flags: u64,
}

/// Where a kernel goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedKernel {
    /// Its first byte, where it is entered.
    pub entry: u64,
    /// First guest address after it (including the memory it declares but
    /// does not carry, e.g. .bss).
    pub end: u64,
}

/// Why a kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The image (with its zero-filled part) reaches past guest RAM.
    #[error("the kernel ends at {end:#x}, past guest RAM (which ends at {ram_end:#x})")]
    TooLarge {
        /// Where it ends.
        end: u64,
        /// Where RAM ends.
        ram_end: u64,
    },
    /// Shorter than an Image header.
    #[error("not an arm64 Image: {0} bytes, shorter than the 64-byte header")]
    TooShort(u64),
    /// A compressed kernel (Debian's `vmlinuz` is a gzip of the Image).
    #[error("a {0}-compressed kernel: decompress it to the arm64 Image first")]
    Compressed(&'static str),
    /// No "ARM\x64" magic at 0x38.
    #[error("not an arm64 Image: magic {0:#010x} at 0x38 instead of \"ARM\\x64\"")]
    BadMagic(u32),
    /// The header says big-endian; this VMM boots little-endian kernels.
    #[error("a big-endian arm64 kernel; only little-endian kernels are supported")]
    BigEndian,
    /// Reading the file failed.
    #[error("reading the kernel: {0}")]
    Read(#[source] std::io::Error),
    /// linux-loader refused the image.
    #[error("loading the kernel: {0}")]
    Loader(String),
}

/// Parses the first [`IMAGE_HEADER_SIZE`] bytes of a file of `file_size`
/// bytes.
pub fn parse_header(header: &[u8], file_size: u64) -> Result<ImageHeader, KernelError> {
    if header.starts_with(&[0x1f, 0x8b]) {
        return Err(KernelError::Compressed("gzip"));
    }
    // EFI zboot: a PE stub ("MZ") with "zimg" at offset 4 wrapping a
    // compressed Image.
    if header.starts_with(b"MZ") && header.get(4..8) == Some(b"zimg".as_slice()) {
        return Err(KernelError::Compressed("EFI zboot"));
    }
    if header.len() < IMAGE_HEADER_SIZE || file_size < IMAGE_HEADER_SIZE as u64 {
        return Err(KernelError::TooShort(file_size.min(header.len() as u64)));
    }
    let u64_at = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(bytes)
    };
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&header[MAGIC_OFFSET..MAGIC_OFFSET + 4]);
    let magic = u32::from_le_bytes(magic);
    if magic != IMAGE_MAGIC {
        return Err(KernelError::BadMagic(magic));
    }
    let image_size = u64_at(0x10);
    let flags = u64_at(0x18);
    // Before 3.17 the header fields were not set: assume the old fixed
    // text_offset (as linux-loader does), little-endian.
    if image_size == 0 {
        return Ok(ImageHeader {
            text_offset: LEGACY_TEXT_OFFSET,
            image_size: 0,
            flags: 0,
        });
    }
    if flags & FLAG_BIG_ENDIAN != 0 {
        return Err(KernelError::BigEndian);
    }
    Ok(ImageHeader {
        text_offset: u64_at(0x08),
        image_size,
        flags,
    })
}

/// Where a kernel with `header` and `file_size` bytes goes when the
/// 2 MiB-aligned `base` is the start of RAM and RAM ends at `ram_end`.
pub fn place(
    header: &ImageHeader,
    file_size: u64,
    base: u64,
    ram_end: u64,
) -> Result<LoadedKernel, KernelError> {
    debug_assert_eq!(base % KERNEL_ALIGNMENT, 0);
    let too_large = |end| KernelError::TooLarge { end, ram_end };
    let entry = base
        .checked_add(header.text_offset)
        .ok_or_else(|| too_large(u64::MAX))?;
    let end = entry
        .checked_add(header.image_size.max(file_size))
        .ok_or_else(|| too_large(u64::MAX))?;
    if end > ram_end {
        return Err(too_large(end));
    }
    Ok(LoadedKernel { entry, end })
}

#[cfg(target_arch = "aarch64")]
pub use self::load::load_kernel;

#[cfg(target_arch = "aarch64")]
mod load {
    use std::fs::File;
    use std::io::{Read, Seek, SeekFrom};

    use linux_loader::loader::{KernelLoader, PE};
    use vm_memory::GuestAddress;

    use super::{parse_header, place, KernelError, LoadedKernel, IMAGE_HEADER_SIZE};
    use crate::memory::GuestRam;

    /// Loads the Image in `image` at the start of `ram` plus its
    /// text_offset (RAM's base must be 2 MiB-aligned); its image_size must
    /// fit in RAM.
    pub fn load_kernel(ram: &GuestRam, image: &mut File) -> Result<LoadedKernel, KernelError> {
        let file_size = image.seek(SeekFrom::End(0)).map_err(KernelError::Read)?;
        image.rewind().map_err(KernelError::Read)?;
        let mut header = Vec::with_capacity(IMAGE_HEADER_SIZE);
        image
            .by_ref()
            .take(IMAGE_HEADER_SIZE as u64)
            .read_to_end(&mut header)
            .map_err(KernelError::Read)?;
        let parsed = parse_header(&header, file_size)?;
        let kernel = place(&parsed, file_size, ram.base(), ram.end())?;
        let loaded = PE::load(ram.memory(), Some(GuestAddress(ram.base())), image, None)
            .map_err(|e| KernelError::Loader(e.to_string()))?;
        if loaded.kernel_load.0 != kernel.entry {
            return Err(KernelError::Loader(format!(
                "loaded at {:#x}, expected {:#x}",
                loaded.kernel_load.0, kernel.entry
            )));
        }
        Ok(kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x8000_0000;

    /// A synthetic Image: a header with `text_offset`, `image_size` and
    /// `flags`, then filler up to `len` bytes.
    fn image(text_offset: u64, image_size: u64, flags: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len.max(IMAGE_HEADER_SIZE)];
        // code0: "b #0x40" style branch; its value does not matter here.
        bytes[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes());
        bytes[0x08..0x10].copy_from_slice(&text_offset.to_le_bytes());
        bytes[0x10..0x18].copy_from_slice(&image_size.to_le_bytes());
        bytes[0x18..0x20].copy_from_slice(&flags.to_le_bytes());
        bytes[0x38..0x3c].copy_from_slice(b"ARM\x64");
        for (i, b) in bytes.iter_mut().enumerate().skip(IMAGE_HEADER_SIZE) {
            *b = i as u8;
        }
        bytes
    }

    fn header_of(bytes: &[u8]) -> Result<ImageHeader, KernelError> {
        parse_header(
            &bytes[..bytes.len().min(IMAGE_HEADER_SIZE)],
            bytes.len() as u64,
        )
    }

    #[test]
    fn a_modern_header_is_read() {
        let bytes = image(0, 0x2_0000, 0b1010, 4096);
        let header = header_of(&bytes).expect("header");
        assert_eq!(
            header,
            ImageHeader {
                text_offset: 0,
                image_size: 0x2_0000,
                flags: 0b1010
            }
        );
        let kernel = place(&header, 4096, BASE, BASE + (64 << 20)).expect("fits");
        assert_eq!(
            kernel,
            LoadedKernel {
                entry: BASE,
                end: BASE + 0x2_0000
            }
        );
    }

    #[test]
    fn text_offset_moves_the_entry_and_legacy_kernels_get_0x80000() {
        let header = header_of(&image(0x8_0000, 0x1000, 0, 4096)).expect("header");
        let kernel = place(&header, 4096, BASE, BASE + (4 << 20)).expect("fits");
        // The file is bigger than image_size claims: the file counts.
        assert_eq!(
            kernel,
            LoadedKernel {
                entry: BASE + 0x8_0000,
                end: BASE + 0x8_1000
            }
        );
        let legacy = header_of(&image(0x1234, 0, 1, 4096)).expect("legacy header");
        assert_eq!(legacy.text_offset, 0x8_0000);
    }

    #[test]
    fn images_that_do_not_fit_are_too_large() {
        let header = header_of(&image(0, 8 << 20, 0, 4096)).expect("header");
        let err = place(&header, 4096, BASE, BASE + (4 << 20)).expect_err("too large");
        assert!(
            matches!(err, KernelError::TooLarge { end, ram_end } if end == BASE + (8 << 20) && ram_end == BASE + (4 << 20)),
            "{err}"
        );
        let header = header_of(&image(u64::MAX - 10, 0x1000, 0, 4096)).expect("header");
        assert!(matches!(
            place(&header, 4096, BASE, u64::MAX),
            Err(KernelError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_is_refused_clearly() {
        assert!(matches!(
            header_of(&[0u8; 10]),
            Err(KernelError::TooShort(10))
        ));
        let mut gzip = vec![0x1f, 0x8b, 8, 0];
        gzip.resize(4096, 0);
        let err = header_of(&gzip).expect_err("gzip");
        assert!(err.to_string().contains("decompress"), "{err}");
        let mut zboot = b"MZ\0\0zimg".to_vec();
        zboot.resize(4096, 0);
        assert!(matches!(
            header_of(&zboot),
            Err(KernelError::Compressed("EFI zboot"))
        ));
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(4096, 0);
        assert!(matches!(header_of(&elf), Err(KernelError::BadMagic(0))));
        assert!(matches!(
            header_of(&image(0, 0x1000, FLAG_BIG_ENDIAN, 4096)),
            Err(KernelError::BigEndian)
        ));
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn an_image_is_copied_to_ram_at_its_text_offset() {
        use std::io::Write;

        use crate::memory::GuestRam;

        let bytes = image(0x8_0000, 0x4000, 0, 0x3000);
        let mut file = tempfile::tempfile().expect("tempfile");
        file.write_all(&bytes).expect("write");
        let ram = GuestRam::new_at(BASE, 4 << 20).expect("ram");
        let kernel = load_kernel(&ram, &mut file).expect("load");
        assert_eq!(
            kernel,
            LoadedKernel {
                entry: BASE + 0x8_0000,
                end: BASE + 0x8_4000
            }
        );
        let mut back = vec![0u8; bytes.len()];
        ram.read(kernel.entry, &mut back).expect("read");
        assert_eq!(back, bytes);

        let small = GuestRam::new_at(BASE, 0x8_2000).expect("ram");
        assert!(matches!(
            load_kernel(&small, &mut file),
            Err(KernelError::TooLarge { .. })
        ));
        let mut garbage = tempfile::tempfile().expect("tempfile");
        garbage.write_all(&[0x55; 4096]).expect("write");
        assert!(matches!(
            load_kernel(&ram, &mut garbage),
            Err(KernelError::BadMagic(0x5555_5555))
        ));
    }
}
