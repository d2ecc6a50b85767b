//! LoRA adapters: low-rank updates `ΔW = strength · (alpha / rank) · B·A` and full deltas
//! (`.diff`, `.diff_b`) read from safetensors files in every published Wan key form
//! ([`names`]), matched onto a model's layers through a [`LoraTargets`] table that the model
//! family provides.
//!
//! Two ways to apply them ([`LoraMode`]):
//! - **merge** (the default): at load, `W' = cast(W_f32 + Σ ΔW_f32)`. The run then costs exactly
//!   what the base model costs; the merge is one small GEMM per layer at load.
//! - **runtime**: linear layers keep `W` and compute `x·Wᵀ + (x·Aᵀ)·(s·B)ᵀ` each pass, with the
//!   LoRAs of one layer concatenated along the rank. The weights stay those of the base file
//!   (no f32 copy of each layer at load), at the price of two thin GEMMs per layer per pass.
//!   Full deltas (`.diff`, `.diff_b`) are as large as the weights themselves, so they are
//!   added at load in both modes, as are low-rank updates of layers that are not linear maps.

pub mod names;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::str::FromStr;

use candle_core::{DType, Device, Shape, Tensor};

use crate::error::{ModelError, Result};
use crate::weights::WeightFiles;
use names::Role;

/// One `--lora FILE[:STRENGTH]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    /// Multiplies the whole update (1.0 as published).
    pub strength: f64,
}

impl FromStr for LoraSpec {
    type Err = String;

    /// `FILE` or `FILE:STRENGTH`. The text after the last `:` is a strength only if it parses
    /// as a number, so paths with colons still work.
    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if text.is_empty() {
            return Err("empty LoRA path".into());
        }
        if let Some((path, tail)) = text.rsplit_once(':') {
            if let Ok(strength) = tail.trim().parse::<f64>() {
                if !strength.is_finite() {
                    return Err(format!("LoRA strength `{tail}` is not a finite number"));
                }
                if path.is_empty() {
                    return Err(format!("`{text}` has a strength but no file"));
                }
                return Ok(Self {
                    path: PathBuf::from(path),
                    strength,
                });
            }
        }
        Ok(Self {
            path: PathBuf::from(text),
            strength: 1.0,
        })
    }
}

impl std::fmt::Display for LoraSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.strength)
    }
}

/// How LoRA updates reach the computation (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoraMode {
    /// Added into the weights at load, in f32, then cast: no cost per pass.
    #[default]
    Merge,
    /// Kept as separate low-rank factors of the linear layers, applied every pass.
    Runtime,
}

impl LoraMode {
    pub fn name(self) -> &'static str {
        match self {
            LoraMode::Merge => "merge",
            LoraMode::Runtime => "runtime",
        }
    }
}

/// A layer that LoRAs can target: its canonical name, its parameters, and every spelling of
/// its name that LoRA files use.
#[derive(Debug, Clone)]
pub struct TargetModule {
    /// The canonical (diffusers) module name, e.g. `blocks.0.attn1.to_q`.
    pub name: String,
    /// The parameter a weight update applies to (`<name>.weight`, or the parameter itself for
    /// bare tables such as `scale_shift_table`).
    pub weight: String,
    /// The parameter a bias update applies to, if the module has one.
    pub bias: Option<String>,
}

/// The layers of one model that LoRAs may target, by every name LoRA files use for them.
#[derive(Debug, Default, Clone)]
pub struct LoraTargets {
    modules: Vec<TargetModule>,
    by_name: HashMap<String, usize>,
}

impl LoraTargets {
    /// Adds a module known under `spellings` (the canonical name is always one of them; the
    /// kohya `_` form of each spelling is added here).
    pub fn add(&mut self, module: TargetModule, spellings: &[String]) {
        let index = self.modules.len();
        let mut names: Vec<String> = vec![module.name.clone()];
        names.extend(spellings.iter().cloned());
        for name in names {
            self.by_name.insert(names::kohya_name(&name), index);
            self.by_name.insert(name, index);
        }
        self.modules.push(module);
    }

