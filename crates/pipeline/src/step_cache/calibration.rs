//! What a step cache knows about a model before a run: MagCache's per-step magnitude ratios of
//! the blocks' residual and TeaCache's polynomial. Both are data: the published values for Wan2.1
//! T2V 1.3B and 14B are built in under a name a registry entry gives (`cache_calibration`), and
//! any other model is calibrated with `vdit generate --cache-calibrate FILE`, which writes the
//! JSON file [`CalibrationFile`] that `--cache-calibration FILE` (or the model folder's
//! `cache_calibration`) reads back.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Result, VditError};

/// MagCache's calibration: for each step, the mean over tokens of ‖residual(step)‖ /
/// ‖residual(step − 1)‖ per guidance branch, recorded on an uncached run; the first step's is 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MagRatios {
    /// The conditional (prompt) branch, one ratio per step.
    pub cond: Vec<f64>,
    /// The unconditional (negative prompt) branch; absent when calibrated without guidance (the
    /// conditional ratios then serve both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncond: Option<Vec<f64>>,
}

impl MagRatios {
    /// The published layout: one flat list, conditional and unconditional interleaved per step.
    fn interleaved(values: &[f64]) -> Self {
        Self {
            cond: values.iter().step_by(2).copied().collect(),
            uncond: Some(values.iter().skip(1).step_by(2).copied().collect()),
        }
    }

    /// Steps calibrated.
    pub fn steps(&self) -> usize {
        self.cond.len()
    }

    /// The ratios of `branches` branches (1: conditional only; 2: conditional, unconditional)
    /// for a run of `steps` steps: as recorded when the counts agree, else each branch's list
    /// resampled to `steps` values by nearest index (MagCache's own rule for other step counts:
    /// step i reads entry round(i · (n − 1)/(steps − 1)), ties to even; one step reads the last).
    pub fn for_run(&self, steps: usize, branches: usize) -> Vec<Vec<f64>> {
        let uncond = self.uncond.as_ref().unwrap_or(&self.cond);
        [&self.cond, uncond]
            .into_iter()
            .take(branches.clamp(1, 2))
            .map(|list| nearest_resample(list, steps))
            .collect()
    }
}

/// `values` resampled to `target` entries by nearest index (see [`MagRatios::for_run`]).
pub fn nearest_resample(values: &[f64], target: usize) -> Vec<f64> {
    let n = values.len();
    if n == target || n == 0 {
        return values.to_vec();
    }
    if target == 1 {
        return vec![values[n - 1]];
    }
    let scale = (n - 1) as f64 / (target - 1) as f64;
    (0..target)
        .map(|i| values[((i as f64 * scale).round_ties_even() as usize).min(n - 1)])
        .collect()
}

/// A model's step-cache calibration, from a built-in table or a calibration file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Where it came from: a built-in name or a file path (printed and recorded in the sidecar).
    pub source: String,
    #[serde(skip)]
    pub mag_ratios: Option<MagRatios>,
    /// TeaCache's rescaling polynomial on the relative L1 change of the blocks' time modulation
    /// (e0), highest degree first.
    #[serde(skip)]
    pub teacache: Option<Vec<f64>>,
}

/// Names of the built-in calibrations, for messages.
pub const BUILTIN_NAMES: &[&str] = &["wan2.1-t2v-1.3b", "wan2.1-t2v-14b"];

/// MagCache's published magnitude ratios of Wan2.1 T2V 1.3B (50 UniPC steps, guided;
/// conditional and unconditional interleaved; the first step's pair is the padding 1).
const WAN21_T2V_1_3B_MAG_RATIOS: [f64; 100] = [
    1.0, 1.0, 1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762, 0.99634,
    0.99685, 0.99567, 0.99586, 0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563, 0.99511,
    0.99506, 0.99535, 0.99531, 0.99552, 0.99549, 0.99541, 0.99539, 0.9954, 0.99536, 0.99489,
    0.99485, 0.99518, 0.99514, 0.99484, 0.99478, 0.99481, 0.99479, 0.99415, 0.99413, 0.99419,
    0.99416, 0.99396, 0.99393, 0.99388, 0.99386, 0.99349, 0.99349, 0.99309, 0.99304, 0.9927,
    0.9927, 0.99228, 0.99226, 0.99171, 0.9917, 0.99137, 0.99135, 0.99068, 0.99063, 0.99005,
    0.99003, 0.98944, 0.98942, 0.98849, 0.98849, 0.98758, 0.98757, 0.98644, 0.98643, 0.98504,
    0.98503, 0.9836, 0.98359, 0.98202, 0.98201, 0.97977, 0.97978, 0.97717, 0.97718, 0.9741,
    0.97411, 0.97003, 0.97002, 0.96538, 0.96541, 0.9593, 0.95933, 0.95086, 0.95089, 0.94013,
    0.94019, 0.92402, 0.92414, 0.90241, 0.9026, 0.86821, 0.86868, 0.81838, 0.81939,
];

