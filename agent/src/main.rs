//! `edge-agent`: keeps an edge box converged on the desired state signed by
//! the fleet controller. The command line is [`edge_agent::cli`]; the
//! library's modules are the pieces.

fn main() -> std::process::ExitCode {
    edge_agent::cli::main()
}
