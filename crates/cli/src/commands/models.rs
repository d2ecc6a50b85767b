//! `vdit models`: the registry's models, their locations and defaults.

use vdit_pipeline::registry::{EntrySource, ModelEntry, Registry};
use vdit_pipeline::settings::WAN_NEGATIVE_PROMPT;

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
        println!("    family   {}", entry.family.name);
        for line in default_lines(entry) {
            println!("    {line}");
        }
    }
    Ok(())
}

/// The settings a run of `entry` gets when the flags leave them out: the entry's defaults (its
/// TOML and its folder's `vdit.json`), else its family's, the same order `vdit generate` uses.
pub fn default_lines(entry: &ModelEntry) -> Vec<String> {
    let d = &entry.defaults;
    let f = &entry.family.defaults;
    let width = d.width.unwrap_or(f.width);
    let height = d.height.unwrap_or(f.height);
    let frames = d.frames.unwrap_or(f.frames);
    let fps = d.fps.unwrap_or(f.fps);
    let steps = d.steps.unwrap_or(f.steps);
    let sampler = d.sampler.unwrap_or(f.sampler);
    let shift = d.shift.unwrap_or(f.shift);
    let guidance = d.guidance_scale.unwrap_or(f.guidance_scale);
    let guidance = match d.guidance_scale_2.or(f.guidance_scale_2) {
        Some(g2) => format!("guidance {guidance} (high noise) / {g2} (low noise)"),
        None => format!("guidance {guidance}"),
    };
    let negative = d.negative_prompt.as_deref().unwrap_or(f.negative_prompt);
    let negative = if negative.is_empty() {
        "none".to_string()
    } else if negative == WAN_NEGATIVE_PROMPT {
        "Wan2.1's (Chinese)".to_string()
    } else if negative.chars().count() > 50 {
        format!("{:?}…", negative.chars().take(50).collect::<String>())
    } else {
        format!("{negative:?}")
    };
    vec![
        format!("defaults {width}x{height}, {frames} frames at {fps} fps, {steps} steps ({}), shift {shift}, {guidance}", sampler.name()),
        format!("negative {negative}"),
    ]
}
