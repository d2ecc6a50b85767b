//! The named settings of `vdit compare`: `--setting 'NAME: KEY=VALUE ...'`, `--baseline`, and
//! the `--sparsities` and `--sweep-*` shorthands that expand to settings.
//!
//! A setting is a few changes to the command's own flags (which every setting starts from): its
//! attention, its step cache, its LoRAs. [`SettingSpec::apply`] turns it into the options of one
//! run; everything a key cannot check alone (a magcache setting without a calibration, a
//! keep-first longer than the run) is checked when those options are resolved, before any run.
//!
//! ```text
//! 'fast: sparsity=0.8 cache=magcache threshold=0.12'
//!  ────  ────────────────────────────────────────────
//!  name  keys, separated by spaces; the name (and its colon) may be left out
//! ```

use std::fmt::Write as _;
use std::str::FromStr;

use std::path::PathBuf;
use vdit_models::lora::LoraSpec;

use vdit_pipeline::options::{parse_choice, AttentionMode, Choice, DecoderChoice, StepCacheMode};
use vdit_pipeline::settings::GenerateOptions;

/// The keys a setting may give, in the order `--help` and errors list them.
pub const KNOWN_KEYS: &[&str] = &[
    "attention",
    "sparsity",
    "cache",
    "threshold",
    "keep-first",
    "keep-last",
    "max-skips",
    "lora",
    "vae",
    "dit",
];

/// Names a setting may not take: its video would be named like another output of the folder.
const RESERVED_NAMES: &[&str] = &["side_by_side", "compare", "pareto"];

/// One named setting: the keys given, each `None` when the command's flag applies.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingSpec {
    /// The name given before the colon, if any (else [`SettingSpec::name`] makes one).
    pub given_name: Option<String>,
    pub attention: Option<AttentionMode>,
    /// RainFusion sparsity in [0, 1); with no `attention=` key it picks the command's
    /// `--attention` (the sparse mode, rainfusion by default).
    pub sparsity: Option<f64>,
    pub cache: Option<StepCacheMode>,
    pub threshold: Option<f64>,
    pub keep_first: Option<usize>,
    pub keep_last: Option<usize>,
    pub max_skips: Option<usize>,
    /// `Some` when the setting names its own LoRAs (replacing `--lora`); `lora=none` gives an
    /// empty list.
    pub loras: Option<Vec<LoraSpec>>,
    /// `vae=full|tiny`: the decoder (tiny = TAEHV, from `--tiny-vae` or the hub).
    pub decoder: Option<DecoderChoice>,
    /// `dit=FILE`: the transformer's weights from this file (any form `--dit` takes: safetensors,
    /// fp8 safetensors, GGUF), so that weight formats can be compared on one seed.
    pub dit: Option<PathBuf>,
}

impl SettingSpec {
    /// A setting with no keys and this name: the command's flags with dense attention.
    pub fn named(name: &str) -> Self {
        Self {
            given_name: Some(name.to_string()),
            attention: None,
            sparsity: None,
            cache: None,
            threshold: None,
            keep_first: None,
            keep_last: None,
            max_skips: None,
            loras: None,
            decoder: None,
            dit: None,
        }
    }

    /// `--sparsities` and `--sweep-sparsities`: `mode` at `sparsity`, named `rainfusion 0.8`.
    pub fn sparse(mode: AttentionMode, sparsity: f64) -> Self {
        Self {
            given_name: None,
            attention: Some(mode),
            sparsity: Some(sparsity),
            ..Self::named("")
        }
    }

    /// `--sweep-cache-thresholds`: step cache `mode` at `threshold`, named `magcache 0.12`.
    pub fn cached(mode: StepCacheMode, threshold: f64) -> Self {
        Self {
            given_name: None,
            cache: Some(mode),
            threshold: Some(threshold),
            ..Self::named("")
        }
    }

