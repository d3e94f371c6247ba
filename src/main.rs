//! The `stockd` binary: everything lives in the library; see `stockd::cli`.

fn main() -> std::process::ExitCode {
    stockd::cli::main()
}