    fn find(&self, name: &str) -> Option<&TargetModule> {
        self.by_name.get(name).map(|&i| &self.modules[i])
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }
}

/// One low-rank term `scale · up·down`, f32 on the CPU.
#[derive(Debug, Clone)]
struct LowRank {
    down: Tensor, // [rank, in]
    up: Tensor,   // [out, rank]
    scale: f64,
}

/// Everything the loaded LoRAs add to one parameter.
#[derive(Debug, Clone, Default)]
pub struct ParamPatch {
    low_rank: Vec<LowRank>,
    /// Full deltas (any shape with the parameter's element count) and their strength.
    full: Vec<(Tensor, f64)>,
}

impl ParamPatch {
    /// The update to add to a parameter of `shape`, f32 on `device`: the full deltas, and the
    /// low-rank terms too when `with_low_rank`. `None` when nothing applies.
    pub(crate) fn delta(
        &self,
        key: &str,
        shape: &Shape,
        with_low_rank: bool,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        self.check_fits(key, shape.dims())?;
        let mut total: Option<Tensor> = None;
        let mut add = |term: Tensor| -> Result<()> {
            let term = term.reshape(shape)?;
            total = Some(match total.take() {
                Some(t) => (t + term)?,
                None => term,
            });
            Ok(())
        };
        for (diff, strength) in &self.full {
            add((diff.to_device(device)? * *strength)?)?;
        }
        if with_low_rank {
            for term in &self.low_rank {
                let up = term.up.to_device(device)?;
                let down = term.down.to_device(device)?;
                add((up.matmul(&down)? * term.scale)?)?;
            }
        }
        Ok(total)
    }

    /// Checks that every update has as many elements as a parameter of `shape` (without
    /// forming the low-rank products): an update of another model size is an error naming the
    /// layer and both shapes.
    fn check_fits(&self, key: &str, shape: &[usize]) -> Result<()> {
        let elems: usize = shape.iter().product();
        let low_rank = self
            .low_rank
            .iter()
            .map(|t| -> Result<Vec<usize>> { Ok(vec![t.up.dim(0)?, t.down.dim(1)?]) });
        let full = self
            .full
            .iter()
            .map(|(d, _)| -> Result<Vec<usize>> { Ok(d.dims().to_vec()) });
        for dims in low_rank.chain(full) {
            let dims = dims?;
            if dims.iter().product::<usize>() != elems {
                return Err(ModelError::InvalidInput(format!(
                    "LoRA update for `{key}` has shape {dims:?} but the layer is {shape:?}; \
                     the LoRA was made for another model size"
                )));
            }
        }
        Ok(())
    }

    /// The low-rank terms of a linear layer `[out, in]` as one pair, concatenated along the
    /// rank with each term's scale folded into its up factor: (down [Σr, in], up [out, Σr]) in
    /// `dtype` on `device`. `None` when the layer has no low-rank term.
    pub(crate) fn adapter(
        &self,
        key: &str,
        out_features: usize,
        in_features: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Option<(Tensor, Tensor)>> {
        if self.low_rank.is_empty() {
            return Ok(None);
        }
        let mut downs = Vec::new();
        let mut ups = Vec::new();
        for term in &self.low_rank {
            if term.down.dim(1)? != in_features || term.up.dim(0)? != out_features {
                return Err(ModelError::InvalidInput(format!(
                    "LoRA factors for `{key}` are {:?} and {:?} but the layer is [{out_features}, \
                     {in_features}]; the LoRA was made for another model size",
                    term.up.dims(),
                    term.down.dims()
                )));
            }
            downs.push(term.down.clone());
            ups.push((&term.up * term.scale)?);
        }
        let down = Tensor::cat(&downs, 0)?.to_dtype(dtype)?.to_device(device)?;
        let up = Tensor::cat(&ups, 1)?.to_dtype(dtype)?.to_device(device)?;
        Ok(Some((down, up)))
    }
}

/// What was read from one LoRA file.
#[derive(Debug, Clone)]
pub struct LoraSummary {
    pub spec: LoraSpec,
    /// The key form recognised (for messages).
    pub format: &'static str,
    /// Layers updated.
    pub layers: usize,
    /// Keys that matched no layer and were ignored (only with `allow_partial`).
    pub ignored: Vec<String>,
}

/// The LoRAs of one model, matched onto its parameters.
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    patches: HashMap<String, ParamPatch>,
    mode: LoraMode,
    summaries: Vec<LoraSummary>,
}