    /// The setting's name: the one given, else one made from its keys (`rainfusion 0.8 +
    /// magcache 0.12`; `dense` for no keys).
    pub fn name(&self) -> String {
        if let Some(name) = &self.given_name {
            return name.clone();
        }
        let mut parts: Vec<String> = Vec::new();
        match (self.attention, self.sparsity) {
            (Some(AttentionMode::Dense), _) => parts.push("dense".into()),
            (Some(mode), Some(s)) => parts.push(format!("{} {s}", mode.name())),
            (Some(mode), None) => parts.push(mode.name().into()),
            (None, Some(s)) => parts.push(format!("sparsity {s}")),
            (None, None) => {}
        }
        let mut cache = String::new();
        if let Some(mode) = self.cache {
            cache.push_str(mode.name());
        }
        match (self.cache, self.threshold) {
            (Some(_), Some(t)) => {
                let _ = write!(cache, " {t}");
            }
            (None, Some(t)) => {
                let _ = write!(cache, "threshold {t}");
            }
            (_, None) => {}
        }
        for (key, value) in [
            ("keep-first", self.keep_first),
            ("keep-last", self.keep_last),
            ("max-skips", self.max_skips),
        ] {
            if let Some(v) = value {
                let _ = write!(
                    cache,
                    "{}{key} {v}",
                    if cache.is_empty() { "" } else { " " }
                );
            }
        }
        if !cache.is_empty() {
            parts.push(cache);
        }
        match &self.loras {
            Some(loras) if loras.is_empty() => parts.push("no lora".into()),
            Some(loras) => parts.extend(loras.iter().map(|l| {
                let stem = l.path.file_stem().unwrap_or_default().to_string_lossy();
                format!("lora {stem}:{}", l.strength)
            })),
            None => {}
        }
        if let Some(dit) = &self.dit {
            let stem = dit.file_stem().unwrap_or_default().to_string_lossy();
            parts.push(format!("dit {stem}"));
        }
        if let Some(decoder) = self.decoder {
            parts.push(format!("{} vae", decoder.name()));
        }
        if parts.is_empty() {
            "dense".into()
        } else {
            parts.join(" + ")
        }
    }

    /// The options of this setting's run: `base` (the command's flags, with dense attention)
    /// changed by the keys given; `sparse_mode` is the command's `--attention`, the mode of a
    /// `sparsity=` without `attention=`. An error is one line, naming the key.
    pub fn apply(
        &self,
        base: &GenerateOptions,
        sparse_mode: AttentionMode,
    ) -> Result<GenerateOptions, String> {
        let mut options = base.clone();
        match (self.attention, self.sparsity) {
            (Some(AttentionMode::Dense), Some(_)) => {
                return Err("sparsity= has no effect with attention=dense".into())
            }
            (Some(mode), sparsity) => {
                options.attention = mode;
                if let Some(s) = sparsity {
                    options.sparsity = s;
                }
            }
            (None, Some(s)) => {
                options.attention = sparse_mode;
                options.sparsity = s;
            }
            (None, None) => {}
        }
        if let Some(mode) = self.cache {
            options.step_cache = mode;
        }
        if options.step_cache == StepCacheMode::None {
            // The command's --cache-* flags tune the settings that have a step cache; a setting
            // without one (`cache=none`, or none given anywhere) leaves them out.
            options.cache_threshold = None;
            options.cache_keep_first = None;
            options.cache_keep_last = None;
            options.cache_max_skips = None;
            options.cache_calibration = None;
        }
        let tuning_given = self.threshold.is_some()
            || self.keep_first.is_some()
            || self.keep_last.is_some()
            || self.max_skips.is_some();
        if tuning_given && options.step_cache == StepCacheMode::None {
            return Err(
                "threshold=, keep-first=, keep-last= and max-skips= need a step cache: add cache=magcache (or teacache)"
                    .into(),
            );
        }
        if let Some(t) = self.threshold {
            options.cache_threshold = Some(t);
        }
        if let Some(n) = self.keep_first {
            options.cache_keep_first = Some(n);
        }
        if let Some(n) = self.keep_last {
            options.cache_keep_last = Some(n);
        }
        if let Some(n) = self.max_skips {
            options.cache_max_skips = Some(n);
        }
        if let Some(loras) = &self.loras {
            options.loras = loras.clone();
        }
        if let Some(decoder) = self.decoder {
            options.decoder = decoder;
        }
        if options.decoder == DecoderChoice::Full {
            // The command's --tiny-vae names the file of the settings with vae=tiny; a setting
            // with the full VAE does not read it.
            options.tiny_vae = None;
        }
        if let Some(dit) = &self.dit {
            options.dit = Some(dit.clone());
        }
        Ok(options)
    }

