//! # realm-compute-gpu
//!
//! Realm's GPU backend: [`realm_core::backend::Backend`] on candle-core.
//!
//! - **Where it runs.** `--features cuda` gives CUDA devices, `--features
//!   metal` Metal devices (compiled where candle's Metal backend compiles;
//!   not run by Realm's CI). Without either feature the crate still builds,
//!   runs on candle's CPU device (which is how its tests run on machines
//!   without a GPU) and says clearly, when asked for a GPU, that this build
//!   has no GPU support.
//! - **Weights** go to the device once, from the memory-mapped GGUF, as
//!   candle quantized tensors in their GGUF type (no dequantized copy of a
//!   quantized matrix); matrix products use candle's quantized kernels, with
//!   Q/K/V and gate/up stacked into one matrix each.
//! - **Activations and the KV cache live on the device.** Buffers are device
//!   tensors; a decode step copies in the token ids and positions (one
//!   upload of a few bytes; a static step computes its RoPE angles on the
//!   device) and copies the logits out. KV
//!   caches are slots of shared blocks, so a batch of sessions attends with
//!   a few ops per block ([`realm_core::backend::AttentionOps::attend_rows`]).
//! - **Decode steps are recorded** as CUDA graphs and replayed
//!   ([`StepMode`], [`realm_core::backend::StepOps`]): one launch a step
//!   instead of about a thousand.
//! - **Fused kernels.** Decode attention, the gated units and the residual
//!   add with its norm are kernels of
//!   Realm's own (`kernels/*.cu`, built with `nvcc` under the `cuda`
//!   feature), each with a CPU form for candle's CPU device; see
//!   [`GpuBackend::with_fused_kernels`].
//! - **Threads.** The backend is `Sync`: tenants on many threads share it
//!   and its weights. On CUDA each thread's work goes to its own stream;
//!   the quantized products, which share candle's scratch, are ordered
//!   between streams by events.
//! - **Numerics.** Results agree with the CPU backend within float rounding
//!   and 8-bit activation quantization (tested op by op and on whole
//!   synthetic models), but unlike the CPU backend they are not promised to
//!   be bit-identical across batch sizes: GPU libraries pick kernels by
//!   shape.
//!
//! ```
//! use realm_compute_gpu::{GpuBackend, GpuDevice};
//! use realm_core::backend::{BackendCore, MatMulOps};
//! use realm_core::{GgmlType, TensorView};
//!
//! // candle's CPU device: every build has it.
//! let be = GpuBackend::new(GpuDevice::Cpu)?;
//! let w: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5, 0.5];
//! let shape = [4u64, 2];
//! let view = TensorView::new("w", GgmlType::F32, &shape, bytemuck::cast_slice(&w)).unwrap();
//! let w = be.weight(&view)?;
//! let x = be.upload(&[1.0, 1.0, 1.0, 1.0])?;
//! let mut out = be.buffer(2)?;
//! be.matmul(&mut be.workspace(), &w, &x, 1, &mut out)?;
//! let mut host = [0.0f32; 2];
//! be.download(&out, &mut host)?;
//! assert_eq!(host, [10.0, 2.0]);
//! # Ok::<(), realm_core::backend::BackendError>(())
//! ```
#![warn(missing_docs)]

mod attention;
mod buffer;
mod clock;
mod driver;
mod fused;
mod kv;
mod matmul;
mod ops;
mod scratch;
mod staging;
mod step;
#[cfg(any(feature = "cuda", test))]
mod strays;

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use realm_core::backend::{split_width, BackendCore, BackendError, BackendResult};

pub use buffer::GpuBuffer;
pub use clock::OpClock;
pub use kv::{GpuKvCache, LENGTH_STEP, MAX_SLOTS};
pub use matmul::{Dequantized, GpuWeight};
pub use ops::GpuWorkspace;
pub use step::{GpuRecording, GraphNodes, StepMode};

/// Which device a [`GpuBackend`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuDevice {
    /// candle's CPU device (for tests and machines without a GPU).
    Cpu,
    /// CUDA device `n` (needs the `cuda` feature).
    Cuda(usize),
    /// Metal device `n` (needs the `metal` feature).
    Metal(usize),
}

