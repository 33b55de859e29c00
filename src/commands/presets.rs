use anyhow::Result;
use glm_convert::Preset;

pub fn run() -> Result<()> {
    for preset in Preset::built_in() {
        println!("{:<8} {}", preset.name, preset.description);
    }
    println!("\nA preset is a YAML file (see quant-presets/); pass your own with --quant path/to/preset.yaml.");
    Ok(())
}
