//! Run-time CPU feature detection.
//!
//! ferrolm ships one binary per platform built for the baseline ISA (no `target-cpu=native`), and
//! picks faster code paths at run time from what this module reports. Detection happens once and
//! is cached; the kernels' dispatch point reads [`features`].
//!
//! Every flag is present on every platform (false where it cannot apply), so callers can index
//! without knowing the architecture.

use std::sync::OnceLock;

/// The instruction-set extensions that matter to ferrolm's kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuFeatures {
    // x86 / x86_64
    pub sse4_2: bool,
    pub avx: bool,
    pub avx2: bool,
    pub fma: bool,
    pub f16c: bool,
    pub bmi2: bool,
    pub avx_vnni: bool,
    pub avx512f: bool,
    pub avx512bw: bool,
    pub avx512dq: bool,
    pub avx512vl: bool,
    pub avx512_vnni: bool,
    pub avx512_bf16: bool,
    pub avx512_fp16: bool,
    // aarch64
    pub neon: bool,
    pub dotprod: bool,
    pub i8mm: bool,
    pub fp16: bool,
    pub bf16: bool,
    pub sve: bool,
}

impl CpuFeatures {
    /// `(name, value)` pairs in a stable order; the names are what Python's
    /// `ferrolm.cpu_features()` returns as keys.
    pub fn flags(&self) -> [(&'static str, bool); 20] {
        [
            ("sse4_2", self.sse4_2),
            ("avx", self.avx),
            ("avx2", self.avx2),
            ("fma", self.fma),
            ("f16c", self.f16c),
            ("bmi2", self.bmi2),
            ("avx_vnni", self.avx_vnni),
            ("avx512f", self.avx512f),
            ("avx512bw", self.avx512bw),
            ("avx512dq", self.avx512dq),
            ("avx512vl", self.avx512vl),
            ("avx512_vnni", self.avx512_vnni),
            ("avx512_bf16", self.avx512_bf16),
            ("avx512_fp16", self.avx512_fp16),
            ("neon", self.neon),
            ("dotprod", self.dotprod),
            ("i8mm", self.i8mm),
            ("fp16", self.fp16),
            ("bf16", self.bf16),
            ("sve", self.sve),
        ]
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    fn detect() -> Self {
        // `is_x86_feature_detected!` checks both CPUID and that the OS saves the wider
        // registers (XCR0), so a flag here means the instructions are safe to execute.
        CpuFeatures {
            sse4_2: is_x86_feature_detected!("sse4.2"),
            avx: is_x86_feature_detected!("avx"),
            avx2: is_x86_feature_detected!("avx2"),
            fma: is_x86_feature_detected!("fma"),
            f16c: is_x86_feature_detected!("f16c"),
            bmi2: is_x86_feature_detected!("bmi2"),
            avx_vnni: is_x86_feature_detected!("avxvnni"),
            avx512f: is_x86_feature_detected!("avx512f"),
            avx512bw: is_x86_feature_detected!("avx512bw"),
            avx512dq: is_x86_feature_detected!("avx512dq"),
            avx512vl: is_x86_feature_detected!("avx512vl"),
            avx512_vnni: is_x86_feature_detected!("avx512vnni"),
            avx512_bf16: is_x86_feature_detected!("avx512bf16"),
            avx512_fp16: is_x86_feature_detected!("avx512fp16"),
            ..CpuFeatures::default()
        }
    }

    #[cfg(target_arch = "aarch64")]
    fn detect() -> Self {
        use std::arch::is_aarch64_feature_detected;
        CpuFeatures {
            neon: is_aarch64_feature_detected!("neon"),
            dotprod: is_aarch64_feature_detected!("dotprod"),
            i8mm: is_aarch64_feature_detected!("i8mm"),
            fp16: is_aarch64_feature_detected!("fp16"),
            bf16: is_aarch64_feature_detected!("bf16"),
            sve: is_aarch64_feature_detected!("sve"),
            ..CpuFeatures::default()
        }
    }

    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    fn detect() -> Self {
        CpuFeatures::default()
    }
}

/// The features of the CPU this process runs on, detected on first call.
pub fn features() -> &'static CpuFeatures {
    static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
    FEATURES.get_or_init(CpuFeatures::detect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names_are_unique_and_cover_every_field() {
        let f = CpuFeatures::default();
        let names: std::collections::BTreeSet<_> = f.flags().iter().map(|(n, _)| *n).collect();
        assert_eq!(names.len(), f.flags().len());
        // `flags()` must list every field: a struct with all fields true must report all true.
        let all = CpuFeatures {
            sse4_2: true,
            avx: true,
            avx2: true,
            fma: true,
            f16c: true,
            bmi2: true,
            avx_vnni: true,
            avx512f: true,
            avx512bw: true,
            avx512dq: true,
            avx512vl: true,
            avx512_vnni: true,
            avx512_bf16: true,
            avx512_fp16: true,
            neon: true,
            dotprod: true,
            i8mm: true,
            fp16: true,
            bf16: true,
            sve: true,
        };
        assert!(all.flags().iter().all(|(_, v)| *v));
    }

    #[test]
    fn detection_is_consistent() {
        let f = features();
        // Implied features: a CPU reporting the wider set must report the narrower one.
        if f.avx2 {
            assert!(f.avx);
        }
        if f.avx512bw || f.avx512_vnni || f.avx512_bf16 {
            assert!(f.avx512f);
        }
        #[cfg(target_arch = "x86_64")]
        assert!(!f.neon, "neon cannot be set on x86_64");
        #[cfg(target_arch = "aarch64")]
        assert!(f.neon, "every aarch64 CPU has Advanced SIMD");
        assert_eq!(f, features());
    }
}