impl LoraSet {
    /// Reads every file of `specs` and matches its keys onto `targets`. A file whose keys match
    /// no layer is an error; one that matches only some is an error naming a few unmatched keys
    /// unless `allow_partial`, which ignores them (they are listed in the summary).
    pub fn open(
        specs: &[LoraSpec],
        targets: &LoraTargets,
        mode: LoraMode,
        allow_partial: bool,
    ) -> Result<Self> {
        let mut set = LoraSet {
            mode,
            ..Default::default()
        };
        for spec in specs {
            let summary = set.add_file(spec, targets, allow_partial)?;
            set.summaries.push(summary);
        }
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
    }

    pub fn mode(&self) -> LoraMode {
        self.mode
    }

    pub fn summaries(&self) -> &[LoraSummary] {
        &self.summaries
    }

    /// Checks every update against the shapes of the model's parameters without loading them:
    /// `shape_of` gives a parameter's stored shape by canonical key (`None` when absent). Errors
    /// name the layer and both shapes, as loading would, but before any weights are read.
    pub fn check_shapes(&self, shape_of: impl Fn(&str) -> Option<Vec<usize>>) -> Result<()> {
        let mut keys: Vec<&String> = self.patches.keys().collect();
        keys.sort();
        for key in keys {
            let patch = &self.patches[key];
            let Some(shape) = shape_of(key) else {
                return Err(ModelError::InvalidInput(format!(
                    "a LoRA updates `{key}`, which this model's checkpoint does not have"
                )));
            };
            patch.check_fits(key, &shape)?;
        }
        Ok(())
    }

    /// The update of one parameter (canonical key), if any LoRA touches it.
    pub(crate) fn patch(&self, param: &str) -> Option<&ParamPatch> {
        self.patches.get(param)
    }

