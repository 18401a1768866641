//! chaperone patch 1 (third_party/README.md): which SIMD paths this CPU can take, decided at run time.
//!
//! The crates.io release chooses its AVX2 code with `cfg(target_feature = "avx2")`, so a build for the
//! x86-64 baseline (every distribution package) always took the scalar code: key generation 16.5 ms
//! instead of 2.7 ms, decapsulation 2.4 ms instead of 0.4 ms, on an AMD EPYC with AVX2. A bastion pays
//! both on every login to an OpenSSH 9.0–9.8 device. The AVX2 functions are now compiled on every
//! x86_64 build (each is `#[target_feature(enable = "avx2")]`, as before) and taken when the CPU has
//! AVX2; on a build that enables AVX2 at compile time the check is a constant.

#[cfg(all(target_arch = "x86_64", not(feature = "force-scalar")))]
cpufeatures::new!(avx2_cpuid, "avx2");

/// Whether this CPU runs AVX2 (cached after the first CPUID).
#[cfg(all(target_arch = "x86_64", not(feature = "force-scalar")))]
#[inline(always)]
pub(crate) fn avx2() -> bool {
    avx2_cpuid::get()
}