impl GpuDevice {
    /// Parses `cpu`, `cuda`, `cuda:N`, `metal` or `metal:N`.
    ///
    /// ```
    /// use realm_compute_gpu::GpuDevice;
    /// assert_eq!("cuda:1".parse::<GpuDevice>(), Ok(GpuDevice::Cuda(1)));
    /// assert_eq!("cuda".parse::<GpuDevice>(), Ok(GpuDevice::Cuda(0)));
    /// assert!("tpu".parse::<GpuDevice>().is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, index) = match s.split_once(':') {
            Some((k, i)) => (
                k,
                i.parse::<usize>()
                    .map_err(|_| format!("bad device index in `{s}`"))?,
            ),
            None => (s, 0),
        };
        match kind {
            "cpu" if index == 0 => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(index)),
            "metal" => Ok(Self::Metal(index)),
            _ => Err(format!(
                "unknown device `{s}` (expected cpu, cuda[:N] or metal[:N])"
            )),
        }
    }

    /// True when this build can open devices of this kind.
    pub fn compiled_in(self) -> bool {
        match self {
            Self::Cpu => true,
            Self::Cuda(_) => cfg!(feature = "cuda"),
            Self::Metal(_) => cfg!(feature = "metal"),
        }
    }
}

impl std::str::FromStr for GpuDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl fmt::Display for GpuDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

/// The backend: one candle device. It is `Sync`; sessions share it and
/// each brings its own [`GpuWorkspace`].
pub struct GpuBackend {
    device: Device,
    which: GpuDevice,
    name: String,
    steps: StepMode,
    /// Whether Realm's fused kernels replace candle's ops where they can.
    fused: bool,
    /// Whether the fused kernels also write their results' Q8_1 blocks
    /// for the products that read them.
    blocks: bool,
    /// Whether a long chunk of one sequence is attended by the tiled
    /// kernel (CUDA) rather than the decode kernel.
    tiled: bool,
    /// Whether the decode kernel may split long caches' keys over several
    /// blocks per row and head (CUDA).
    split_keys: bool,
    /// Whether a decode step's attention kernel also stores the step's
    /// keys and values (CUDA).
    store_in_attention: bool,
    /// The type matrices candle cannot multiply in their own type go to
    /// the device in, if any ([`GpuBackend::with_dequantized`]).
    dequantized: Option<Dequantized>,
    /// The blocks that fill the device (twice its multiprocessors).
    #[cfg(feature = "cuda")]
    fill: usize,
    /// What candle's matrix kernels need, for products whose input an op
    /// wrote in their layout (CUDA).
    #[cfg(feature = "cuda")]
    matrix_device: Option<fused::q8::cuda::MatrixDevice>,
    /// Orders the uses of candle's matrix-product scratch.
    scratch: scratch::Scratch,
    /// The blocks KV caches are slots of.
    kv_pool: kv::KvPool,
    /// Steps recorded and steps replayed, for reports and tests.
    recorded: AtomicU64,
    replayed: AtomicU64,
    /// Products that took their input as blocks.
    blocks_products: AtomicU64,
    /// The nodes of the last step recorded.
    last_graph: std::sync::Mutex<Option<GraphNodes>>,
    /// The device time of replayed steps, when asked.
    #[cfg(feature = "cuda")]
    replay_clock: Option<step::ReplayClock>,
    /// One thread at a time runs static steps with candle's upload cache.
    #[cfg(feature = "cuda")]
    upload_gate: std::sync::Arc<step::UploadGate>,
}

impl Drop for GpuBackend {
    fn drop(&mut self) {
        driver::make_current(&self.device);
    }
}

impl fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GpuBackend")
            .field("device", &self.which)
            .finish_non_exhaustive()
    }
}

