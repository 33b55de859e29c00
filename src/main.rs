fn main() -> std::process::ExitCode {
    if let Err(e) = glm::install_signal_handlers() {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    match glm::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", glm::one_line(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
