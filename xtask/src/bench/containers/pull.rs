//! Pull throughput from a loopback registry: mecvisor's content store
//! (pull, then unpack) against `podman pull`.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use content_store::{ContentStore, RegistryAccess, StoreOptions};
use mecvisor_e2e::oci::{self, LayerCompression, TestImage};
use mecvisor_e2e::registry::{Registry, RegistryOptions};

use super::cleanup::remove_tree;
use super::podman::Podman;
use super::report::Report;
use super::runtime::quiet;
use super::tools::Tools;
use crate::timing::{ms, percentile};

/// Size of the random layer of the pull benchmark.
const BIG_LAYER_BYTES: usize = 64 << 20;

pub(super) fn pull_throughput(
    rounds: usize,
    dir: &Path,
    tools: &Tools,
    tokio: &tokio::runtime::Runtime,
    report: &mut Report,
) -> Result<()> {
    let dir = dir.join("pull");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "\n==> pull: building an image with a {} MiB random layer",
        BIG_LAYER_BYTES >> 20
    );
    let mut random = Vec::with_capacity(BIG_LAYER_BYTES);
    std::fs::File::open("/dev/urandom")
        .context("opening /dev/urandom")?
        .take(BIG_LAYER_BYTES as u64)
        .read_to_end(&mut random)
        .context("reading /dev/urandom")?;
    let image = TestImage::busybox(LayerCompression::Gzip).with_layer(
        &[
            ("data/", b"", 0o755),
            ("data/random.bin", random.as_slice(), 0o644),
        ],
        LayerCompression::Gzip,
    );
    drop(random);
    let image_bytes: u64 = image.blobs().map(|b| b.bytes.len() as u64).sum();
    let unpacked_bytes: u64 = image
        .layers
        .iter()
        .map(|l| oci::uncompressed_layer(l).len() as u64)
        .sum();

    let Some(registry) = Registry::start(RegistryOptions::default()) else {
        bail!("docker-registry is not installed (apt-get install docker-registry)");
    };
    oci::push(&registry, "mecvisor-bench/random", "latest", &image);
    drop(image);
    let reference = format!("{}/mecvisor-bench/random:latest", registry.host());

    let mut ours_pull = Vec::new();
    let mut ours_unpack = Vec::new();
    let mut ours_total = Vec::new();
    let mut podman_pull = Vec::new();
    let mut podman_failed = tools.podman.clone().err();
    let mut downloaded = 0;
    println!("\n==> pull {reference}: 1 warm-up + {rounds} rounds");
    for round in 0..=rounds {
        let store_dir = dir.join(format!("store-{round}"));
        let result = pull_once(tokio, &registry.host(), &reference, &store_dir);
        let removed = remove_tree(&store_dir);
        let (pull, unpack, bytes) = result?;
        removed?;
        downloaded = bytes;
        if round > 0 {
            ours_pull.push(pull);
            ours_unpack.push(unpack);
            ours_total.push(pull + unpack);
        }
        if podman_failed.is_none() {
            match podman_pull_once(&dir.join(format!("podman-{round}")), round, &reference) {
                Ok(took) if round > 0 => podman_pull.push(took),
                Ok(_) => {}
                Err(err) => podman_failed = Some(format!("{err:#}")),
            }
        }
    }
    drop(registry);

    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    let rate = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    let (Some(pull), Some(unpack), Some(total)) = (
        percentile(&ours_pull, 50.0),
        percentile(&ours_unpack, 50.0),
        percentile(&ours_total, 50.0),
    ) else {
        bail!("no pull samples");
    };
    report.info(
        "pull: mecvisor ContentStore::ensure (fresh store)",
        format!("{:.1} MB/s ({})", rate(image_bytes, pull), ms(pull)),
    );
    report.info(
        "unpack after the pull: mecvisor ContentStore::rootfs",
        format!("{:.1} MB/s ({})", rate(unpacked_bytes, unpack), ms(unpack)),
    );
    report.info(
        "pull + unpack: mecvisor",
        format!("{:.1} MB/s ({})", rate(image_bytes, total), ms(total)),
    );
    match (&podman_failed, percentile(&podman_pull, 50.0)) {
        (None, Some(theirs)) => {
            report.info(
                "pull: podman pull --tls-verify=false (fresh storage; stores layers unpacked)",
                format!("{:.1} MB/s ({})", rate(image_bytes, theirs), ms(theirs)),
            );
            report.info(
                "ratio pull time: mecvisor pull / podman pull",
                format!("{:.2}x", pull.as_secs_f64() / theirs.as_secs_f64()),
            );
            report.info(
                "ratio pull time: mecvisor pull + unpack / podman pull",
                format!("{:.2}x", total.as_secs_f64() / theirs.as_secs_f64()),
            );
        }
        (Some(why), _) => {
            report.info("pull: podman pull --tls-verify=false", "skipped".into());
            report.note(format!("podman pull: skipped: {why}"));
        }
        (None, None) => report.info("pull: podman pull --tls-verify=false", "no samples".into()),
    }
    match &tools.skopeo {
        Ok(_) => report.note(
            "skopeo is installed but not measured: podman pull covers the same \
             containers/image code path"
                .into(),
        ),
        Err(why) => {
            report.info("pull: skopeo copy", "skipped".into());
            report.note(format!("skopeo copy: skipped: {why}"));
        }
    }
    report.note(format!(
        "pull image: busybox + {} MiB of random bytes, gzip; {:.1} MiB of blobs ({:.1} MiB \
         received by the store), {:.1} MiB of layer tar; registry on 127.0.0.1 over plain HTTP; \
         MB/s = blob bytes / time (unpack: tar bytes / time)",
        BIG_LAYER_BYTES >> 20,
        mib(image_bytes),
        mib(downloaded),
        mib(unpacked_bytes),
    ));
    Ok(())
}

/// Pulls `reference` into a fresh store at `dir`, then unpacks it; returns
/// both durations and the bytes received.
fn pull_once(
    tokio: &tokio::runtime::Runtime,
    host: &str,
    reference: &str,
    dir: &Path,
) -> Result<(Duration, Duration, u64)> {
    let mut options = StoreOptions::at(dir);
    options.registries.registries.insert(
        host.to_string(),
        RegistryAccess {
            plain_http: true,
            ..Default::default()
        },
    );
    let store = ContentStore::open(options).context("opening a fresh content store")?;
    let started = Instant::now();
    let image = tokio
        .block_on(store.ensure(reference))
        .with_context(|| format!("pulling {reference}"))?;
    let pull = started.elapsed();
    let started = Instant::now();
    store
        .rootfs(&image)
        .with_context(|| format!("unpacking {reference}"))?;
    let unpack = started.elapsed();
    Ok((pull, unpack, store.bytes_downloaded()))
}

/// `podman pull` into fresh storage at `dir` (removed afterwards).
fn podman_pull_once(dir: &Path, round: usize, reference: &str) -> Result<Duration> {
    let podman = Podman::new(dir, &format!("pull{round}"))?;
    let mut cmd = podman.command();
    cmd.args(["pull", "--quiet", "--tls-verify=false", reference]);
    let started = Instant::now();
    quiet(&mut cmd)?;
    Ok(started.elapsed())
}