impl GpuBackend {
    /// Opens `which`. A device kind this build was compiled without (no
    /// `cuda` feature, say) is a [`BackendError::Setup`] error saying so.
    ///
    /// Decode steps are recorded as CUDA graphs on CUDA devices
    /// ([`StepMode::Recorded`]) unless the environment variable
    /// `REALM_CUDA_GRAPHS` is `0`, and run op by op elsewhere; see
    /// [`GpuBackend::with_steps`].
    pub fn new(which: GpuDevice) -> BackendResult<Self> {
        if !which.compiled_in() {
            let feature = match which {
                GpuDevice::Metal(_) => "metal",
                _ => "cuda",
            };
            return Err(BackendError::Setup(format!(
                "this build of Realm has no {feature} support: rebuild with `--features {feature}` \
                 to use device {which}"
            )));
        }
        let device = match which {
            GpuDevice::Cpu => Ok(Device::Cpu),
            GpuDevice::Cuda(n) => Device::new_cuda(n),
            GpuDevice::Metal(n) => Device::new_metal(n),
        }
        .map_err(|e| {
            // candle appends a backtrace to some errors: keep the message.
            let e = e.to_string();
            let message = e.lines().next().unwrap_or_default();
            BackendError::Setup(format!("cannot open {which}: {message}"))
        })?;
        let name = match which {
            GpuDevice::Cpu => "candle-cpu".to_string(),
            other => format!("candle-{other}"),
        };
        let graphs = !matches!(std::env::var("REALM_CUDA_GRAPHS").as_deref(), Ok("0"));
        let steps = match which {
            GpuDevice::Cuda(_) if graphs => StepMode::Recorded,
            _ => StepMode::OpByOp,
        };
        // The fused kernels have CUDA forms and CPU forms, no Metal forms.
        let fused = !matches!(which, GpuDevice::Metal(_))
            && !matches!(std::env::var("REALM_FUSED_KERNELS").as_deref(), Ok("0"));
        #[cfg(feature = "cuda")]
        if let Device::Cuda(d) = &device {
            // SAFETY: cudarc's event tracking orders a tensor's uses across
            // CUDA streams it made; this device has one (candle's handle to
            // each thread's own stream) and nothing here makes another, so
            // cudarc only creates and destroys the events, four driver calls
            // per tensor, and never waits on them. Work on different threads'
            // streams is ordered by this crate (see `scratch` and `step`),
            // not by those events; this runs before any tensor exists.
            unsafe { d.disable_event_tracking() };
        }
        #[cfg(feature = "cuda")]
        let fill = match &device {
            Device::Cuda(d) => 2 * fused::multiprocessors(d).map_err(dev_err("open"))?,
            _ => 0,
        };
        #[cfg(feature = "cuda")]
        let matrix_device = match &device {
            Device::Cuda(d) => {
                Some(fused::q8::cuda::MatrixDevice::new(d).map_err(dev_err("open"))?)
            }
            _ => None,
        };
        Ok(Self {
            device,
            which,
            name,
            steps,
            fused,
            blocks: matches!(which, GpuDevice::Cuda(_))
                && !matches!(std::env::var("REALM_Q8_BLOCKS").as_deref(), Ok("0")),
            tiled: !matches!(std::env::var("REALM_TILED_ATTENTION").as_deref(), Ok("0")),
            split_keys: !matches!(std::env::var("REALM_SPLIT_KEYS").as_deref(), Ok("0")),
            store_in_attention: !matches!(
                std::env::var("REALM_STORE_IN_ATTENTION").as_deref(),
                Ok("0")
            ),
            dequantized: None,
            #[cfg(feature = "cuda")]
            fill,
            #[cfg(feature = "cuda")]
            matrix_device,
            scratch: scratch::Scratch::default(),
            kv_pool: kv::KvPool::default(),
            recorded: AtomicU64::new(0),
            replayed: AtomicU64::new(0),
            blocks_products: AtomicU64::new(0),
            last_graph: std::sync::Mutex::new(None),
            #[cfg(feature = "cuda")]
            replay_clock: matches!(std::env::var("REALM_TIME_REPLAYS").as_deref(), Ok("1"))
                .then(step::ReplayClock::default),
            #[cfg(feature = "cuda")]
            upload_gate: Default::default(),
        })
    }

