//! The `stockd` binary: everything lives in the library; see `stockd::cli`. (The library also
//! sets the allocator, see `stockd::heap`.)

fn main() -> std::process::ExitCode {
    stockd::cli::main()
}
