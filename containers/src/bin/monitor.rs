//! The container monitor as a stand-alone executable, for this crate's
//! tests (edge-agent runs the same code as `edge-agent container-monitor`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(containers::monitor::main(&args));
}
