fn main() -> std::process::ExitCode {
    dispatcher::cli::main()
}
