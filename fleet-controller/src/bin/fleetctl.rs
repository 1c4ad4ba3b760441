//! `fleetctl`: see `fleet_controller::ctl`.

use clap::Parser;
use fleet_controller::ctl::{self, Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match ctl::run(&cli) {
        Ok(out) => {
            print!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
