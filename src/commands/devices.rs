use anyhow::Result;

/// `glm devices`: what llama.cpp sees (with `--rpc`, the servers' devices too), one
/// device per line.
pub fn run(args: &crate::cli::DevicesArgs) -> Result<()> {
    crate::engine::rpc::connect(&args.rpc)?;
    const MIB: usize = 1024 * 1024;
    println!(
        "{:<12} {:<12} {:<10} {:>12} {:>12}  description",
        "name", "type", "backend", "free MiB", "total MiB"
    );
    for d in crate::engine::devices()? {
        println!(
            "{:<12} {:<12} {:<10} {:>12} {:>12}  {}",
            d.name,
            d.kind,
            d.backend,
            d.free_bytes / MIB,
            d.total_bytes / MIB,
            d.description
        );
    }
    Ok(())
}