    /// The backend taking matrices of the types candle cannot multiply
    /// (MXFP4, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0) dequantized, in `to`, so that a model with
    /// them runs (in two or four bytes a weight where the file has about
    /// half of one); `None`, the default, refuses them
    /// ([`MatMulOps::supports_matmul`] is false), so that no dequantized
    /// copy is made unless asked. f32 is the exact math of the file's
    /// weights; f16 rounds each weight once more (relatively within
    /// 2^-11; MXFP4's values, small whole numbers times a power of two,
    /// and the ternary types', an f16 scale times -1, 0 or 1, not at all
    /// within f16's range).
    ///
    /// ```
    /// use realm_compute_gpu::{Dequantized, GpuBackend, GpuDevice};
    /// use realm_core::backend::MatMulOps;
    /// use realm_core::GgmlType;
    ///
    /// let be = GpuBackend::new(GpuDevice::Cpu)?;
    /// assert!(!be.supports_matmul(GgmlType::MXFP4));
    /// let be = be.with_dequantized(Some(Dequantized::F16));
    /// assert!(be.supports_matmul(GgmlType::MXFP4));
    /// assert!(be.supports_matmul(GgmlType::IQ4_XS));
    /// # Ok::<(), realm_core::backend::BackendError>(())
    /// ```
    ///
    /// [`MatMulOps::supports_matmul`]: realm_core::backend::MatMulOps::supports_matmul
    pub fn with_dequantized(mut self, to: Option<Dequantized>) -> Self {
        self.dequantized = to;
        self
    }

    /// The backend running decode steps as `mode` says.
    ///
    /// ```
    /// use realm_compute_gpu::{GpuBackend, GpuDevice, StepMode};
    /// use realm_core::backend::StepOps;
    ///
    /// let be = GpuBackend::new(GpuDevice::Cpu)?;
    /// assert!(!be.static_steps());
    /// let be = be.with_steps(StepMode::Static);
    /// assert!(be.static_steps());
    /// # Ok::<(), realm_core::backend::BackendError>(())
    /// ```
    pub fn with_steps(mut self, mode: StepMode) -> Self {
        self.steps = mode;
        self
    }

    /// How this backend runs decode steps.
    pub fn steps(&self) -> StepMode {
        self.steps
    }

    /// The backend using Realm's fused kernels when `on`, and candle's ops
    /// otherwise: attention over the KV cache (a batch's rows, or a chunk
    /// of one sequence, of up to 8 rows off CUDA; heads of up to 256 values; with the norm and RoPE
    /// of the queries, and the norm, rotation and store of the keys), the
    /// gated units (SwiGLU, GeGLU) and the residual add with the norm after
    /// it. They are on by default on CUDA and candle's CPU device unless
    /// the environment variable `REALM_FUSED_KERNELS` is `0`; Metal has no
    /// form of them.
    ///
    /// ```
    /// use realm_compute_gpu::{GpuBackend, GpuDevice};
    ///
    /// let be = GpuBackend::new(GpuDevice::Cpu)?.with_fused_kernels(false);
    /// assert!(!be.fused_kernels());
    /// # Ok::<(), realm_core::backend::BackendError>(())
    /// ```
    pub fn with_fused_kernels(mut self, on: bool) -> Self {
        self.fused = on && !matches!(self.which, GpuDevice::Metal(_));
        self
    }

    /// Whether Realm's fused kernels are on (see
    /// [`GpuBackend::with_fused_kernels`]).
    pub fn fused_kernels(&self) -> bool {
        self.fused
    }

    /// The backend attending a chunk of more than 8 rows of one sequence
    /// (a prompt's) with the tiled kernel when `on` (each tile of keys and
    /// values read once for many rows), and with the decode kernel (each
    /// row and head reads its keys) otherwise. On by default unless the
    /// environment variable `REALM_TILED_ATTENTION` is `0`; it takes
    /// effect on CUDA with the fused kernels (see
    /// [`GpuBackend::with_fused_kernels`]), and both kernels compute the
    /// same attention.
    ///
    /// ```
    /// use realm_compute_gpu::{GpuBackend, GpuDevice};
    ///
    /// let be = GpuBackend::new(GpuDevice::Cpu)?.with_tiled_attention(false);
    /// assert!(!be.tiled_attention());
    /// # Ok::<(), realm_core::backend::BackendError>(())
    /// ```
    pub fn with_tiled_attention(mut self, on: bool) -> Self {
        self.tiled = on;
        self
    }

