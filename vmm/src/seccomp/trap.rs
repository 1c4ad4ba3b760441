//! What happens when a filtered thread makes a forbidden system call: the
//! kernel sends it SIGSYS, and this handler writes the call's number to
//! stderr (the VMM's log) and ends the process with
//! [`FORBIDDEN_SYSCALL_EXIT`]. Only async-signal-safe calls in the handler,
//! and only calls every filter allows (write, exit_group).

use std::sync::Once;

use vmm_sys_util::signal::register_signal_handler;

/// Exit status of a VMM that made a system call its filters forbid.
pub const FORBIDDEN_SYSCALL_EXIT: i32 = 3;

/// Offset of `si_syscall` in a SIGSYS `siginfo_t` on 64-bit Linux: three
/// ints (signo, errno, code) padded to 16 bytes, then `_call_addr`.
const SI_SYSCALL_OFFSET: usize = 16 + 8;

/// Writes `value` in decimal into the end of `buf`; returns where it starts.
fn decimal(mut value: u32, buf: &mut [u8; 10]) -> usize {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 || start == 0 {
            return start;
        }
    }
}

extern "C" fn forbidden_syscall(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SIGSYS (SA_SIGINFO);
    // for SECCOMP_RET_TRAP it fills `_sigsys`, whose `_syscall` int lies at
    // SI_SYSCALL_OFFSET, inside the 128-byte structure.
    let syscall = unsafe {
        info.cast::<u8>()
            .add(SI_SYSCALL_OFFSET)
            .cast::<i32>()
            .read()
    };
    let mut number = [0u8; 10];
    let start = decimal(syscall as u32, &mut number);
    let parts: [&[u8]; 3] = [
        b"mecvisor-vmm: seccomp: this thread made system call ",
        &number[start..],
        b", which its filter forbids; exiting\n",
    ];
    for part in parts {
        // SAFETY: write(2) on stderr with a valid buffer and length; it is
        // async-signal-safe. A failed write leaves nothing more to do.
        unsafe { libc::write(libc::STDERR_FILENO, part.as_ptr().cast(), part.len()) };
    }
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(FORBIDDEN_SYSCALL_EXIT) };
}

/// Installs the SIGSYS handler, once per process.
pub fn install_handler() -> std::io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(libc::SIGSYS, forbidden_syscall)
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()));
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut buf = [0u8; 10];
        let start = decimal(41, &mut buf);
        assert_eq!(&buf[start..], b"41");
        let start = decimal(0, &mut buf);
        assert_eq!(&buf[start..], b"0");
        let start = decimal(u32::MAX, &mut buf);
        assert_eq!(&buf[start..], b"4294967295");
    }
}
