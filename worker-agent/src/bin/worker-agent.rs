fn main() -> std::process::ExitCode {
    worker_agent::cli::main()
}
