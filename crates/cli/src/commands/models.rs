//! `vdit models`: the registry's models, their locations and defaults.

use vdit_pipeline::registry::{EntrySource, Registry};

/// Prints every registry entry (the default model marked).
pub fn run() -> anyhow::Result<()> {
    let registry = Registry::discover()?;
    let default = registry.default_model().map(|e| e.name.clone());
    for entry in registry.entries() {
        let marker = if Some(&entry.name) == default.as_ref() {
            " (default)"
        } else {
            ""
        };
        let availability = match &entry.source {
            EntrySource::Local(_) if !entry.is_available() => " [not present]",
            _ => "",
        };
        println!("{}{marker}{availability}", entry.name);
        if !entry.description.is_empty() {
            println!("    {}", entry.description);
        }
        println!("    from     {}", entry.location());
        let d = &entry.defaults;
        let mut defaults = Vec::new();
        if let (Some(w), Some(h)) = (d.width, d.height) {
            defaults.push(format!("{w}x{h}"));
        }
        if let Some(f) = d.frames {
            defaults.push(format!("{f} frames"));
        }
        if let Some(s) = d.steps {
            defaults.push(format!("{s} steps"));
        }
        if let Some(s) = d.sampler {
            defaults.push(s.name().to_string());
        }
        if let Some(s) = d.shift {
            defaults.push(format!("shift {s}"));
        }
        if let Some(g) = d.guidance_scale {
            defaults.push(format!("guidance {g}"));
        }
        if let Some(f) = d.fps {
            defaults.push(format!("{f} fps"));
        }
        if !defaults.is_empty() {
            println!("    defaults {}", defaults.join(", "));
        }
    }
    Ok(())
}
