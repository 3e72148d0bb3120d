#![forbid(unsafe_code)]
//! The very same binary as crates/phigate (same allocator too).

#[global_allocator]
static GLOBAL: phigate::alloc::Jemalloc = phigate::alloc::Jemalloc;

fn main() -> std::process::ExitCode {
    phigate::alloc::start_background_purge();
    phigate::main_entry()
}
