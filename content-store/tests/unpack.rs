//! The layer unpacker against real and malicious tarballs.
//!
//! Every malicious case checks that the error names the entry and that a
//! canary directory next to the root (outside it) is untouched. Owner checks
//! need root (`chown`); they are skipped with a printed reason otherwise.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use content_store::unpack::{
    apply_layer, Compression, LimitKind, Limits, Refusal, UnpackError, UnpackStats,
};
use tar::{EntryType, Header};

// ---------------------------------------------------------------- helpers

/// A fixed mtime for entries that do not care.
const MTIME: u64 = 1_600_000_000;

/// Builds a layer tarball in memory.
struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: EntryType, mode: u32, uid: u64, gid: u64, mtime: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(mtime);
        h.set_size(0);
        h
    }

    fn dir(self, path: &str, mode: u32) -> Self {
        self.dir_full(path, mode, 0, 0, MTIME)
    }

    fn dir_full(mut self, path: &str, mode: u32, uid: u64, gid: u64, mtime: u64) -> Self {
        let mut h = Self::header(EntryType::Directory, mode, uid, gid, mtime);
        self.builder
            .append_data(&mut h, path, io::empty())
            .expect("append dir");
        self
    }

    fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_full(path, data, 0o644, 0, 0, MTIME)
    }

    fn file_full(
        mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
    ) -> Self {
        let mut h = Self::header(EntryType::Regular, mode, uid, gid, mtime);
        h.set_size(data.len() as u64);
        self.builder
            .append_data(&mut h, path, data)
            .expect("append file");
        self
    }

    fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(kind, 0o777, 0, 0, MTIME);
        self.builder
            .append_link(&mut h, path, target)
            .expect("append link");
        self
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        self.link(EntryType::Symlink, path, target)
    }

    fn hardlink(self, path: &str, target: &str) -> Self {
        self.link(EntryType::Link, path, target)
    }

    fn special(mut self, kind: EntryType, path: &str, mode: u32) -> Self {
        let mut h = Self::header(kind, mode, 0, 0, MTIME);
        h.set_device_major(1).expect("major");
        h.set_device_minor(3).expect("minor");
        self.builder
            .append_data(&mut h, path, io::empty())
            .expect("append special");
        self
    }

    /// An entry whose name (and link name) bytes are written directly, for
    /// names `tar::Builder` refuses (`..`, absolute).
    fn raw(mut self, kind: EntryType, name: &[u8], link: &[u8], data: &[u8]) -> Self {
        let mut h = Self::header(kind, 0o644, 0, 0, MTIME);
        h.set_size(data.len() as u64);
        let old = h.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name);
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        self.builder.append(&h, data).expect("append raw");
        self
    }

    /// A GNU long-name entry (`L`) followed by a file whose real name is
    /// `name`, written by hand (the builder refuses `..`).
    fn gnu_long_name(self, name: &[u8], data: &[u8]) -> Self {
        let mut long = name.to_vec();
        long.push(0);
        let this = self.raw(EntryType::GNULongName, b"././@LongLink", b"", &long);
        this.raw(EntryType::Regular, b"placeholder", b"", data)
    }

    /// A PAX extended header setting `path`, then a file.
    fn pax_path(self, name: &[u8], data: &[u8]) -> Self {
        let record_body = [b"path=".as_slice(), name, b"\n"].concat();
        // "<len> <body>", where len counts itself.
        let mut len = record_body.len() + 2;
        while format!("{len} ").len() + record_body.len() != len {
            len += 1;
        }
        let record = [format!("{len} ").as_bytes(), &record_body].concat();
        let this = self.raw(EntryType::XHeader, b"PaxHeaders/x", b"", &record);
        this.raw(EntryType::Regular, b"placeholder", b"", data)
    }

    fn tar(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish tar")
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip finish")
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn compress(data: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => gzip(data),
        Compression::Zstd => zstd(data),
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A temp dir holding `root/` (unpacked into) and `canary/canary.txt`
/// (outside the root, must never change).
struct Sandbox {
    dir: tempfile::TempDir,
}

const CANARY: &[u8] = b"precious host file\n";

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("root")).expect("root");
        fs::create_dir(dir.path().join("canary")).expect("canary dir");
        fs::write(dir.path().join("canary/canary.txt"), CANARY).expect("canary");
        fs::set_permissions(
            dir.path().join("canary/canary.txt"),
            fs::Permissions::from_mode(0o644),
        )
        .expect("canary mode");
        Self { dir }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn canary_dir(&self) -> PathBuf {
        self.dir.path().join("canary")
    }

    fn canary_file(&self) -> PathBuf {
        self.canary_dir().join("canary.txt")
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.root().join(rel)
    }

    fn apply(&self, tar: &[u8], compression: Compression) -> Result<UnpackStats, UnpackError> {
        self.apply_limits(tar, compression, &Limits::default())
    }

    fn apply_limits(
        &self,
        tar: &[u8],
        compression: Compression,
        limits: &Limits,
    ) -> Result<UnpackStats, UnpackError> {
        let blob = compress(tar, compression);
        apply_layer(blob.as_slice(), compression, &self.root(), limits)
    }

    /// Nothing outside the root changed: the temp dir holds only `root` and
    /// `canary`, and the canary dir only the unchanged canary file.
    fn assert_outside_untouched(&self) {
        assert_eq!(names(self.dir.path()), ["canary", "root"]);
        assert_eq!(names(&self.canary_dir()), ["canary.txt"]);
        let meta = fs::symlink_metadata(self.canary_file()).expect("canary meta");
        assert!(meta.file_type().is_file());
        assert_eq!(meta.nlink(), 1, "canary got a hardlink");
        assert_eq!(meta.mode() & 0o7777, 0o644, "canary mode changed");
        assert_eq!(fs::read(self.canary_file()).expect("canary"), CANARY);
        let canary_dir = fs::symlink_metadata(self.canary_dir()).expect("canary dir");
        assert_eq!(canary_dir.uid(), nix::unistd::geteuid().as_raw());
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("meta").mode() & 0o7777
}

/// Applies a malicious layer; asserts it is refused naming `entry`, with
/// nothing outside the root touched. Returns the error for further checks.
fn assert_refused(sandbox: &Sandbox, tar: &[u8], entry: &str) -> UnpackError {
    let err = sandbox
        .apply(tar, Compression::None)
        .expect_err("malicious layer must be refused");
    let text = err.to_string();
    assert!(
        text.contains(&format!("`{entry}`")),
        "error does not name `{entry}`: {text}"
    );
    sandbox.assert_outside_untouched();
    err
}

fn refusal(err: &UnpackError) -> &Refusal {
    match err {
        UnpackError::Refused { reason, .. } => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// ------------------------------------------------------- a normal image

const LONG_DIR: &str = "usr/share/a-rather-long-directory-name-that-keeps-going-and-going/\
                        and-another-level-to-pass-one-hundred-bytes";

fn long_file() -> String {
    format!("{LONG_DIR}/with-a-long-file-name-too.txt")
}

fn image_layer() -> Vec<u8> {
    let long = long_file();
    Layer::new()
        .dir_full("bin", 0o755, 0, 0, 1_000_000)
        .dir("etc", 0o755)
        .dir("tmp", 0o1777)
        .dir("usr", 0o755)
        .dir("usr/bin", 0o755)
        .dir_full("home/user", 0o700, 1000, 1000, 1_234_567)
        .file_full("bin/busybox", b"#!busybox\n", 0o755, 0, 0, 1_500_000_000)
        .symlink("bin/sh", "/bin/busybox")
        .symlink("bin/ls", "busybox")
        .hardlink("bin/ash", "bin/busybox")
        .file_full("usr/bin/passwd", b"passwd", 0o4755, 0, 0, MTIME)
        .file_full("usr/bin/wall", b"wall", 0o2755, 0, 5, MTIME)
        .file_full("etc/hostname", b"edge\n", 0o644, 0, 0, MTIME)
        .symlink("etc/localtime", "../usr/share/zoneinfo/UTC")
        .file_full(
            "home/user/.profile",
            b"export PS1\n",
            0o600,
            1000,
            1000,
            MTIME,
        )
        .special(EntryType::Fifo, "run/initctl", 0o600)
        .file(&long, b"long path contents")
        .symlink("usr/long-link", &format!("/{long}"))
        .hardlink("usr/long-hardlink", &long)
        .file("empty", b"")
        .tar()
}

fn check_image(sandbox: &Sandbox, stats: &UnpackStats) {
    assert_eq!(
        *stats,
        UnpackStats {
            files: 8,
            dirs: 6,
            symlinks: 4,
            hardlinks: 2,
            whiteouts: 0,
            bytes: 10 + 6 + 4 + 5 + 11 + 18,
        }
    );
    let at = |p: &str| sandbox.at(p);
    assert_eq!(
        fs::read(at("bin/busybox")).expect("busybox"),
        b"#!busybox\n"
    );
    assert_eq!(fs::read(at("etc/hostname")).expect("hostname"), b"edge\n");
    assert_eq!(
        fs::read(at(&long_file())).expect("long"),
        b"long path contents"
    );
    assert_eq!(fs::read(at("empty")).expect("empty"), b"");
    assert_eq!(mode(&at("bin/busybox")), 0o755);
    assert_eq!(mode(&at("usr/bin/passwd")), 0o4755);
    assert_eq!(mode(&at("usr/bin/wall")), 0o2755);
    assert_eq!(mode(&at("etc/hostname")), 0o644);
    assert_eq!(mode(&at("tmp")), 0o1777);
    assert_eq!(mode(&at("home/user")), 0o700);
    assert_eq!(mode(&at("home/user/.profile")), 0o600);
    // Implicit parents of `run/initctl` and the long path.
    assert_eq!(mode(&at("run")), 0o755);
    assert_eq!(mode(&at(LONG_DIR)), 0o755);

    assert_eq!(
        fs::read_link(at("bin/sh")).expect("sh"),
        PathBuf::from("/bin/busybox")
    );
    assert_eq!(
        fs::read_link(at("bin/ls")).expect("ls"),
        PathBuf::from("busybox")
    );
    assert_eq!(
        fs::read_link(at("etc/localtime")).expect("localtime"),
        PathBuf::from("../usr/share/zoneinfo/UTC")
    );
    assert_eq!(
        fs::read_link(at("usr/long-link")).expect("long link"),
        PathBuf::from(format!("/{}", long_file()))
    );

    let busybox = fs::metadata(at("bin/busybox")).expect("busybox");
    let ash = fs::symlink_metadata(at("bin/ash")).expect("ash");
    assert_eq!(busybox.ino(), ash.ino());
    assert_eq!(busybox.nlink(), 2);
    let long = fs::metadata(at(&long_file())).expect("long");
    let long_link = fs::symlink_metadata(at("usr/long-hardlink")).expect("long hardlink");
    assert_eq!(long.ino(), long_link.ino());

    let fifo = fs::symlink_metadata(at("run/initctl")).expect("fifo");
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o600);

    // mtimes: files, symlinks, and directories despite later children.
    assert_eq!(busybox.mtime(), 1_500_000_000);
    let sh = fs::symlink_metadata(at("bin/sh")).expect("sh meta");
    assert_eq!(sh.mtime(), MTIME as i64);
    assert_eq!(
        fs::symlink_metadata(at("bin")).expect("bin").mtime(),
        1_000_000
    );
    assert_eq!(
        fs::symlink_metadata(at("home/user")).expect("home").mtime(),
        1_234_567
    );

    if is_root() {
        let owner = |p: &str| {
            let m = fs::symlink_metadata(at(p)).expect("meta");
            (m.uid(), m.gid())
        };
        assert_eq!(owner("home/user"), (1000, 1000));
        assert_eq!(owner("home/user/.profile"), (1000, 1000));
        assert_eq!(owner("usr/bin/wall"), (0, 5));
        assert_eq!(owner("bin/sh"), (0, 0));
    } else {
        println!("SKIPPED: owner checks need root (chown)");
    }
}

fn image_roundtrip(compression: Compression) {
    let sandbox = Sandbox::new();
    let stats = sandbox
        .apply(&image_layer(), compression)
        .expect("image layer applies");
    check_image(&sandbox, &stats);
    sandbox.assert_outside_untouched();
}

#[test]
fn image_layer_plain() {
    image_roundtrip(Compression::None);
}

#[test]
fn image_layer_gzip() {
    image_roundtrip(Compression::Gzip);
}

#[test]
fn image_layer_zstd() {
    image_roundtrip(Compression::Zstd);
}

#[test]
fn leading_slash_and_dot_slash_are_stripped() {
    let sandbox = Sandbox::new();
    let unique = format!("/mecvisor-unpack-test-{}", std::process::id());
    let name = format!("{unique}/abs");
    let tar = Layer::new()
        .raw(EntryType::Regular, name.as_bytes(), b"", b"inside")
        .raw(EntryType::Directory, b"./", b"", b"")
        .raw(EntryType::Regular, b"./dot/file", b"", b"dot")
        .tar();
    sandbox.apply(&tar, Compression::None).expect("applies");
    assert_eq!(fs::read(sandbox.at(&name[1..])).expect("abs"), b"inside");
    assert_eq!(fs::read(sandbox.at("dot/file")).expect("dot"), b"dot");
    assert!(!Path::new(&unique).exists(), "created on the host");
    sandbox.assert_outside_untouched();
}

#[test]
fn pax_long_names_work() {
    let sandbox = Sandbox::new();
    let name = format!("{}/pax-named-file", "p".repeat(150));
    let tar = Layer::new().pax_path(name.as_bytes(), b"pax").tar();
    sandbox.apply(&tar, Compression::None).expect("applies");
    assert_eq!(fs::read(sandbox.at(&name)).expect("pax file"), b"pax");
}

// ------------------------------------------------ replacing and whiteouts

fn lower_layer() -> Vec<u8> {
    Layer::new()
        .dir("a", 0o755)
        .file("a/keep", b"keep")
        .file("a/gone", b"gone")
        .dir("b", 0o755)
        .file("b/x", b"x")
        .file("b/sub/y", b"y")
        .dir("c", 0o755)
        .file("c/old", b"old")
        .file("c/sub/old", b"old")
        .dir("tree/deep/deeper", 0o755)
        .file("tree/deep/deeper/file", b"f")
        .file("tree/top", b"t")
        .file("file-then-dir", b"file")
        .file("dir-then-file/inner", b"inner")
        .symlink("link-then-file", "a/keep")
        .file("e/lower", b"lower")
        .tar()
}

#[test]
fn whiteouts_and_opaque_directories() {
    let sandbox = Sandbox::new();
    sandbox
        .apply(&lower_layer(), Compression::Gzip)
        .expect("lower");
    let upper = Layer::new()
        .dir("a", 0o700)
        .file("a/.wh.gone", b"")
        .file(".wh.tree", b"")
        .file(".wh.does-not-exist", b"")
        .file("nowhere/.wh.x", b"")
        // Opaque marker before its siblings.
        .file("b/.wh..wh..opq", b"")
        .file("b/new", b"new b")
        // Opaque marker after its siblings, incl. a dir over a lower dir.
        .file("c/new", b"new c")
        .dir("c/sub", 0o755)
        .file("c/sub/new", b"new sub")
        .file("c/.wh..wh..opq", b"")
        // A whiteout never hides what this same layer adds.
        .file("e/added", b"added")
        .file("e/.wh.added", b"")
        .file("e/.wh.lower", b"")
        .file(".wh..wh.plnk", b"")
        .tar();
    let stats = sandbox.apply(&upper, Compression::Zstd).expect("upper");
    assert_eq!(stats.whiteouts, 8);
    assert_eq!(names(&sandbox.at("a")), ["keep"]);
    assert_eq!(mode(&sandbox.at("a")), 0o700);
    assert!(!sandbox.at("tree").exists());
    assert!(!sandbox.at("nowhere").exists());
    assert_eq!(names(&sandbox.at("b")), ["new"]);
    assert_eq!(names(&sandbox.at("c")), ["new", "sub"]);
    assert_eq!(names(&sandbox.at("c/sub")), ["new"]);
    assert_eq!(
        fs::read(sandbox.at("c/sub/new")).expect("sub new"),
        b"new sub"
    );
    assert_eq!(names(&sandbox.at("e")), ["added"]);
    assert!(!sandbox.at(".wh..wh.plnk").exists());
    sandbox.assert_outside_untouched();
}

#[test]
fn whiteout_removes_deep_trees_and_keeps_hardlinked_data() {
    let sandbox = Sandbox::new();
    let deep = format!("deep/{}file", "level/".repeat(300));
    let lower = Layer::new()
        .file(&deep, b"deep")
        .file("keep/data", b"data")
        .hardlink("deep/link", "keep/data")
        .tar();
    sandbox.apply(&lower, Compression::None).expect("lower");
    assert_eq!(fs::read(sandbox.at(&deep)).expect("deep"), b"deep");
    let upper = Layer::new().file(".wh.deep", b"").tar();
    sandbox.apply(&upper, Compression::None).expect("upper");
    assert_eq!(names(&sandbox.root()), ["keep"]);
    assert_eq!(fs::read(sandbox.at("keep/data")).expect("data"), b"data");
    assert_eq!(fs::metadata(sandbox.at("keep/data")).expect("m").nlink(), 1);
    sandbox.assert_outside_untouched();
}

#[test]
fn entries_replace_existing_paths() {
    let sandbox = Sandbox::new();
    sandbox
        .apply(&lower_layer(), Compression::None)
        .expect("lower");
    let upper = Layer::new()
        .dir("file-then-dir", 0o750)
        .file("file-then-dir/child", b"child")
        .file("dir-then-file", b"now a file")
        .file("link-then-file", b"replaced the link")
        .symlink("a/keep", "gone")
        .file("b/x", b"new x")
        .dir_full("c", 0o711, 42, 43, 7)
        .tar();
    sandbox.apply(&upper, Compression::None).expect("upper");
    // A directory over a directory keeps its children, takes the new meta.
    assert_eq!(names(&sandbox.at("c")), ["old", "sub"]);
    assert_eq!(mode(&sandbox.at("c")), 0o711);
    let c = fs::symlink_metadata(sandbox.at("c")).expect("c");
    assert_eq!(c.mtime(), 7);
    if is_root() {
        assert_eq!((c.uid(), c.gid()), (42, 43));
    } else {
        println!("SKIPPED: owner check of `c` needs root (chown)");
    }
    assert_eq!(mode(&sandbox.at("file-then-dir")), 0o750);
    assert_eq!(names(&sandbox.at("file-then-dir")), ["child"]);
    assert_eq!(
        fs::read(sandbox.at("dir-then-file")).expect("file"),
        b"now a file"
    );
    let link = fs::symlink_metadata(sandbox.at("link-then-file")).expect("meta");
    assert!(link.file_type().is_file());
    assert_eq!(
        fs::read_link(sandbox.at("a/keep")).expect("link"),
        PathBuf::from("gone")
    );
    assert_eq!(fs::read(sandbox.at("b/x")).expect("x"), b"new x");
}

#[test]
fn final_symlinks_are_replaced_not_followed() {
    let sandbox = Sandbox::new();
    let canary_file = sandbox.canary_file();
    let canary_dir = sandbox.canary_dir();
    let tar = Layer::new()
        .symlink("to-file", canary_file.to_str().expect("utf-8"))
        .symlink("to-dir", canary_dir.to_str().expect("utf-8"))
        .symlink("to-fifo", canary_file.to_str().expect("utf-8"))
        .file_full("to-file", b"pwned", 0o777, 0, 0, MTIME)
        .dir("to-dir", 0o777)
        .file("to-dir/pwned", b"pwned")
        .special(EntryType::Fifo, "to-fifo", 0o777)
        .tar();
    sandbox.apply(&tar, Compression::None).expect("applies");
    assert!(fs::symlink_metadata(sandbox.at("to-file"))
        .expect("f")
        .is_file());
    assert!(fs::symlink_metadata(sandbox.at("to-dir"))
        .expect("d")
        .is_dir());
    assert_eq!(names(&sandbox.at("to-dir")), ["pwned"]);
    sandbox.assert_outside_untouched();
}

// ------------------------------------------------------ malicious layers

#[test]
fn refuses_dotdot_paths() {
    for name in ["../pwned", "a/../../pwned", "./../canary/pwned", "a/.."] {
        let sandbox = Sandbox::new();
        let tar = Layer::new()
            .raw(EntryType::Regular, name.as_bytes(), b"", b"pwned")
            .tar();
        let err = assert_refused(&sandbox, &tar, name);
        assert_eq!(refusal(&err), &Refusal::PathLeavesRoot, "{name}");
        assert!(err.to_string().ends_with("path leaves the root"), "{err}");
    }
}

#[test]
fn refuses_dotdot_in_gnu_long_and_pax_names() {
    let long = format!("{}../../canary/pwned", "a/".repeat(60));
    let sandbox = Sandbox::new();
    let tar = Layer::new().gnu_long_name(long.as_bytes(), b"pwned").tar();
    let err = assert_refused(&sandbox, &tar, &long);
    assert_eq!(refusal(&err), &Refusal::PathLeavesRoot);

    let sandbox = Sandbox::new();
    let tar = Layer::new().pax_path(b"../canary/pwned", b"pwned").tar();
    let err = assert_refused(&sandbox, &tar, "../canary/pwned");
    assert_eq!(refusal(&err), &Refusal::PathLeavesRoot);
}

#[test]
fn refuses_entries_through_absolute_symlink() {
    let sandbox = Sandbox::new();
    let canary = sandbox.canary_dir();
    let canary = canary.to_str().expect("utf-8");
    for child in ["evil/pwned", "evil/canary.txt"] {
        let tar = Layer::new()
            .symlink("evil", canary)
            .file(child, b"pwned")
            .tar();
        let err = assert_refused(&sandbox, &tar, child);
        assert_eq!(refusal(&err), &Refusal::ThroughSymlink);
    }
    // Same with the symlink deeper and the entry a directory / symlink / fifo.
    let tar = Layer::new()
        .symlink("x/evil", canary)
        .dir("x/evil/sub", 0o777)
        .tar();
    assert_refused(&sandbox, &tar, "x/evil/sub");
    let tar = Layer::new()
        .symlink("x/evil", canary)
        .symlink("x/evil/pwned", "/etc/passwd")
        .tar();
    assert_refused(&sandbox, &tar, "x/evil/pwned");
    let tar = Layer::new()
        .symlink("x/evil", canary)
        .special(EntryType::Fifo, "x/evil/pwned", 0o644)
        .tar();
    assert_refused(&sandbox, &tar, "x/evil/pwned");
}

#[test]
fn refuses_entries_through_a_lower_layer_symlink() {
    let sandbox = Sandbox::new();
    let canary = sandbox.canary_dir();
    let lower = Layer::new()
        .symlink("evil", canary.to_str().expect("utf-8"))
        .symlink("rel", "a")
        .dir("a", 0o755)
        .tar();
    sandbox.apply(&lower, Compression::None).expect("lower");
    for (tar, entry) in [
        (Layer::new().file("evil/pwned", b"x").tar(), "evil/pwned"),
        (
            Layer::new().file("evil/.wh.canary.txt", b"").tar(),
            "evil/.wh.canary.txt",
        ),
        (
            Layer::new().file("evil/.wh..wh..opq", b"").tar(),
            "evil/.wh..wh..opq",
        ),
        (Layer::new().file("rel/x", b"x").tar(), "rel/x"),
    ] {
        let err = assert_refused(&sandbox, &tar, entry);
        assert_eq!(refusal(&err), &Refusal::ThroughSymlink, "{entry}");
    }
}

#[test]
fn refuses_symlinks_climbing_out() {
    let sandbox = Sandbox::new();
    for (link, target) in [
        ("evil", "../../.."),
        ("a/b", "../../../etc"),
        ("a/b", "./../x/../../canary"),
        ("top", ".."),
    ] {
        let tar = Layer::new()
            .symlink(link, target)
            .file("evil/x", b"x")
            .tar();
        let err = assert_refused(&sandbox, &tar, link);
        assert!(
            matches!(refusal(&err), Refusal::SymlinkLeavesRoot { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(target), "{err}");
    }
}

#[test]
fn refuses_bad_hardlinks() {
    let sandbox = Sandbox::new();
    let canary_file = sandbox.canary_file();
    let canary_abs = canary_file.to_str().expect("utf-8");
    let canary_dir = sandbox.canary_dir();
    let base = || {
        Layer::new()
            .dir("dir", 0o755)
            .symlink("sym", "dir")
            .file("dir/file", b"f")
            .symlink("evil", canary_dir.to_str().expect("utf-8"))
    };
    type Check = fn(&Refusal) -> bool;
    let cases: [(&str, Check); 7] = [
        ("../canary/canary.txt", |r| {
            matches!(r, Refusal::HardlinkLeavesRoot { .. })
        }),
        ("dir/../../canary/canary.txt", |r| {
            matches!(r, Refusal::HardlinkLeavesRoot { .. })
        }),
        // Absolute: taken inside the root, where it does not exist.
        (canary_abs, |r| {
            matches!(r, Refusal::HardlinkTargetMissing { .. })
        }),
        ("missing", |r| {
            matches!(r, Refusal::HardlinkTargetMissing { .. })
        }),
        ("dir", |r| {
            matches!(r, Refusal::HardlinkTargetNotFile { .. })
        }),
        ("sym", |r| {
            matches!(r, Refusal::HardlinkTargetNotFile { .. })
        }),
        ("evil/canary.txt", |r| {
            matches!(r, Refusal::HardlinkThroughSymlink { .. })
        }),
    ];
    for (target, check) in cases {
        let tar = base().hardlink("link", target).tar();
        let err = assert_refused(&sandbox, &tar, "link");
        assert!(check(refusal(&err)), "{target}: {err}");
        assert!(err.to_string().contains(target), "{err}");
    }
    // Through a symlinked parent (not the final component).
    let tar = base().hardlink("link2", "sym/file").tar();
    let err = assert_refused(&sandbox, &tar, "link2");
    assert!(matches!(
        refusal(&err),
        Refusal::HardlinkThroughSymlink { .. }
    ));
}

#[test]
fn refuses_device_nodes() {
    for kind in [EntryType::Char, EntryType::Block] {
        let sandbox = Sandbox::new();
        let tar = Layer::new().special(kind, "dev/null", 0o666).tar();
        let err = assert_refused(&sandbox, &tar, "dev/null");
        assert_eq!(refusal(&err), &Refusal::DeviceNode);
        assert!(err
            .to_string()
            .contains("device nodes are not allowed in layers"));
        assert!(!sandbox.at("dev/null").exists());
    }
}

#[test]
fn refuses_bad_whiteouts() {
    for name in ["x/.wh..", "x/.wh...", ".wh."] {
        let sandbox = Sandbox::new();
        let tar = Layer::new()
            .raw(EntryType::Regular, name.as_bytes(), b"", b"")
            .tar();
        let err = assert_refused(&sandbox, &tar, name);
        assert!(
            matches!(refusal(&err), Refusal::BadWhiteout { .. }),
            "{err}"
        );
    }
}

#[test]
fn refuses_replacing_the_root() {
    let sandbox = Sandbox::new();
    let tar = Layer::new().raw(EntryType::Symlink, b"./", b"/", b"").tar();
    let err = assert_refused(&sandbox, &tar, "./");
    assert_eq!(refusal(&err), &Refusal::ReplacesRoot);
}

// ------------------------------------------------------------- limits

#[test]
fn entry_limit() {
    let sandbox = Sandbox::new();
    let mut layer = Layer::new();
    for i in 0..10 {
        layer = layer.file(&format!("f{i}"), b"");
    }
    let limits = Limits {
        max_entries: 5,
        ..Limits::default()
    };
    let err = sandbox
        .apply_limits(&layer.tar(), Compression::Gzip, &limits)
        .expect_err("too many entries");
    assert!(
        matches!(
            err,
            UnpackError::Limit {
                kind: LimitKind::Entries,
                limit: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("`f5`"), "{err}");
    sandbox.assert_outside_untouched();
}

#[test]
fn byte_limit_stops_a_gzip_bomb_before_writing() {
    let sandbox = Sandbox::new();
    let zeros = vec![0u8; 8 * 1024 * 1024];
    let tar = Layer::new().file("small", b"ok").file("bomb", &zeros).tar();
    let limits = Limits {
        max_bytes: 1024 * 1024,
        ..Limits::default()
    };
    let err = sandbox
        .apply_limits(&tar, Compression::Gzip, &limits)
        .expect_err("bomb");
    assert!(
        matches!(
            err,
            UnpackError::Limit {
                kind: LimitKind::Bytes,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("`bomb`"), "{err}");
    assert!(!sandbox.at("bomb").exists());
    sandbox.assert_outside_untouched();
}

#[test]
fn metadata_limit_bounds_long_names() {
    // A GNU long name claiming 1 GiB: refused after the metadata window,
    // without reading (or buffering) the rest.
    let mut header = Header::new_gnu();
    header.set_entry_type(EntryType::GNULongName);
    header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    header.set_size(1 << 30);
    header.set_mode(0o644);
    header.set_cksum();
    let stream = io::Cursor::new(header.as_bytes().to_vec()).chain(io::repeat(b'a').take(1 << 30));
    let sandbox = Sandbox::new();
    let err = apply_layer(
        stream,
        Compression::None,
        &sandbox.root(),
        &Limits::default(),
    )
    .expect_err("huge long name");
    assert!(
        matches!(
            err,
            UnpackError::Limit {
                kind: LimitKind::Metadata,
                ..
            }
        ),
        "{err}"
    );
    sandbox.assert_outside_untouched();
}

// ------------------------------------------------ broken streams

#[test]
fn truncated_gzip_is_an_error() {
    let blob = gzip(&image_layer());
    for cut in [blob.len() / 2, blob.len() - 4, 5] {
        let sandbox = Sandbox::new();
        let err = apply_layer(
            &blob[..cut],
            Compression::Gzip,
            &sandbox.root(),
            &Limits::default(),
        )
        .expect_err("truncated gzip");
        assert!(
            matches!(
                err,
                UnpackError::Decompress {
                    compression: Compression::Gzip,
                    ..
                } | UnpackError::Tar { .. }
            ),
            "{cut}: {err}"
        );
        sandbox.assert_outside_untouched();
    }
}

#[test]
fn truncated_zstd_is_an_error() {
    let blob = zstd(&image_layer());
    let sandbox = Sandbox::new();
    let err = apply_layer(
        &blob[..blob.len() / 2],
        Compression::Zstd,
        &sandbox.root(),
        &Limits::default(),
    )
    .expect_err("truncated zstd");
    assert!(
        matches!(
            err,
            UnpackError::Decompress {
                compression: Compression::Zstd,
                ..
            } | UnpackError::Tar { .. }
        ),
        "{err}"
    );
}

#[test]
fn truncated_tar_is_an_error() {
    let tar = image_layer();
    // Somewhere in the middle, and mid-header.
    for cut in [tar.len() / 2 + 100, 700] {
        let sandbox = Sandbox::new();
        let err = apply_layer(
            &tar[..cut],
            Compression::None,
            &sandbox.root(),
            &Limits::default(),
        )
        .expect_err("truncated tar");
        assert!(matches!(err, UnpackError::Tar { .. }), "{cut}: {err}");
        sandbox.assert_outside_untouched();
    }
    // Inside a file's contents: the short file is an error naming it.
    let tar = Layer::new().file("big", &[1u8; 10_000]).tar();
    let sandbox = Sandbox::new();
    let err = apply_layer(
        &tar[..512 + 5000],
        Compression::None,
        &sandbox.root(),
        &Limits::default(),
    )
    .expect_err("truncated file");
    assert!(matches!(err, UnpackError::Tar { .. }), "{err}");
    assert!(err.to_string().starts_with("layer entry `big`"), "{err}");
}

#[test]
fn truncated_tar_without_end_marker_is_an_error() {
    // Exactly at an entry boundary: only the missing marker tells.
    let tar = image_layer();
    let boundary = Layer::new().dir("bin", 0o755).tar().len() - 1024;
    for cut in [boundary, tar.len() - 1024] {
        let sandbox = Sandbox::new();
        let err = apply_layer(
            &tar[..cut],
            Compression::None,
            &sandbox.root(),
            &Limits::default(),
        )
        .expect_err("truncated tar");
        assert!(matches!(err, UnpackError::Tar { .. }), "{cut}: {err}");
        assert!(err.to_string().contains("end-of-archive marker"), "{err}");
        sandbox.assert_outside_untouched();
    }
}

#[test]
fn corrupt_gzip_names_the_entry() {
    let tar = Layer::new()
        .file("first", b"1")
        .file("second", &vec![7u8; 100_000])
        .tar();
    let mut blob = gzip(&tar);
    let last = blob.len() - 20;
    blob[last] ^= 0xff;
    let sandbox = Sandbox::new();
    let err = apply_layer(
        blob.as_slice(),
        Compression::Gzip,
        &sandbox.root(),
        &Limits::default(),
    )
    .expect_err("corrupt gzip");
    assert!(
        matches!(
            err,
            UnpackError::Decompress { .. } | UnpackError::Tar { .. }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("second"), "{err}");
}

#[test]
fn garbage_is_an_error() {
    let mut garbage = vec![0u8; 4096];
    let mut state = 0x1234_5678u32;
    for byte in &mut garbage {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *byte = (state >> 16) as u8;
    }
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let sandbox = Sandbox::new();
        let err = apply_layer(
            garbage.as_slice(),
            compression,
            &sandbox.root(),
            &Limits::default(),
        )
        .expect_err("garbage");
        match compression {
            Compression::None => assert!(matches!(err, UnpackError::Tar { .. }), "{err}"),
            _ => assert!(matches!(err, UnpackError::Decompress { .. }), "{err}"),
        }
        assert!(err.to_string().contains("before the first entry"), "{err}");
        sandbox.assert_outside_untouched();
    }
}

#[test]
fn trailing_garbage_is_fine() {
    for compression in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let sandbox = Sandbox::new();
        let mut blob = compress(&image_layer(), compression);
        blob.extend_from_slice(b"this is not part of the layer \xff\x00\x13");
        let stats = apply_layer(
            blob.as_slice(),
            compression,
            &sandbox.root(),
            &Limits::default(),
        )
        .expect("trailing garbage is ignored");
        check_image(&sandbox, &stats);
    }
}

#[test]
fn concatenated_gzip_members_and_zstd_frames() {
    let tar = image_layer();
    let (head, tail) = tar.split_at(3000);
    for compression in [Compression::Gzip, Compression::Zstd] {
        let mut blob = compress(head, compression);
        if compression == Compression::Zstd {
            // A skippable frame between the data frames (as zstd:chunked).
            blob.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
            blob.extend_from_slice(&4u32.to_le_bytes());
            blob.extend_from_slice(b"skip");
        }
        blob.extend_from_slice(&compress(tail, compression));
        let sandbox = Sandbox::new();
        let stats = apply_layer(
            blob.as_slice(),
            compression,
            &sandbox.root(),
            &Limits::default(),
        )
        .expect("multi-member");
        check_image(&sandbox, &stats);
    }
}

#[test]
fn missing_root_is_an_error() {
    let sandbox = Sandbox::new();
    let err = apply_layer(
        Layer::new().tar().as_slice(),
        Compression::None,
        &sandbox.at("nope"),
        &Limits::default(),
    )
    .expect_err("no root");
    assert!(matches!(err, UnpackError::Root { .. }), "{err}");
}

// ------------------------------------------------------- media types

#[test]
fn media_types() {
    let ok = [
        ("application/vnd.oci.image.layer.v1.tar", Compression::None),
        (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Gzip,
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::Zstd,
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar",
            Compression::None,
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            Compression::Gzip,
        ),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
            Compression::Zstd,
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Gzip,
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar",
            Compression::None,
        ),
    ];
    for (media_type, expected) in ok {
        assert_eq!(
            Compression::from_media_type(media_type).expect(media_type),
            expected
        );
    }
    for bad in [
        "application/vnd.oci.image.layer.v1.tar+bzip2",
        "application/vnd.oci.image.config.v1+json",
        "",
    ] {
        let err = Compression::from_media_type(bad).expect_err(bad);
        assert!(matches!(err, UnpackError::UnknownMediaType(_)));
        let text = err.to_string();
        assert!(text.contains(&format!("`{bad}`")), "{text}");
        assert!(text.contains("unknown layer media type"), "{text}");
    }
}