    /// Whether long chunks are attended by the tiled kernel (see
    /// [`GpuBackend::with_tiled_attention`]).
    pub fn tiled_attention(&self) -> bool {
        self.tiled
    }

    /// The backend splitting each row's keys over several blocks per head
    /// when `on` and a decode step's rows and heads are too few to fill
    /// the device but its caches are long (flash-decoding: a second kernel
    /// then weighs the blocks' partial results), and giving each row and
    /// head one block otherwise. On by default unless the environment
    /// variable `REALM_SPLIT_KEYS` is `0`; it takes effect on CUDA with the
    /// fused kernels, and both ways compute the same attention.
    ///
    /// ```
    /// use realm_compute_gpu::{GpuBackend, GpuDevice};
    ///
    /// let be = GpuBackend::new(GpuDevice::Cpu)?.with_split_keys(false);
    /// assert!(!be.split_keys());
    /// # Ok::<(), realm_core::backend::BackendError>(())
    /// ```
    pub fn with_split_keys(mut self, on: bool) -> Self {
        self.split_keys = on;
        self
    }

    /// Whether long caches' keys may be split (see
    /// [`GpuBackend::with_split_keys`]).
    pub fn split_keys(&self) -> bool {
        self.split_keys
    }

    /// The backend storing a decode step's keys (normed and rotated) and
    /// values in the attention kernel, which attends to them from its own
    /// memory, when `on`, and with a kernel of their own before it
    /// otherwise: one launch per layer fewer. On by default unless the
    /// environment variable `REALM_STORE_IN_ATTENTION` is `0`; it takes
    /// effect on CUDA with the fused kernels, for the rows of a decode step
    /// (each its own sequence), and both ways compute the same attention.
    ///
    /// ```
    /// use realm_compute_gpu::{GpuBackend, GpuDevice};
    ///
    /// let be = GpuBackend::new(GpuDevice::Cpu)?.with_store_in_attention(false);
    /// assert!(!be.store_in_attention());
    /// # Ok::<(), realm_core::backend::BackendError>(())
    /// ```
    pub fn with_store_in_attention(mut self, on: bool) -> Self {
        self.store_in_attention = on;
        self
    }

    /// Whether decode steps store keys and values in the attention kernel
    /// (see [`GpuBackend::with_store_in_attention`]).
    pub fn store_in_attention(&self) -> bool {
        self.store_in_attention
    }

    /// What a report should say of the device: its name and, on CUDA, its
    /// multiprocessors and whether it allocates in stream order (without
    /// which every free waits for the device and no step can be recorded).
    ///
    /// ```
    /// use realm_compute_gpu::{GpuBackend, GpuDevice};
    ///
    /// let be = GpuBackend::new(GpuDevice::Cpu)?;
    /// assert_eq!(be.device_summary(), "candle-cpu");
    /// # Ok::<(), realm_core::backend::BackendError>(())
    /// ```
    pub fn device_summary(&self) -> String {
        #[cfg(feature = "cuda")]
        if let Device::Cuda(d) = &self.device {
            let stream_ordered = d.cuda_stream().context().has_async_alloc();
            return format!(
                "{} ({} multiprocessors, {})",
                self.name,
                self.fill / 2,
                match stream_ordered {
                    true => "stream-ordered allocation",
                    false => "no stream-ordered allocation: frees wait for the device",
                }
            );
        }
        self.name.clone()
    }

    /// The blocks the decode kernel aims for when it splits keys: 0 (never)
    /// unless asked and on CUDA.
    fn split_fill(&self) -> usize {
        #[cfg(feature = "cuda")]
        if self.split_keys {
            return self.fill;
        }
        0
    }