    /// The name as a file name: letters, digits, `.`, `_` and `-`, every other run of
    /// characters one `-` (`rainfusion 0.8 + magcache 0.12` → `rainfusion-0.8-magcache-0.12`).
    pub fn file_stem(&self) -> String {
        file_stem(&self.name())
    }
}

/// `name` with every run of characters other than letters, digits, `.`, `_`, `-` made one `-`.
pub fn file_stem(name: &str) -> String {
    let mut stem = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
            stem.push(c);
        } else if !stem.ends_with('-') {
            stem.push('-');
        }
    }
    stem.trim_matches('-').to_string()
}

fn number<T: FromStr>(key: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{key}={value}: `{value}` is not a number"))
}

impl FromStr for SettingSpec {
    type Err = String;

    /// `[NAME:] KEY=VALUE ...`; a text with neither `:` nor `=` is a name alone (`dense`).
    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (name, keys) = match text.find([':', '=']) {
            Some(i) if text.as_bytes()[i] == b':' => (Some(text[..i].trim()), &text[i + 1..]),
            Some(_) => (None, text),
            None => (Some(text), ""),
        };
        let mut spec = SettingSpec::named("");
        spec.given_name = None;
        if let Some(name) = name {
            if name.is_empty() {
                return Err("the name before `:` is empty".into());
            }
            if file_stem(name).is_empty() {
                return Err(format!(
                    "the name `{name}` has no letter or digit to name its video after"
                ));
            }
            if RESERVED_NAMES.contains(&file_stem(name).as_str()) {
                return Err(format!(
                    "the name `{name}` is taken by another output of vdit compare"
                ));
            }
            spec.given_name = Some(name.to_string());
        }
        let mut seen: Vec<&str> = Vec::new();
        for item in keys.split_whitespace() {
            let Some((key, value)) = item.split_once('=') else {
                return Err(format!(
                    "`{item}` is not KEY=VALUE (keys: {})",
                    KNOWN_KEYS.join(", ")
                ));
            };
            if key != "lora" && seen.contains(&key) {
                return Err(format!("{key}= is given twice"));
            }
            seen.push(key);
            match key {
                "attention" => {
                    spec.attention = Some(
                        parse_choice::<AttentionMode>(value)
                            .map_err(|e| format!("attention={value}: {e}"))?,
                    )
                }
                "sparsity" => {
                    let s: f64 = number(key, value)?;
                    if !(0.0..1.0).contains(&s) {
                        return Err(format!("sparsity={value} is outside [0, 1)"));
                    }
                    spec.sparsity = Some(s);
                }
                "cache" => {
                    spec.cache = Some(
                        parse_choice::<StepCacheMode>(value)
                            .map_err(|e| format!("cache={value}: {e}"))?,
                    )
                }
                "threshold" => {
                    let t: f64 = number(key, value)?;
                    if !t.is_finite() || t < 0.0 {
                        return Err(format!(
                            "threshold={value} is not a finite value ≥ 0 (0 never skips)"
                        ));
                    }
                    spec.threshold = Some(t);
                }
                "keep-first" => spec.keep_first = Some(number(key, value)?),
                "keep-last" => spec.keep_last = Some(number(key, value)?),
                "max-skips" => {
                    let n: usize = number(key, value)?;
                    if n == 0 {
                        return Err("max-skips=0: must be at least 1".into());
                    }
                    spec.max_skips = Some(n);
                }
                "lora" => {
                    let list = spec.loras.get_or_insert_with(Vec::new);
                    if value != "none" {
                        list.push(value.parse().map_err(|e| format!("lora={value}: {e}"))?);
                    }
                }
                "vae" => {
                    spec.decoder = Some(
                        parse_choice::<DecoderChoice>(value)
                            .map_err(|e| format!("vae={value}: {e}"))?,
                    )
                }
                "dit" => {
                    if value.is_empty() {
                        return Err("dit= needs a file (safetensors, fp8 or GGUF)".into());
                    }
                    spec.dit = Some(PathBuf::from(value));
                }
                _ => {
                    return Err(format!(
                        "unknown key `{key}` (known keys: {})",
                        KNOWN_KEYS.join(", ")
                    ))
                }
            }
        }
        Ok(spec)
    }
}

