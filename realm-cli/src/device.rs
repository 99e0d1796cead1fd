//! `--device`: which backend runs the model.

use anyhow::{bail, Result};
use realm_compute_gpu::{Dequantized, GpuBackend, GpuDevice, StepMode};

/// Where a model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// Realm's CPU backend (SIMD kernels, rayon).
    Cpu,
    /// The candle backend on a device (`cuda[:N]`, `metal[:N]`, or
    /// `candle-cpu`, candle's CPU device, which runs the GPU code path
    /// anywhere).
    Gpu(GpuDevice),
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "candle-cpu" => Ok(Self::Gpu(GpuDevice::Cpu)),
            // The GPU crate reads `cpu:0` as candle's CPU device; here `cpu`
            // is Realm's own backend, which has no index.
            other if other.starts_with("cpu:") => Err(format!(
                "unknown device `{other}` (the CPU backend is `cpu`, candle's CPU device \
                 `candle-cpu`)"
            )),
            other => GpuDevice::parse(other).map(Self::Gpu),
        }
    }
}

/// The `--device` option, shared by `run` and `bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Backend: cpu, cuda[:N], metal[:N], or candle-cpu (the GPU backend on
    /// candle's CPU device).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// How the GPU backend runs a decode step: recorded once per 256
    /// positions as a CUDA graph and replayed (the default on CUDA), static
    /// (the same ops and inputs, not recorded), or op by op (the default
    /// elsewhere; `REALM_CUDA_GRAPHS=0` makes it CUDA's too).
    #[arg(long, value_enum)]
    pub steps: Option<Steps>,
    /// Put matrices of the types candle cannot multiply (MXFP4, IQ4_NL,
    /// IQ4_XS) on the GPU dequantized, in f16 or f32; without it the GPU
    /// backend refuses a model with them.
    #[arg(long, value_enum, value_name = "TYPE")]
    pub dequantize: Option<DequantizeTo>,
}

/// The `--dequantize` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DequantizeTo {
    F16,
    F32,
}

impl From<DequantizeTo> for Dequantized {
    fn from(d: DequantizeTo) -> Self {
        match d {
            DequantizeTo::F16 => Self::F16,
            DequantizeTo::F32 => Self::F32,
        }
    }
}

/// The `--steps` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Steps {
    Recorded,
    Static,
    OpByOp,
}

impl From<Steps> for StepMode {
    fn from(s: Steps) -> Self {
        match s {
            Steps::Recorded => Self::Recorded,
            Steps::Static => Self::Static,
            Steps::OpByOp => Self::OpByOp,
        }
    }
}

impl DeviceArgs {
    /// Opens the GPU backend; an error for `cpu`, which callers handle first.
    pub fn gpu(&self) -> Result<GpuBackend> {
        match self.device {
            Device::Cpu => bail!("the cpu device does not use the GPU backend"),
            Device::Gpu(d) => {
                let start = std::time::Instant::now();
                let mut b = GpuBackend::new(d)?.with_dequantized(self.dequantize.map(Into::into));
                if let Some(steps) = self.steps {
                    b = b.with_steps(steps.into());
                }
                eprintln!(
                    "realm: opened {d} in {:.0} ms",
                    start.elapsed().as_secs_f64() * 1e3
                );
                Ok(b)
            }
        }
    }
}