    /// The backend whose fused kernels (the norm after a residual add, the
    /// gated units, attention) also write their results as the Q8_1
    /// blocks that candle's vector products (up to 8 rows) quantize their
    /// input to, when `on`: the next quantized product then launches one
    /// kernel instead of two. For more rows, they write them in the layout
    /// candle's matrix products quantize to instead. On by default on CUDA (unless the environment
    /// variable `REALM_Q8_BLOCKS` is `0`), where the blocks equal the
    /// products' own bit for bit, so results do not change. On
    /// candle's CPU device, whose products quantize their input to other
    /// blocks, the product takes the blocks' values instead, a second
    /// rounding: it is off by default there, and on only to test the path.
    ///
    /// ```
    /// use realm_compute_gpu::{GpuBackend, GpuDevice};
    ///
    /// let be = GpuBackend::new(GpuDevice::Cpu)?;
    /// assert!(!be.q8_blocks());
    /// assert!(be.with_q8_blocks(true).q8_blocks());
    /// # Ok::<(), realm_core::backend::BackendError>(())
    /// ```
    pub fn with_q8_blocks(mut self, on: bool) -> Self {
        self.blocks = on;
        self
    }

    /// Whether the fused kernels write Q8_1 blocks for the products (see
    /// [`GpuBackend::with_q8_blocks`]).
    pub fn q8_blocks(&self) -> bool {
        self.fused && self.blocks
    }

    /// Products so far that took their input as the blocks an op wrote
    /// (see [`GpuBackend::with_q8_blocks`]); a recorded step's count once,
    /// when it is recorded.
    pub fn blocks_products(&self) -> u64 {
        self.blocks_products.load(Ordering::Relaxed)
    }

    /// The blocks an op writing `rows` rows of `width` values also writes,
    /// for the product that reads them: Q8_1 blocks for a vector product
    /// (up to [`fused::q8::MAX_ROWS`] rows), the matrix products' layout
    /// for more rows, or none. A block must not cross a row: `width` is a
    /// multiple of 32.
    pub(crate) fn blocks_for(&self, rows: usize, width: usize) -> fused::q8::Blocks {
        use fused::q8::{Blocks, BLOCK, MAX_MATRIX_VALUES, MAX_ROWS, MAX_VALUES};
        let len = rows.saturating_mul(width);
        if !self.q8_blocks() || len == 0 || !width.is_multiple_of(BLOCK) {
            Blocks::No
        } else if rows <= MAX_ROWS && len <= MAX_VALUES {
            Blocks::Vector
        } else if rows > MAX_ROWS && len <= MAX_MATRIX_VALUES {
            Blocks::Matrix
        } else {
            Blocks::No
        }
    }

    /// Decode steps recorded and replayed so far (both stay 0 where steps
    /// are not recorded).
    pub fn step_counts(&self) -> (u64, u64) {
        (
            self.recorded.load(Ordering::Relaxed),
            self.replayed.load(Ordering::Relaxed),
        )
    }

    /// How many replayed steps were timed since the last call and their
    /// device time in seconds, from each graph's launch to its end: `None`
    /// unless the
    /// environment variable `REALM_TIME_REPLAYS` is `1` when the backend
    /// opens a CUDA device (timing adds two events to each replay). Against
    /// a step's wall time, it says how much of a decode step the device
    /// spends running the graph and how much the host spends around it.
    pub fn replay_device_time(&self) -> BackendResult<Option<(u64, f64)>> {
        #[cfg(feature = "cuda")]
        if let Some(clock) = &self.replay_clock {
            return clock
                .take()
                .map(Some)
                .map_err(dev_err("replay_device_time"));
        }
        Ok(None)
    }

    /// What the CUDA graph of the last step recorded holds (`None` until a
    /// step is recorded): how many kernels a decode step launches.
    pub fn last_graph_nodes(&self) -> Option<GraphNodes> {
        *self.last_graph.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The device this backend runs on.
    pub fn device(&self) -> GpuDevice {
        self.which
    }

    /// The candle device, for callers that mix in their own candle ops.
    pub fn candle_device(&self) -> &Device {
        &self.device
    }
}

/// Maps a candle error to [`BackendError::Device`] for `op`.
pub(crate) fn dev_err(op: &'static str) -> impl Fn(candle_core::Error) -> BackendError {
    move |e| BackendError::Device {
        op,
        message: e.to_string(),
    }
}

/// `a * b`, or an error naming `what` when it overflows.
pub(crate) fn product(
    op: &'static str,
    what: &'static str,
    a: usize,
    b: usize,
) -> BackendResult<usize> {
    a.checked_mul(b)
        .ok_or(BackendError::InvalidParameter { op, what })
}

impl BackendCore for GpuBackend {
    type Workspace = GpuWorkspace;
    type Buffer = GpuBuffer;

