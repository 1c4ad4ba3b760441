//! The two edge box architectures and how QEMU emulates each.

/// An edge box architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86_64: q35 machine, `-cpu max` (nested SVM under TCG).
    X86_64,
    /// aarch64: `virt` machine with EL2 (`virtualization=on`) and GICv3, `-cpu max`.
    Aarch64,
}

impl Arch {
    /// `uname -m` of the box, also the directory name under target/images/.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The QEMU system emulator.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The Debian package of that emulator.
    pub fn qemu_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Aarch64 => "qemu-system-arm",
        }
    }

    /// Machine and CPU arguments.
    pub fn machine_args(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &["-M", "q35", "-cpu", "max"],
            // pauth-impdef: QEMU's cheap pointer-authentication algorithm,
            // much faster under TCG than the architected one.
            Arch::Aarch64 => &[
                "-M",
                "virt,virtualization=on,gic-version=3",
                "-cpu",
                "max,pauth-impdef=on",
            ],
        }
    }

    /// The serial console device inside the box.
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }
}