/// MagCache's published magnitude ratios of Wan2.1 T2V 14B (same layout).
const WAN21_T2V_14B_MAG_RATIOS: [f64; 100] = [
    1.0, 1.0, 1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771, 0.9966,
    0.99658, 0.99482, 0.99476, 0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431, 0.99533,
    0.99545, 0.99468, 0.99465, 0.99438, 0.99434, 0.99516, 0.99517, 0.99384, 0.9938, 0.99404,
    0.99401, 0.99517, 0.99516, 0.99409, 0.99408, 0.99428, 0.99426, 0.99347, 0.99343, 0.99418,
    0.99416, 0.99271, 0.99269, 0.99313, 0.99311, 0.99215, 0.99215, 0.99218, 0.99215, 0.99216,
    0.99217, 0.99163, 0.99161, 0.99138, 0.99135, 0.98982, 0.9898, 0.98996, 0.98995, 0.9887,
    0.98866, 0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857, 0.98501, 0.98498, 0.9838, 0.98376,
    0.98177, 0.98173, 0.98037, 0.98035, 0.97678, 0.97677, 0.97546, 0.97543, 0.97184, 0.97183,
    0.96711, 0.96708, 0.96349, 0.96345, 0.95629, 0.95625, 0.94926, 0.94929, 0.93964, 0.93961,
    0.92511, 0.92504, 0.90693, 0.90678, 0.8796, 0.87945, 0.86111, 0.86189,
];

/// TeaCache4Wan2.1's polynomials for the modulation (e0) input ("retention steps" form).
const WAN21_T2V_1_3B_TEACACHE: [f64; 5] = [
    -5.21862437e+04,
    9.23041404e+03,
    -5.28275948e+02,
    1.36987616e+01,
    -4.99875664e-02,
];
const WAN21_T2V_14B_TEACACHE: [f64; 5] = [
    -3.03318725e+05,
    4.90537029e+04,
    -2.65530556e+03,
    5.87365115e+01,
    -3.15583525e-01,
];

impl Calibration {
    /// The built-in calibration named `name` ([`BUILTIN_NAMES`]).
    pub fn builtin(name: &str) -> Option<Self> {
        let (ratios, teacache): (&[f64], &[f64]) = match name {
            "wan2.1-t2v-1.3b" => (&WAN21_T2V_1_3B_MAG_RATIOS, &WAN21_T2V_1_3B_TEACACHE),
            "wan2.1-t2v-14b" => (&WAN21_T2V_14B_MAG_RATIOS, &WAN21_T2V_14B_TEACACHE),
            _ => return None,
        };
        Some(Self {
            source: format!("built-in {name}"),
            mag_ratios: Some(MagRatios::interleaved(ratios)),
            teacache: Some(teacache.to_vec()),
        })
    }