    fn add_file(
        &mut self,
        spec: &LoraSpec,
        targets: &LoraTargets,
        allow_partial: bool,
    ) -> Result<LoraSummary> {
        let bad = |reason: String| ModelError::Lora {
            path: spec.path.display().to_string(),
            reason,
        };
        let files = WeightFiles::open(&spec.path)?;
        let keys: Vec<String> = files.keys().iter().map(|k| k.to_string()).collect();
        if keys.is_empty() {
            return Err(bad("holds no tensors".into()));
        }
        let format = detect_format(&keys);

        // module (as spelled in the file) → role → key
        let mut groups: BTreeMap<&str, HashMap<Role, &str>> = BTreeMap::new();
        let mut unmatched: Vec<String> = Vec::new();
        for key in &keys {
            match names::split_key(key) {
                Some((module, role)) if targets.find(module).is_some() => {
                    groups.entry(module).or_default().insert(role, key);
                }
                _ => unmatched.push(key.clone()),
            }
        }
        if groups.is_empty() {
            return Err(bad(format!(
                "none of its {} tensors matches a layer of this model (first keys: {}); \
                 is it a LoRA for another model?",
                keys.len(),
                sample(&keys)
            )));
        }
        if !unmatched.is_empty() && !allow_partial {
            return Err(bad(format!(
                "{} of its {} tensors match no layer of this model (e.g. {}); pass \
                 --lora-partial to apply the rest and ignore them",
                unmatched.len(),
                keys.len(),
                sample(&unmatched)
            )));
        }

        let load =
            |key: &str| -> Result<Tensor> { Ok(files.load(key, None, DType::F32, &Device::Cpu)?) };
        let mut layers = 0;
        for (module, roles) in &groups {
            let target = targets.find(module).expect("grouped keys have a target");
            let mut touched = false;
            match (roles.get(&Role::Down), roles.get(&Role::Up)) {
                (Some(down_key), Some(up_key)) => {
                    let down = load(down_key)?;
                    let up = load(up_key)?;
                    let rank = down.dim(0)?;
                    if rank == 0 || up.elem_count() % rank != 0 || up.dim(1)? != rank {
                        return Err(bad(format!(
                            "`{down_key}` {:?} and `{up_key}` {:?} do not form a low-rank pair",
                            down.dims(),
                            up.dims()
                        )));
                    }
                    let down = down.reshape((rank, down.elem_count() / rank))?;
                    let up = up.reshape((up.dim(0)?, rank))?;
                    let alpha = match roles.get(&Role::Alpha) {
                        Some(key) => Some(scalar(&load(key)?).map_err(|e| bad(e.to_string()))?),
                        None => None,
                    };
                    let scale = spec.strength * alpha.map_or(1.0, |a| a / rank as f64);
                    self.patches
                        .entry(target.weight.clone())
                        .or_default()
                        .low_rank
                        .push(LowRank { down, up, scale });
                    touched = true;
                }
                (None, None) => {}
                (Some(key), None) | (None, Some(key)) => {
                    return Err(bad(format!(
                        "`{key}` has no partner: a LoRA layer needs both its down (A) and up (B) \
                         factors"
                    )));
                }
            }
            if let Some(key) = roles.get(&Role::WeightDiff) {
                self.patches
                    .entry(target.weight.clone())
                    .or_default()
                    .full
                    .push((load(key)?, spec.strength));
                touched = true;
            }
            if let Some(key) = roles.get(&Role::BiasDiff) {
                let Some(bias) = &target.bias else {
                    return Err(bad(format!(
                        "`{key}` updates a bias, but `{module}` has none"
                    )));
                };
                self.patches
                    .entry(bias.clone())
                    .or_default()
                    .full
                    .push((load(key)?, spec.strength));
                touched = true;
            }
            layers += usize::from(touched);
        }
        Ok(LoraSummary {
            spec: spec.clone(),
            format,
            layers,
            ignored: unmatched,
        })
    }
}

/// The first few of `keys`, for an error message.
fn sample(keys: &[String]) -> String {
    let shown: Vec<&str> = keys.iter().take(3).map(String::as_str).collect();
    let more = keys.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

fn scalar(t: &Tensor) -> std::result::Result<f64, String> {
    if t.elem_count() != 1 {
        return Err(format!("alpha has shape {:?}, expected a scalar", t.dims()));
    }
    let value = t
        .flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| e.to_string())?[0] as f64;
    if !value.is_finite() {
        return Err(format!("alpha is {value}"));
    }
    Ok(value)
}

/// The key form of a file, from its names (for the summary line).
fn detect_format(keys: &[String]) -> &'static str {
    let any = |needle: &str| keys.iter().any(|k| k.contains(needle));
    if any("lora_unet_") {
        "kohya"
    } else if any("diffusion_model.") {
        if any("lora_down") {
            "original Wan (lora_down/up)"
        } else {
            "original Wan (lora_A/B)"
        }
    } else if any("lora_A") {
        "diffusers/PEFT"
    } else {
        "full deltas"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_a_strength_only_after_the_last_colon() {
        let s: LoraSpec = "a.safetensors".parse().unwrap();
        assert_eq!(
            (s.path.to_str().unwrap(), s.strength),
            ("a.safetensors", 1.0)
        );
        let s: LoraSpec = "dir/a.safetensors:0.5".parse().unwrap();
        assert_eq!(
            (s.path.to_str().unwrap(), s.strength),
            ("dir/a.safetensors", 0.5)
        );
        let s: LoraSpec = "C:/loras/a.safetensors".parse().unwrap();
        assert_eq!(
            (s.path.to_str().unwrap(), s.strength),
            ("C:/loras/a.safetensors", 1.0)
        );
        let s: LoraSpec = "a.safetensors:-1".parse().unwrap();
        assert_eq!(s.strength, -1.0);
        assert!("".parse::<LoraSpec>().is_err());
        assert!(":0.5".parse::<LoraSpec>().is_err());
        assert!("a:inf".parse::<LoraSpec>().is_err());
    }
}