    fn name(&self) -> &str {
        &self.name
    }

    fn workspace(&self) -> GpuWorkspace {
        let mut ws = GpuWorkspace::default();
        ws.device = Some(self.device.clone());
        ws
    }

    fn buffer(&self, len: usize) -> BackendResult<GpuBuffer> {
        let t = Tensor::zeros(len, DType::F32, &self.device).map_err(dev_err("buffer"))?;
        Ok(GpuBuffer::new(t, len))
    }

    fn upload(&self, values: &[f32]) -> BackendResult<GpuBuffer> {
        const OP: &str = "upload";
        let t = Tensor::from_slice(values, values.len(), &self.device).map_err(dev_err(OP))?;
        // As a weight's: other threads read uploads (a model's norms) on
        // their own streams, and a copy from pageable memory may return
        // before it lands.
        driver::synchronize(&self.device).map_err(dev_err(OP))?;
        Ok(GpuBuffer::new(t, values.len()))
    }

    fn download(&self, buf: &GpuBuffer, out: &mut [f32]) -> BackendResult<()> {
        const OP: &str = "download";
        let t = buf.prefix(OP, "buffer", out.len())?;
        #[cfg(feature = "cuda")]
        if let Device::Cuda(_) = &self.device {
            // Straight into `out` (a step's logits: up to megabytes), not
            // through a vector of candle's.
            return staging::cuda_download(&t, out).map_err(dev_err(OP));
        }
        let v = t.to_vec1::<f32>().map_err(dev_err(OP))?;
        out.copy_from_slice(&v);
        Ok(())
    }

    fn read_on_host<R>(
        &self,
        ws: &mut GpuWorkspace,
        buf: &GpuBuffer,
        len: usize,
        read: impl FnOnce(&[f32]) -> R,
    ) -> BackendResult<R> {
        const OP: &str = "read_on_host";
        let t = buf.prefix(OP, "buffer", len)?;
        ws.staging
            .read(&t, buf.capacity(), read)
            .map_err(dev_err(OP))
    }

    fn synchronize(&self) -> BackendResult<()> {
        driver::synchronize(&self.device).map_err(dev_err("synchronize"))
    }

    fn split_cols(
        &self,
        src: &GpuBuffer,
        n_rows: usize,
        widths: &[usize],
        outs: &mut [&mut GpuBuffer],
    ) -> BackendResult<()> {
        const OP: &str = "split_cols";
        let total = split_width(OP, widths, outs.len())?;
        let all = src.prefix(
            OP,
            "src length",
            product(OP, "rows overflow", n_rows, total)?,
        )?;
        let rows = all.reshape((n_rows, total)).map_err(dev_err(OP))?;
        let mut first = 0;
        for (&w, out) in widths.iter().zip(outs.iter_mut()) {
            let len = product(OP, "rows overflow", n_rows, w)?;
            out.check_room(OP, "out length", len)?;
            // Columns of the rows, in place (no copy): one row's are
            // contiguous, several rows' are a strided view, which the fused
            // ops read as it is and anything else copies as it reads.
            let part = rows.narrow(1, first, w).map_err(dev_err(OP))?;
            match n_rows {
                1 => out.set_prefix(OP, "out length", len, part)?,
                _ => out.set_rows_view(OP, "out length", n_rows, w, part)?,
            }
            first += w;
        }
        Ok(())
    }

    fn copy_rows(
        &self,
        src: &GpuBuffer,
        rows: Range<usize>,
        width: usize,
        dst: &mut GpuBuffer,
    ) -> BackendResult<()> {
        const OP: &str = "copy_rows";
        let t = src.rows(OP, "src length", &rows, width)?;
        let len = t.elem_count();
        dst.set_prefix(OP, "dst length", len, t)
    }
}
