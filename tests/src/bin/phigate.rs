#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    phigate::main_entry()
}
