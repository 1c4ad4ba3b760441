//! The decompressed layer stream: gzip/zstd decoders (multi-member, lazy, so
//! trailing garbage after the tar end is never read) and a guard that bounds
//! how many bytes the tar reader may pull per entry and records where an
//! error came from.

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Read};
use std::rc::Rc;

use flate2::bufread::GzDecoder;
use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

use super::Compression;

/// How many bytes, after the tar end-of-archive marker, are still decoded to
/// check the compressed stream's own trailer (gzip CRC, zstd checksum).
const DRAIN_MAX: u64 = 1024 * 1024;

/// What the tar reader may still read, and what went wrong under it. Shared
/// between the [`Guard`] (owned by the tar archive) and the unpacker.
#[derive(Debug, Default)]
pub(super) struct StreamState {
    budget: Cell<u64>,
    limit_hit: Cell<bool>,
    source_failed: Cell<bool>,
    eof: Cell<bool>,
}

impl StreamState {
    /// Allows the next `bytes` decompressed bytes (replacing what was left).
    pub(super) fn set_budget(&self, bytes: u64) {
        self.budget.set(bytes);
    }

    /// The guard refused a read because the budget ran out.
    pub(super) fn limit_hit(&self) -> bool {
        self.limit_hit.get()
    }

    /// The decompressor (or the caller's reader) failed.
    pub(super) fn source_failed(&self) -> bool {
        self.source_failed.get()
    }

    /// The stream ended (the decompressor returned end of data).
    pub(super) fn eof(&self) -> bool {
        self.eof.get()
    }
}

/// One decompressor over the caller's reader.
enum Decoder<R: Read> {
    Plain(R),
    Gzip(Gzip<R>),
    Zstd(Box<Zstd<R>>),
}

impl<R: Read> Decoder<R> {
    /// Stops at the end of the current gzip member / zstd frame.
    fn stop_after_current(&mut self) {
        match self {
            Self::Plain(_) => {}
            Self::Gzip(g) => g.single = true,
            Self::Zstd(z) => z.single = true,
        }
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(r) => r.read(buf),
            Self::Gzip(g) => g.read(buf),
            Self::Zstd(z) => z.read(buf),
        }
    }
}

/// The decompressed stream as the tar reader sees it.
pub(super) struct Guard<R: Read> {
    inner: Decoder<R>,
    state: Rc<StreamState>,
}

impl<R: Read> Guard<R> {
    /// Wraps `reader`, decoding `compression`. The budget starts at `budget`.
    pub(super) fn new(reader: R, compression: Compression, budget: u64) -> Self {
        let inner = match compression {
            Compression::None => Decoder::Plain(reader),
            Compression::Gzip => Decoder::Gzip(Gzip::new(reader)),
            Compression::Zstd => Decoder::Zstd(Box::new(Zstd::new(reader))),
        };
        let state = Rc::new(StreamState::default());
        state.set_budget(budget);
        Self { inner, state }
    }

    /// The state shared with the unpacker.
    pub(super) fn state(&self) -> Rc<StreamState> {
        Rc::clone(&self.state)
    }

    /// After the tar end: decodes (at most [`DRAIN_MAX`] more bytes of) the
    /// current gzip member or zstd frame, so that a corrupt or truncated
    /// trailer is reported. Bytes after it are never read (trailing garbage
    /// is fine).
    pub(super) fn finish(mut self) -> io::Result<()> {
        if matches!(self.inner, Decoder::Plain(_)) {
            return Ok(());
        }
        self.inner.stop_after_current();
        self.state.set_budget(DRAIN_MAX);
        let mut buf = [0u8; 8192];
        loop {
            match self.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(_) if self.state.limit_hit() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let budget = self.state.budget.get();
        if budget == 0 {
            self.state.limit_hit.set(true);
            return Err(io::Error::other("tar metadata limit exceeded"));
        }
        let len = usize::try_from(budget).map_or(buf.len(), |b| b.min(buf.len()));
        match self.inner.read(&mut buf[..len]) {
            Ok(n) => {
                if n == 0 {
                    self.state.eof.set(true);
                }
                self.state.budget.set(budget - n as u64);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.state.source_failed.set(true);
                Err(e)
            }
        }
    }
}

/// Gzip, one member after the other (like `gzip -d` and Go's reader), each
/// started only when the tar reader wants more bytes.
struct Gzip<R: Read> {
    member: Option<GzDecoder<BufReader<R>>>,
    single: bool,
}

impl<R: Read> Gzip<R> {
    fn new(reader: R) -> Self {
        Self {
            member: Some(GzDecoder::new(BufReader::new(reader))),
            single: false,
        }
    }
}

impl<R: Read> Read for Gzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(member) = self.member.as_mut() else {
                return Ok(0);
            };
            let n = member.read(buf)?;
            if n > 0 || buf.is_empty() || self.single {
                return Ok(n);
            }
            // This member ended (its CRC checked): start the next one, if
            // any bytes follow.
            let Some(done) = self.member.take() else {
                return Ok(0);
            };
            let mut source = done.into_inner();
            if source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.member = Some(GzDecoder::new(source));
        }
    }
}

/// Zstandard, one frame after the other (skippable frames skipped, as in
/// zstd:chunked layers), each started only when the tar reader wants more.
struct Zstd<R: Read> {
    source: BufReader<R>,
    frame: FrameDecoder,
    in_frame: bool,
    single: bool,
}

impl<R: Read> Zstd<R> {
    fn new(reader: R) -> Self {
        Self {
            source: BufReader::new(reader),
            frame: FrameDecoder::new(),
            in_frame: false,
            single: false,
        }
    }

    /// Starts the next data frame; `false` at the end of the input.
    fn next_frame(&mut self) -> io::Result<bool> {
        loop {
            if self.source.fill_buf()?.is_empty() {
                return Ok(false);
            }
            match self.frame.reset(&mut self.source) {
                Ok(()) => return Ok(true),
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let want = u64::from(length);
                    let skipped = io::copy(&mut (&mut self.source).take(want), &mut io::sink())?;
                    if skipped != want {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "zstd skippable frame is truncated",
                        ));
                    }
                }
                Err(e) => return Err(io::Error::other(e)),
            }
        }
    }

    /// Checks the frame's content checksum, when it has one.
    fn verify_checksum(&self) -> io::Result<()> {
        match (
            self.frame.get_checksum_from_data(),
            self.frame.get_calculated_checksum(),
        ) {
            (Some(stored), Some(computed)) if stored != computed => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "zstd frame checksum mismatch",
            )),
            _ => Ok(()),
        }
    }
}

impl<R: Read> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                while self.frame.can_collect() == 0 && !self.frame.is_finished() {
                    self.frame
                        .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                        .map_err(io::Error::other)?;
                }
                let n = self.frame.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                // Frame done and fully collected.
                self.in_frame = false;
                self.verify_checksum()?;
            }
            if self.single || !self.next_frame()? {
                return Ok(0);
            }
            self.in_frame = true;
        }
    }
}
