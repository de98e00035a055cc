//! The `ipvs-proxier` binary.

fn main() -> std::process::ExitCode {
    eprintln!("ipvs-proxier: the daemon is not built yet");
    std::process::ExitCode::FAILURE
}