/// The settings compared against the baseline, in order: `--sparsities`, then each
/// `--setting`, then the sweep (each sparsity alone, each threshold alone, then every pair). A
/// sweep setting equal to an earlier one (same name and keys) is dropped; two different settings
/// of one name, or of one video file name, are an error.
pub fn expand_settings(
    sparse_mode: AttentionMode,
    sparsities: &[f64],
    settings: &[SettingSpec],
    sweep_sparsities: &[f64],
    sweep_cache: StepCacheMode,
    sweep_thresholds: &[f64],
    baseline: &SettingSpec,
) -> Result<Vec<SettingSpec>, String> {
    if let Some((i, s)) = sparsities
        .iter()
        .enumerate()
        .find(|(i, s)| sparsities[..*i].contains(s))
    {
        return Err(format!(
            "--sparsities: {s} is listed twice (entry {})",
            i + 1
        ));
    }
    if !sweep_thresholds.is_empty() && sweep_cache == StepCacheMode::None {
        return Err(
            "--sweep-cache none: the sweep's thresholds need a step cache (magcache or teacache)"
                .into(),
        );
    }
    let mut all: Vec<SettingSpec> = sparsities
        .iter()
        .map(|&s| SettingSpec::sparse(sparse_mode, s))
        .collect();
    all.extend(settings.iter().cloned());
    let mut sweep: Vec<SettingSpec> = sweep_sparsities
        .iter()
        .map(|&s| SettingSpec::sparse(sparse_mode, s))
        .collect();
    sweep.extend(
        sweep_thresholds
            .iter()
            .map(|&t| SettingSpec::cached(sweep_cache, t)),
    );
    for &s in sweep_sparsities {
        for &t in sweep_thresholds {
            sweep.push(SettingSpec {
                cache: Some(sweep_cache),
                threshold: Some(t),
                ..SettingSpec::sparse(sparse_mode, s)
            });
        }
    }
    for spec in sweep {
        if !all.contains(&spec) && spec != *baseline {
            all.push(spec);
        }
    }
    let mut names: Vec<(String, String)> = vec![(baseline.name(), baseline.file_stem())];
    for spec in &all {
        let (name, stem) = (spec.name(), spec.file_stem());
        if let Some((other, _)) = names.iter().find(|(n, s)| *n == name || *s == stem) {
            return Err(if *other == name {
                format!("two settings are named `{name}` (names must differ)")
            } else {
                format!("settings `{other}` and `{name}` would both write {stem}.mp4: rename one")
            });
        }
        names.push((name, stem));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_with_and_without_a_name() {
        let s: SettingSpec = "fast: sparsity=0.8 cache=magcache threshold=0.12"
            .parse()
            .unwrap();
        assert_eq!(s.name(), "fast");
        assert_eq!(s.sparsity, Some(0.8));
        assert_eq!(s.cache, Some(StepCacheMode::MagCache));
        assert_eq!(s.file_stem(), "fast");
        let s: SettingSpec = "attention=rainfusion-v1 sparsity=0.5 cache=teacache"
            .parse()
            .unwrap();
        assert_eq!(s.name(), "rainfusion-v1 0.5 + teacache");
        assert_eq!(s.file_stem(), "rainfusion-v1-0.5-teacache");
        let dense: SettingSpec = "dense".parse().unwrap();
        assert_eq!(dense, SettingSpec::named("dense"));
        assert_eq!(
            SettingSpec::cached(StepCacheMode::MagCache, 0.06).name(),
            "magcache 0.06"
        );
    }

    #[test]
    fn bad_settings_are_one_line_errors() {
        for (text, expected) in [
            (
                "x: weights=q8_0",
                "unknown key `weights` (known keys: attention, sparsity",
            ),
            ("x: vae=huge", "vae=huge: `huge` is not one of"),
            ("x: sparsity=1", "outside [0, 1)"),
            ("x: sparsity=0.5 sparsity=0.8", "sparsity= is given twice"),
            (
                "x: attention=sparse",
                "attention=sparse: `sparse` is not one of",
            ),
            ("x: cache", "`cache` is not KEY=VALUE"),
            (": cache=magcache", "name before `:` is empty"),
            ("side_by_side: cache=magcache", "taken by another output"),
            ("x: threshold=-1", "not a finite value"),
        ] {
            let err = text.parse::<SettingSpec>().unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains('\n'), "{text}: {err}");
        }
        let base = GenerateOptions::new("p");
        let dense_sparse: SettingSpec = "attention=dense sparsity=0.5".parse().unwrap();
        assert!(dense_sparse
            .apply(&base, AttentionMode::Rainfusion)
            .is_err());
        let uncached_threshold: SettingSpec = "threshold=0.1".parse().unwrap();
        assert!(uncached_threshold
            .apply(&base, AttentionMode::Rainfusion)
            .unwrap_err()
            .contains("cache=magcache"));
    }

    #[test]
    fn the_sweep_is_each_value_alone_then_every_pair() {
        let baseline = SettingSpec::named("dense");
        let all = expand_settings(
            AttentionMode::Rainfusion,
            &[0.5],
            &[],
            &[0.5, 0.8],
            StepCacheMode::MagCache,
            &[0.12],
            &baseline,
        )
        .unwrap();
        let names: Vec<String> = all.iter().map(SettingSpec::name).collect();
        assert_eq!(
            names,
            [
                "rainfusion 0.5",
                "rainfusion 0.8",
                "magcache 0.12",
                "rainfusion 0.5 + magcache 0.12",
                "rainfusion 0.8 + magcache 0.12"
            ]
        );
        let twice = vec![
            "a: sparsity=0.5".parse().unwrap(),
            "a: sparsity=0.8".parse().unwrap(),
        ];
        let err = expand_settings(
            AttentionMode::Rainfusion,
            &[],
            &twice,
            &[],
            StepCacheMode::MagCache,
            &[],
            &baseline,
        )
        .unwrap_err();
        assert!(err.contains("named `a`"), "{err}");
    }

    #[test]
    fn a_setting_changes_only_what_it_names() {
        let mut base = GenerateOptions::new("p");
        base.step_cache = StepCacheMode::MagCache;
        base.cache_threshold = Some(0.2);
        let off: SettingSpec = "cache=none sparsity=0.8".parse().unwrap();
        let options = off.apply(&base, AttentionMode::RainfusionV1).unwrap();
        assert_eq!(options.step_cache, StepCacheMode::None);
        assert_eq!(options.cache_threshold, None);
        assert_eq!(options.attention, AttentionMode::RainfusionV1);
        assert_eq!(options.sparsity, 0.8);
        let keep: SettingSpec = "threshold=0".parse().unwrap();
        let options = keep.apply(&base, AttentionMode::Rainfusion).unwrap();
        assert_eq!(options.step_cache, StepCacheMode::MagCache);
        assert_eq!(options.cache_threshold, Some(0.0));
        assert_eq!(options.attention, AttentionMode::Dense);
    }
}
