#![forbid(unsafe_code)]

#[global_allocator]
static GLOBAL: phigate::alloc::Jemalloc = phigate::alloc::Jemalloc;

fn main() -> std::process::ExitCode {
    phigate::alloc::start_background_purge();
    phigate::main_entry()
}
