fn main() -> std::process::ExitCode {
    if let Err(e) = glm::install_signal_handlers() {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::FAILURE;
    }
    match glm::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost message and its causes.
            let causes: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("error: {}", causes.join(": "));
            std::process::ExitCode::FAILURE
        }
    }
}