    /// Reads a calibration file ([`CalibrationFile`]); errors are one line naming `flag` and
    /// the file.
    pub fn from_file(flag: &str, path: &Path) -> Result<Self> {
        let bad = |reason: String| {
            VditError::InvalidSetting(format!("{flag} {}: {reason}", path.display()))
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let file: CalibrationFile = serde_json::from_str(&text)
            .map_err(|e| bad(format!("not a calibration file ({e})")))?;
        if file.magcache.is_none() && file.teacache.is_none() {
            return Err(bad(
                "it has neither `magcache` ratios nor `teacache` coefficients".into(),
            ));
        }
        if let Some(ratios) = &file.magcache {
            let uncond_len = ratios.uncond.as_ref().map_or(ratios.cond.len(), Vec::len);
            let all = ratios.cond.iter().chain(ratios.uncond.iter().flatten());
            if ratios.cond.is_empty() || uncond_len != ratios.cond.len() {
                return Err(bad(
                    "`magcache` needs one ratio per step for each branch".into()
                ));
            }
            if all.clone().any(|r| !r.is_finite() || *r <= 0.0) {
                return Err(bad("`magcache` ratios must be finite and positive".into()));
            }
        }
        if let Some(coefficients) = &file.teacache {
            if coefficients.is_empty() || coefficients.iter().any(|c| !c.is_finite()) {
                return Err(bad("`teacache` needs finite polynomial coefficients".into()));
            }
        }
        Ok(Self {
            source: path.display().to_string(),
            mag_ratios: file.magcache,
            teacache: file.teacache,
        })
    }
}

/// The JSON file `--cache-calibrate` writes (and `--cache-calibration` reads).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibrationFile {
    /// Marks the file as vdit's (so a later calibration may replace it).
    #[serde(default)]
    pub vdit_version: String,
    /// The run it was recorded on (informative).
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub steps: usize,
    #[serde(default)]
    pub guidance_scale: f64,
    #[serde(default)]
    pub shift: f64,
    #[serde(default)]
    pub size: String,
    #[serde(default)]
    pub frames: u32,
    #[serde(default)]
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub magcache: Option<MagRatios>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacache: Option<Vec<f64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_lists_split_into_branches() {
        let c = Calibration::builtin("wan2.1-t2v-1.3b").unwrap();
        let ratios = c.mag_ratios.unwrap();
        assert_eq!(ratios.steps(), 50);
        assert_eq!(ratios.cond[..2], [1.0, 1.0124]);
        assert_eq!(ratios.uncond.as_ref().unwrap()[..2], [1.0, 1.02213]);
        assert_eq!(*ratios.cond.last().unwrap(), 0.81838);
        assert!(Calibration::builtin("wan2.1-t2v-14b").is_some());
        assert!(Calibration::builtin("other").is_none());
    }

    /// Hand-computed: 5 values to 3 reads entries round(0), round(2), round(4); to 4 reads
    /// round(0), round(1.333) = 1, round(2.667) = 3, 4; 3 values to 5 reads round(0, 0.5, 1,
    /// 1.5, 2) with ties to even = 0, 0, 1, 2, 2.
    #[test]
    fn nearest_resampling_follows_the_published_rule() {
        let v = [10.0, 11.0, 12.0, 13.0, 14.0];
        assert_eq!(nearest_resample(&v, 3), [10.0, 12.0, 14.0]);
        assert_eq!(nearest_resample(&v, 4), [10.0, 11.0, 13.0, 14.0]);
        assert_eq!(nearest_resample(&v, 1), [14.0]);
        assert_eq!(nearest_resample(&v, 5), v);
        assert_eq!(
            nearest_resample(&[1.0, 2.0, 3.0], 5),
            [1.0, 1.0, 2.0, 3.0, 3.0]
        );
    }

    #[test]
    fn a_file_without_data_or_with_bad_ratios_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.json");
        std::fs::write(&path, r#"{"model": "x"}"#).unwrap();
        let e = Calibration::from_file("--cache-calibration", &path).unwrap_err();
        assert!(e.to_string().contains("neither"), "{e}");
        std::fs::write(&path, r#"{"magcache": {"cond": [1.0, -2.0]}}"#).unwrap();
        assert!(Calibration::from_file("--cache-calibration", &path).is_err());
        std::fs::write(
            &path,
            r#"{"magcache": {"cond": [1.0, 0.9], "uncond": [1.0]}}"#,
        )
        .unwrap();
        assert!(Calibration::from_file("--cache-calibration", &path).is_err());
        std::fs::write(&path, r#"{"magcache": {"cond": [1.0, 0.9]}}"#).unwrap();
        let c = Calibration::from_file("--cache-calibration", &path).unwrap();
        assert_eq!(c.mag_ratios.unwrap().for_run(2, 2), vec![vec![1.0, 0.9]; 2]);
    }
}
