//! `--wasm`: run generation through a WebAssembly guest (realm-wasm) on
//! realm-runtime, with the same flags and output as the native path.

use std::path::PathBuf;

use anyhow::{Context, Result};
use realm_core::catalog;
use realm_runtime::{
    GenerateRequest, GenerationStats, KvDtype, Runtime, RuntimeConfig, Tenant, TenantConfig,
    TenantLora, GUEST_WASM_PATH,
};

/// Flags of the commands that can run through a guest.
#[derive(Debug, Clone, clap::Args)]
pub struct GuestArgs {
    /// Generate inside a WebAssembly guest (tokenizer, sampler and loop in
    /// wasm; the model math on the host).
    #[arg(long)]
    pub wasm: bool,
    /// The guest module (default: what `cargo xtask wasm` builds, or
    /// $REALM_GUEST).
    #[arg(long, requires = "wasm")]
    pub guest: Option<PathBuf>,
    /// Where compiled guests are kept between runs, so that a later run
    /// loads instead of compiling (default: ~/.cache/realm/modules).
    #[arg(long, value_name = "DIR", requires = "wasm")]
    pub guest_cache: Option<PathBuf>,
    /// Compile the guest in every run, keeping nothing on disk.
    #[arg(long, requires = "wasm", conflicts_with = "guest_cache")]
    pub no_guest_cache: bool,
}

/// The directory compiled guests are kept in, if any.
fn module_cache(args: &GuestArgs) -> Option<PathBuf> {
    if args.no_guest_cache {
        return None;
    }
    args.guest_cache.clone().or_else(|| {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".cache/realm/modules"))
    })
}

fn guest_path(args: &GuestArgs) -> PathBuf {
    args.guest
        .clone()
        .or_else(|| std::env::var_os("REALM_GUEST").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(GUEST_WASM_PATH))
}

/// A runtime with a model loaded and the guest module read: what tenants
/// are made from.
pub struct Host {
    pub runtime: Runtime,
    pub model: realm_runtime::ModelId,
    pub wasm: Vec<u8>,
    /// The model file.
    pub path: PathBuf,
    /// The scale of each of the model's LoRA adapters, in order: what its
    /// tenants run with.
    pub loras: Vec<f32>,
}

impl Host {
    /// Starts a runtime with `threads` CPU threads and tenants' KV caches of
    /// type `kv`, loads `model` and reads the guest module.
    pub fn start(
        args: &GuestArgs,
        model: &str,
        threads: usize,
        device: &crate::device::DeviceArgs,
        kv: KvDtype,
        lora: &crate::load::LoraArgs,
    ) -> Result<Self> {
        let path = catalog::resolve_model(model).map_err(anyhow::Error::msg)?;
        let wasm_path = guest_path(args);
        let wasm = std::fs::read(&wasm_path).with_context(|| {
            format!(
                "reading the guest {} (build it with `cargo xtask wasm`, or pass --guest)",
                wasm_path.display()
            )
        })?;
        let gpu = match device.device {
            crate::device::Device::Cpu => None,
            crate::device::Device::Gpu(d) => Some(d),
        };
        let runtime = Runtime::new(RuntimeConfig {
            threads,
            gpu,
            gpu_steps: device.steps.map(Into::into),
            kv_dtype: kv,
            module_cache: module_cache(args),
            ..RuntimeConfig::default()
        })?;
        let (files, loras): (Vec<PathBuf>, Vec<f32>) = lora.list().into_iter().unzip();
        let model = if files.is_empty() {
            runtime.load_model(&path)?
        } else {
            let id = realm_runtime::ModelId::new(&path.display().to_string());
            runtime.models().load_with_loras(&path, id, &files)?
        };
        Ok(Self {
            runtime,
            model,
            wasm,
            path,
            loras,
        })
    }

    /// A new tenant, granted the model (it keeps what it needs of the
    /// runtime alive).
    pub fn tenant(&self) -> Result<Tenant> {
        let mut config = TenantConfig::new(vec![self.model.clone()]);
        config.loras = (self.loras.iter().enumerate())
            .filter(|&(_, &scale)| scale != 0.0)
            .map(|(adapter, &scale)| TenantLora {
                model: self.model.clone(),
                adapter,
                scale,
            })
            .collect();
        Ok(self.runtime.tenant(&self.wasm, config)?)
    }
}

/// [`Host::start`] and one tenant: the guest as `realm run` uses it.
pub fn start(
    args: &GuestArgs,
    model: &str,
    threads: usize,
    device: &crate::device::DeviceArgs,
    kv: KvDtype,
    lora: &crate::load::LoraArgs,
) -> Result<Tenant> {
    let start = std::time::Instant::now();
    let host = Host::start(args, model, threads, device, kv, lora)?;
    let tenant = host.tenant()?;
    let how = match host.runtime.module_counts() {
        (0, 1) => "loaded compiled",
        _ => "compiled",
    };
    eprintln!(
        "realm: {} as a wasm tenant ({} KiB guest, {how}) in {:.0} ms",
        host.path.display(),
        host.wasm.len() / 1024,
        start.elapsed().as_secs_f64() * 1e3
    );
    Ok(tenant)
}

/// Generates through the guest, streaming to `on_text`.
pub fn generate(
    tenant: &mut Tenant,
    prompt: &str,
    req: &GenerateRequest,
    on_text: impl FnMut(&str),
) -> Result<GenerationStats> {
    Ok(tenant.generate(prompt, req, on_text)?)
}
