//! Static decode steps ([`StepOps`]): a step's token ids and positions live
//! in device tensors of the workspace, so that every op of the step has the
//! same shapes and reads the same device memory from step to step; on CUDA
//! the step is then recorded once as a CUDA graph and replayed.
//!
//! What a recording touches, and why it stays valid:
//! - the workspace's fixed tensors (ids and positions, rewritten in place
//!   by one upload in each [`StepOps::begin_step`]; the attention-mask
//!   inputs), reallocated only when the step's row count or span changes,
//!   which bumps the workspace's generation; what the step derives from
//!   them (RoPE tables, masks, scatter indices) it computes on the device,
//!   inside the recording;
//! - the weights and the sessions' KV caches, which never move;
//! - a fixed copy of every buffer the step writes, made when recording
//!   starts; the recording ends by copying its outputs there (the logits;
//!   the other buffers are scratch, left with their fixed copies' values),
//!   and every tensor it allocated is freed inside the recording, so none
//!   escapes;
//! - candle's matrix-product scratch, which candle grows (and moves) when a
//!   product needs more; the backend counts such growth as an epoch
//!   (`crate::scratch`), a recording from an older epoch is stale, and a
//!   product that would grow it is not recorded.

#[cfg(feature = "cuda")]
use std::sync::atomic::Ordering;

#[cfg(feature = "cuda")]
pub(crate) use cuda::ReplayClock;

use candle_core::{DType, Device, Tensor};
use realm_core::backend::{BackendError, BackendResult, RopeParams, StepInputs, StepOps};

use crate::fused::RopeAngles;
use crate::ops::RopeKey;
#[cfg(feature = "cuda")]
use crate::scratch::scratch_err;
use crate::{dev_err, GpuBackend, GpuBuffer, GpuWorkspace};

/// The most cache positions a static step spans: its mask compares
/// positions as f32, exact up to 2^24.
const MAX_SPAN: usize = 1 << 24;

/// How a [`GpuBackend`] runs decode steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepMode {
    /// Op by op, as any other call (the default off CUDA).
    OpByOp,
    /// Static steps, op by op: the shapes and inputs a recording needs,
    /// without recording (for checking static steps on any device).
    Static,
    /// Static steps recorded as CUDA graphs and replayed (the default on
    /// CUDA; anywhere else it behaves as [`StepMode::Static`]).
    Recorded,
}

/// What a recorded step's CUDA graph holds, by kind of node: how many
/// kernels a step launches, and what else the graph does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GraphNodes {
    /// Kernel launches.
    pub kernels: usize,
    /// Copies between buffers.
    pub copies: usize,
    /// Memory sets (zeroed tensors).
    pub memsets: usize,
    /// Allocations of the step's temporaries.
    pub allocs: usize,
    /// Frees.
    pub frees: usize,
    /// Any other kind.
    pub other: usize,
}

impl std::fmt::Display for GraphNodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kernels, {} copies, {} memsets, {} allocations, {} frees, {} other nodes",
            self.kernels, self.copies, self.memsets, self.allocs, self.frees, self.other
        )
    }
}

/// A decode step recorded as a CUDA graph.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct GpuRecording {
    #[cfg(feature = "cuda")]
    graph: cuda::Graph,
    /// The thread that recorded it, the only one that replays it: a
    /// captured op that uploads host values (`Tensor::from_*`) reads
    /// candle's copy of them for that thread, which goes when the thread
    /// ends. (The ops' shapes and strides are in candle's cache for the
    /// whole process.)
    #[cfg(feature = "cuda")]
    thread: std::thread::ThreadId,
    /// The tensors the graph leaves each buffer's results in.
    fixed: Vec<Tensor>,
    generation: u64,
    epoch: u64,
}

impl Drop for GpuRecording {
    fn drop(&mut self) {
        if let Some(t) = self.fixed.first() {
            crate::driver::make_current(t.device());
        }
    }
}

impl std::fmt::Debug for GpuRecording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuRecording")
            .field("generation", &self.generation)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// What a KV-cache scatter index is for: `(first row, rows, heads,
/// head_dim, whether rows are slots of a block)`.
type IndexKey = (usize, usize, usize, usize, bool);

/// The workspace's state of static steps.
pub(crate) struct StepState {
    /// Between `begin_step` and `end_step`.
    active: bool,
    /// Between `begin_recording` and `end_recording`.
    recording: bool,
    rows: usize,
    kv_len: usize,
    /// Bumped whenever the fixed tensors below are reallocated.
    generation: u64,
    host_ids: Vec<u32>,
    host_positions: Vec<u32>,
    /// `u32 [2 * rows]`: the ids, then the positions, uploaded together.
    inputs: Tensor,
    /// `u32 [rows]`, views of `inputs`.
    ids: Tensor,
    pos: Tensor,
    /// `f32 [1, kv_len]`: 0, 1, 2, ...
    key_pos: Tensor,
    /// `f32 [rows, kv_len]` of zeros and of minus infinity.
    zeros: Tensor,
    neg_inf: Tensor,
    /// This step's RoPE tables `(cos, sin)`, `[rows, 1, n_dims / 2]`, by
    /// what they are for, computed on the device from `pos`.
    tables: Vec<(RopeKey, (Tensor, Tensor))>,
    /// This step's attention masks, by sliding window and attention chunk.
    masks: Vec<(MaskKey, Tensor)>,
    /// `f32 [rows, kv_len]`: ALiBi's `-|j - pos|`, once an op has asked.
    distances: Option<Tensor>,
    /// This step's KV-cache scatter indices.
    indices: Vec<(IndexKey, Tensor)>,
    /// The fixed copies of the buffers a recording writes.
    fixed: Vec<Tensor>,
    /// How many of them (the first) are the step's outputs.
    outputs: usize,
    /// The scratch's epoch when recording began.
    epoch: u64,
    /// candle's upload cache, on while a step may be recorded.
    #[cfg(feature = "cuda")]
    uploads: Option<cuda::Uploads>,
    /// While recording, an error another call had left in cudarc's slot,
    /// held out of it until the capture ends.
    #[cfg(feature = "cuda")]
    held: cuda::Held,
}

impl std::fmt::Debug for StepState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepState")
            .field("active", &self.active)
            .field("rows", &self.rows)
            .field("kv_len", &self.kv_len)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// What a step's mask is for: a sliding window and an attention chunk.
type MaskKey = (Option<usize>, Option<usize>);

fn invalid(op: &'static str, what: &'static str) -> BackendError {
    BackendError::InvalidParameter { op, what }
}

/// A step's ids, then its positions.
fn joined(inputs: &StepInputs<'_>) -> Vec<u32> {
    inputs.ids.iter().chain(inputs.positions).copied().collect()
}

impl StepState {
    /// Fresh tensors for `inputs` (`rows` ids and positions).
    fn new(device: &Device, inputs: &StepInputs<'_>, generation: u64) -> candle_core::Result<Self> {
        let (rows, kv_len) = (inputs.ids.len(), inputs.kv_len);
        let both = Tensor::from_vec(joined(inputs), 2 * rows, device)?;
        Ok(Self {
            active: false,
            recording: false,
            rows,
            kv_len,
            generation,
            host_ids: inputs.ids.to_vec(),
            host_positions: inputs.positions.to_vec(),
            ids: both.narrow(0, 0, rows)?,
            pos: both.narrow(0, rows, rows)?,
            inputs: both,
            key_pos: Tensor::arange(0f32, kv_len as f32, device)?.reshape((1, kv_len))?,
            zeros: Tensor::zeros((rows, kv_len), DType::F32, device)?,
            neg_inf: Tensor::full(f32::NEG_INFINITY, (rows, kv_len), device)?,
            tables: Vec::new(),
            masks: Vec::new(),
            distances: None,
            indices: Vec::new(),
            fixed: Vec::new(),
            outputs: 0,
            epoch: 0,
            #[cfg(feature = "cuda")]
            uploads: None,
            #[cfg(feature = "cuda")]
            held: Ok(()),
        })
    }

    /// Ends a recording left open (by a panic between its start and its
    /// end) without keeping it, on this thread's stream (the one it began
    /// on, unless the workspace moved since), and puts back the error it
    /// held. The step's masks, tables and indices, all made while
    /// recording (its start clears them), go first, so that their frees
    /// are the graph's as in [`StepOps::end_recording`]. Device memory the
    /// recording's ops allocated into the model's buffers also belonged to
    /// the dropped graph: a buffer still holding some fails its free, and
    /// the next call reports that once.
    pub(crate) fn abandon_recording(&mut self, device: &Device) {
        if std::mem::take(&mut self.recording) {
            self.clear_derived();
            #[cfg(feature = "cuda")]
            cuda::abandon(device, std::mem::replace(&mut self.held, Ok(())));
            #[cfg(not(feature = "cuda"))]
            let _ = device;
        }
    }

    /// Writes `inputs` (same rows and span) into the fixed tensors.
    fn rewrite(&mut self, device: &Device, inputs: &StepInputs<'_>) -> candle_core::Result<()> {
        // One upload a step; the RoPE tables follow on the device.
        let both = Tensor::from_vec(joined(inputs), 2 * self.rows, device)?;
        self.inputs.slice_set(&both, 0, 0)?;
        self.host_ids.clear();
        self.host_ids.extend_from_slice(inputs.ids);
        self.host_positions.clear();
        self.host_positions.extend_from_slice(inputs.positions);
        Ok(())
    }

    /// Checks that `positions` of rows `first..` are the step's.
    pub(crate) fn check_positions(
        &self,
        op: &'static str,
        first: usize,
        positions: impl ExactSizeIterator<Item = usize>,
    ) -> BackendResult<()> {
        let n = positions.len();
        let ours = self
            .host_positions
            .get(first..first.saturating_add(n))
            .ok_or(invalid(op, "rows past the static step's"))?;
        if !ours.iter().zip(positions).all(|(&a, b)| a as usize == b) {
            return Err(invalid(op, "positions differ from the static step's"));
        }
        Ok(())
    }

    /// The step's token ids, after checking they are `ids`.
    pub(crate) fn ids(&self, op: &'static str, ids: &[u32]) -> BackendResult<&Tensor> {
        if self.host_ids != ids {
            return Err(invalid(op, "token ids differ from the static step's"));
        }
        Ok(&self.ids)
    }

    /// Cache positions the step's attention spans.
    pub(crate) fn kv_len(&self) -> usize {
        self.kv_len
    }

    /// The device positions of rows `first..first + n`.
    pub(crate) fn positions(&self, first: usize, n: usize) -> candle_core::Result<Tensor> {
        self.pos.narrow(0, first, n)
    }

    /// The RoPE table for these parameters: made on the device from this
    /// step's positions when the step first asks for it (inside the graph,
    /// when the step is recorded), and kept until the step ends.
    pub(crate) fn rope_table(
        &mut self,
        positions: &[u32],
        p: &RopeParams,
    ) -> BackendResult<(Tensor, Tensor)> {
        const OP: &str = "rope";
        self.check_positions(OP, 0, positions.iter().map(|&p| p as usize))?;
        if positions.len() != self.rows {
            return Err(invalid(OP, "a static step's rope covers all its rows"));
        }
        if let Some((_, t)) = self.tables.iter().find(|(k, _)| k.is(p)) {
            return Ok(t.clone());
        }
        let shape = (self.rows, 1, p.n_dims / 2);
        let pair = (|| -> candle_core::Result<_> {
            let both = self.pos.apply_op1_no_bwd(&RopeAngles::new(p)?)?;
            Ok((both.get(0)?.reshape(shape)?, both.get(1)?.reshape(shape)?))
        })()
        .map_err(dev_err(OP))?;
        self.tables.push((RopeKey::of(p), pair.clone()));
        Ok(pair)
    }

    /// The KV-cache scatter index of rows `first..first + n`: each row's
    /// position, spread over its heads and values. For one cache
    /// (`by_slot` false) it is `u32 [heads, n, head_dim]`, the rows being
    /// consecutive positions; for rows whose caches are consecutive slots
    /// of a block, `u32 [n, heads, 1, head_dim]`.
    pub(crate) fn scatter_index(
        &mut self,
        first: usize,
        n: usize,
        heads: usize,
        head_dim: usize,
        by_slot: bool,
    ) -> candle_core::Result<Tensor> {
        let key = (first, n, heads, head_dim, by_slot);
        if let Some((_, t)) = self.indices.iter().find(|(k, _)| *k == key) {
            return Ok(t.clone());
        }
        let rows = self.pos.narrow(0, first, n)?;
        let t = if by_slot {
            rows.reshape((n, 1, 1, 1))?
                .broadcast_as((n, heads, 1, head_dim))?
        } else {
            rows.reshape((1, n, 1))?
                .broadcast_as((heads, n, head_dim))?
        }
        .contiguous()?;
        self.indices.push((key, t.clone()));
        Ok(t)
    }

    /// Drops this step's masks and indices (made by the ops; the next
    /// step, or the recording, makes its own).
    fn clear_derived(&mut self) {
        self.tables.clear();
        self.masks.clear();
        self.distances = None;
        self.indices.clear();
    }

    /// The additive attention mask `[rows, kv_len]` of this step: 0 where
    /// row `r` (at position `p`) sees key `j` (`j <= p`; `j + w > p` with a
    /// sliding window `w`; `j >= c * floor(p / c)` with attention chunks of
    /// `c`), minus infinity elsewhere.
    pub(crate) fn mask(
        &mut self,
        window: Option<usize>,
        chunk: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let key = (window, chunk);
        if let Some((_, m)) = self.masks.iter().find(|(k, _)| *k == key) {
            return Ok(m.clone());
        }
        // Positions as f32 (exact below 2^24), one a row.
        let pos = self.pos.to_dtype(DType::F32)?.reshape((self.rows, 1))?;
        let mut visible = self.key_pos.broadcast_le(&pos)?;
        if let Some(w) = window {
            let lo = pos.affine(1.0, -(w as f64))?;
            visible = (visible * self.key_pos.broadcast_gt(&lo)?)?;
        }
        if let Some(c) = chunk.filter(|&c| c > 0) {
            // The chunk's first position, in f64: `(p + 1/2) / c` is at
            // least `1 / 2c` from any whole number, far beyond rounding.
            let c = c as f64;
            let first = self
                .pos
                .to_dtype(DType::F64)?
                .affine(1.0 / c, 0.5 / c)?
                .floor()?
                .affine(c, 0.0)?
                .to_dtype(DType::F32)?
                .reshape((self.rows, 1))?;
            visible = (visible * self.key_pos.broadcast_ge(&first)?)?;
        }
        let m = visible.where_cond(&self.zeros, &self.neg_inf)?;
        self.masks.push((key, m.clone()));
        Ok(m)
    }

    /// Minus each key's distance from its row's position, `f32 [rows,
    /// kv_len]`: ALiBi's `-|j - pos|`, made on the device.
    pub(crate) fn distances(&mut self) -> candle_core::Result<Tensor> {
        if let Some(d) = &self.distances {
            return Ok(d.clone());
        }
        let pos = self.pos.to_dtype(DType::F32)?.reshape((self.rows, 1))?;
        let d = self.key_pos.broadcast_sub(&pos)?.abs()?.neg()?;
        self.distances = Some(d.clone());
        Ok(d)
    }
}

impl GpuWorkspace {
    /// The static step in progress, if any.
    pub(crate) fn step(&mut self) -> Option<&mut StepState> {
        self.step.as_mut().filter(|s| s.active)
    }

    /// Whether a step is being recorded.
    pub(crate) fn recording(&self) -> bool {
        self.step.as_ref().is_some_and(|s| s.recording)
    }
}

impl GpuBackend {
    /// Whether static steps on this device are recorded.
    fn records(&self) -> bool {
        self.steps == StepMode::Recorded && matches!(self.device, Device::Cuda(_))
    }
}

impl StepOps for GpuBackend {
    type Recording = GpuRecording;

    fn static_steps(&self) -> bool {
        self.steps != StepMode::OpByOp
    }

    fn begin_step(&self, ws: &mut GpuWorkspace, inputs: &StepInputs<'_>) -> BackendResult<()> {
        const OP: &str = "begin_step";
        let rows = inputs.ids.len();
        if rows == 0 || inputs.positions.len() != rows {
            return Err(invalid(
                OP,
                "a step needs one position per id, and some ids",
            ));
        }
        if inputs
            .positions
            .iter()
            .any(|&p| p as usize >= inputs.kv_len)
        {
            return Err(invalid(OP, "every position must be below kv_len"));
        }
        if inputs.kv_len > MAX_SPAN {
            return Err(invalid(
                OP,
                "kv_len is past the most a static step spans (2^24)",
            ));
        }
        if let Some(st) = ws.step.as_mut() {
            if st.recording {
                return Err(invalid(OP, "a step is being recorded"));
            }
            st.active = false;
            st.clear_derived();
            #[cfg(feature = "cuda")]
            if let Some(u) = st.uploads.take() {
                u.close(&self.device);
            }
        }
        let reuse = matches!(&ws.step, Some(st) if st.rows == rows && st.kv_len == inputs.kv_len);
        if reuse {
            if let Some(st) = ws.step.as_mut() {
                st.rewrite(&self.device, inputs).map_err(dev_err(OP))?;
            }
        } else {
            ws.step = None;
            ws.generation += 1;
            let st = StepState::new(&self.device, inputs, ws.generation).map_err(dev_err(OP))?;
            ws.step = Some(st);
        }
        if let Some(st) = ws.step.as_mut() {
            st.active = true;
            #[cfg(feature = "cuda")]
            if let (true, Device::Cuda(cuda)) = (self.records(), &self.device) {
                st.uploads = Some(cuda::Uploads::open(cuda, &self.upload_gate));
            }
        }
        Ok(())
    }

    fn end_step(&self, ws: &mut GpuWorkspace) {
        if let Some(st) = ws.step.as_mut() {
            st.active = false;
            st.clear_derived();
            #[cfg(feature = "cuda")]
            if let Some(u) = st.uploads.take() {
                u.close(&self.device);
            }
        }
    }

    fn begin_recording(
        &self,
        ws: &mut GpuWorkspace,
        buffers: &mut [&mut GpuBuffer],
        outputs: usize,
    ) -> BackendResult<bool> {
        const OP: &str = "begin_recording";
        if !self.records() {
            return Ok(false);
        }
        if outputs > buffers.len() {
            return Err(invalid(OP, "more outputs than buffers"));
        }
        let epoch = self.scratch.epoch();
        let st = ws
            .step()
            .ok_or(invalid(OP, "recording needs a static step"))?;
        // Fixed copies of the buffers, which the recording's results go to.
        st.fixed.clear();
        for b in buffers.iter_mut() {
            let t = b.tensor().copy().map_err(dev_err(OP))?;
            b.replace(t.clone());
            st.fixed.push(t);
        }
        // Masks of the plain run; the recording makes its own.
        st.clear_derived();
        st.epoch = epoch;
        st.outputs = outputs;
        #[cfg(feature = "cuda")]
        {
            st.held = cuda::begin(&self.device).map_err(dev_err(OP))?;
        }
        st.recording = true;
        Ok(true)
    }

    fn end_recording(
        &self,
        ws: &mut GpuWorkspace,
        buffers: &mut [&mut GpuBuffer],
    ) -> BackendResult<GpuRecording> {
        const OP: &str = "end_recording";
        let st = ws
            .step
            .as_mut()
            .filter(|s| s.recording)
            .ok_or(invalid(OP, "no recording in progress"))?;
        st.recording = false;
        let fixed = std::mem::take(&mut st.fixed);
        let mut copied = Ok(());
        if fixed.len() != buffers.len() {
            copied = Err(invalid(OP, "not the buffers the recording began with"));
        }
        // Outputs into their fixed copies (scratch keeps its copies'
        // values); the recorded tensors are dropped here, while recording,
        // so their memory is freed inside the graph.
        let outputs = st.outputs;
        for (i, (b, fixed)) in buffers.iter_mut().zip(&fixed).enumerate() {
            let result = b.tensor().clone();
            b.replace(fixed.clone());
            if i < outputs && copied.is_ok() && result.id() != fixed.id() {
                copied = if result.elem_count() == fixed.elem_count() {
                    fixed.slice_set(&result, 0, 0).map_err(dev_err(OP))
                } else {
                    Err(invalid(OP, "a buffer's length changed while recording"))
                };
            }
        }
        st.clear_derived();
        let (generation, epoch) = (st.generation, st.epoch);
        #[cfg(feature = "cuda")]
        {
            let held = std::mem::replace(&mut st.held, Ok(()));
            let graph = cuda::end(&self.device, held).map_err(dev_err(OP));
            copied?;
            let graph = graph?;
            self.recorded.fetch_add(1, Ordering::Relaxed);
            let nodes = graph.nodes().map_err(dev_err(OP))?;
            *self.last_graph.lock().unwrap_or_else(|e| e.into_inner()) = Some(nodes);
            Ok(GpuRecording {
                graph,
                thread: std::thread::current().id(),
                fixed,
                generation,
                epoch,
            })
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (generation, epoch, fixed);
            copied?;
            Err(invalid(OP, "this build cannot record steps"))
        }
    }

    fn replay(
        &self,
        ws: &mut GpuWorkspace,
        rec: &GpuRecording,
        buffers: &mut [&mut GpuBuffer],
    ) -> BackendResult<bool> {
        const OP: &str = "replay";
        let st = ws.step().ok_or(invalid(OP, "replay needs a static step"))?;
        // Made before the step's internal buffers changed: record again.
        if rec.generation != st.generation {
            return Ok(false);
        }
        if buffers.len() != rec.fixed.len() {
            return Err(invalid(OP, "not the buffers the recording was made with"));
        }
        #[cfg(feature = "cuda")]
        {
            // Another thread records its own (a runtime's tenant may step
            // on a new thread each call).
            if rec.thread != std::thread::current().id() {
                return Ok(false);
            }
            // An error another call left in cudarc's shared slot would fail
            // the launch as if it were the replay's: it is taken first and
            // put back after.
            let replayed = crate::driver::aside_pending_error(&self.device, || {
                // Timing, when asked, is best effort: a failed event only
                // leaves a replay untimed.
                let mut start = None;
                let replayed = self.scratch.replay(&self.device, rec.epoch, || {
                    if self.replay_clock.is_some() {
                        start = cuda::mark(&self.device).ok();
                    }
                    rec.graph.launch()
                });
                if let (Ok(()), Some(clock), Some(start)) = (&replayed, &self.replay_clock, start) {
                    if let Ok(end) = cuda::mark(&self.device) {
                        clock.add(start, end);
                    }
                }
                replayed
            });
            match replayed {
                Ok(()) => {}
                // candle's scratch grew since: record again.
                Err(crate::scratch::ScratchError::Stale) => return Ok(false),
                Err(e) => return Err(scratch_err(OP)(e)),
            }
            self.replayed.fetch_add(1, Ordering::Relaxed);
            if let Some(u) = ws.step.as_mut().and_then(|st| st.uploads.as_mut()) {
                u.replayed = true;
            }
            // Ops since the recording may have replaced the buffers' tensors.
            for (b, t) in buffers.iter_mut().zip(&rec.fixed) {
                b.replace(t.clone());
            }
            Ok(true)
        }
        #[cfg(not(feature = "cuda"))]
        {
            Err(invalid(OP, "this build cannot record steps"))
        }
    }
}

/// Lets one thread at a time run static steps with candle's upload cache
/// on (a thread may hold it again). candle caches the kernel parameters
/// (dims and strides) such a step uploads in one table for the whole
/// process, and fills an entry with a copy on the stream of the thread that
/// missed it; another thread's stream could read the entry before that
/// copy is done. So a step holds the gate from `begin_step` to `end_step`,
/// and waits for its stream there unless it was replayed (a replay adds no
/// entries), before letting go.
#[cfg(feature = "cuda")]
#[derive(Debug, Default)]
pub(crate) struct UploadGate {
    /// The holder and how many passes it holds.
    holder: std::sync::Mutex<Option<(std::thread::ThreadId, usize)>>,
    free: std::sync::Condvar,
}

/// A hold on an [`UploadGate`], let go when dropped.
#[cfg(feature = "cuda")]
#[derive(Debug)]
pub(crate) struct GatePass(std::sync::Arc<UploadGate>);

#[cfg(feature = "cuda")]
impl UploadGate {
    /// Waits for the gate (unless this thread holds it) and takes it.
    pub(crate) fn enter(gate: &std::sync::Arc<UploadGate>) -> GatePass {
        let me = std::thread::current().id();
        let mut holder = gate.holder.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match holder.as_mut() {
                None => {
                    *holder = Some((me, 1));
                    break;
                }
                Some((t, n)) if *t == me => {
                    *n += 1;
                    break;
                }
                Some(_) => {
                    holder = gate.free.wait(holder).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
        GatePass(gate.clone())
    }
}

#[cfg(feature = "cuda")]
impl Drop for GatePass {
    fn drop(&mut self) {
        let mut holder = self.0.holder.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, n)) = holder.as_mut() {
            *n -= 1;
            if *n == 0 {
                *holder = None;
                self.0.free.notify_one();
            }
        }
    }
}

/// CUDA graph capture of candle's stream.
#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{sys, CudaEvent, CudaGraph, DriverError};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{Device, Result};

    /// An instantiated CUDA graph.
    pub(super) struct Graph(CudaGraph);

    /// A timed event, recorded now on this thread's stream.
    pub(super) fn mark(device: &Device) -> Result<CudaEvent> {
        stream(device)?
            .record_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
            .w()
    }

    /// The device time of replayed steps: each replay's launch between two
    /// timed events, added up as they finish.
    #[derive(Debug, Default)]
    pub(crate) struct ReplayClock(std::sync::Mutex<Replays>);

    #[derive(Debug, Default)]
    struct Replays {
        /// Replays' events, oldest first, not yet added.
        waiting: std::collections::VecDeque<(CudaEvent, CudaEvent)>,
        steps: u64,
        ms: f64,
        /// The first error reading an event (the replays it lost are not
        /// counted), for `take` to return.
        failed: Option<candle_core::Error>,
    }

    impl Replays {
        /// Adds the waiting replays' times, oldest first: all of them,
        /// waiting for the device, or only those not still running (an
        /// event whose query fails is read, and its error kept, rather
        /// than left at the front for good).
        fn settle(&mut self, wait: bool) {
            while let Some((start, end)) = self.waiting.front() {
                if !wait && matches!(end.try_is_complete(), Ok(false)) {
                    return;
                }
                match start.elapsed_ms(end).w() {
                    Ok(ms) => {
                        self.ms += f64::from(ms);
                        self.steps += 1;
                    }
                    Err(e) => {
                        self.failed.get_or_insert(e);
                    }
                }
                self.waiting.pop_front();
            }
        }
    }

    impl ReplayClock {
        /// Adds a replay whose launch lies between `start` and `end`.
        pub(super) fn add(&self, start: CudaEvent, end: CudaEvent) {
            let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
            r.waiting.push_back((start, end));
            r.settle(false);
        }

        /// Replays timed since the last call and their device time in
        /// seconds (waiting for those still running), or the first error
        /// reading their events.
        pub(crate) fn take(&self) -> Result<(u64, f64)> {
            let mut r = self.0.lock().unwrap_or_else(|e| e.into_inner());
            r.settle(true);
            let taken = std::mem::take(&mut *r);
            match taken.failed {
                Some(e) => Err(e),
                None => Ok((taken.steps, taken.ms / 1e3)),
            }
        }
    }

    // SAFETY: a CUDA graph and its executable are driver handles that any
    // thread may use; CUDA only requires that calls on one graph are not
    // concurrent, and `Graph` is only used through `&self` by the thread
    // that owns the step (the trait needs `Send`, not `Sync`).
    unsafe impl Send for Graph {}

    impl Graph {
        pub(super) fn launch(&self) -> Result<()> {
            self.0.launch().w()
        }

        /// The graph's nodes, counted by kind.
        pub(super) fn nodes(&self) -> Result<super::GraphNodes> {
            use sys::CUgraphNodeType as T;
            let g = self.0.cu_graph();
            let mut n = 0usize;
            // SAFETY: `g` is the graph this value owns, alive until it is
            // dropped; a null node array asks only for the count.
            unsafe { sys::cuGraphGetNodes(g, std::ptr::null_mut(), &mut n) }
                .result()
                .w()?;
            let mut nodes = vec![std::ptr::null_mut(); n];
            // SAFETY: `nodes` has room for the `n` nodes asked for.
            unsafe { sys::cuGraphGetNodes(g, nodes.as_mut_ptr(), &mut n) }
                .result()
                .w()?;
            let mut counts = super::GraphNodes::default();
            for &node in nodes.iter().take(n) {
                let mut kind = std::mem::MaybeUninit::<T>::uninit();
                // SAFETY: `node` is one of the graph's nodes, just listed;
                // the call writes its kind.
                unsafe { sys::cuGraphNodeGetType(node, kind.as_mut_ptr()) }
                    .result()
                    .w()?;
                // SAFETY: the call succeeded, so it wrote the kind.
                let slot = match unsafe { kind.assume_init() } {
                    T::CU_GRAPH_NODE_TYPE_KERNEL => &mut counts.kernels,
                    T::CU_GRAPH_NODE_TYPE_MEMCPY => &mut counts.copies,
                    T::CU_GRAPH_NODE_TYPE_MEMSET => &mut counts.memsets,
                    T::CU_GRAPH_NODE_TYPE_MEM_ALLOC => &mut counts.allocs,
                    T::CU_GRAPH_NODE_TYPE_MEM_FREE => &mut counts.frees,
                    _ => &mut counts.other,
                };
                *slot += 1;
            }
            Ok(counts)
        }
    }

    fn stream(
        device: &Device,
    ) -> Result<std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>> {
        Ok(device.as_cuda_device()?.cuda_stream())
    }

    /// Guards of candle's upload cache let go on another thread than
    /// theirs, each waiting for its own thread's next [`Uploads::open`].
    static STRAYS: crate::strays::Strays<Box<dyn std::any::Any + Send>> =
        crate::strays::Strays::new();

    /// candle's upload cache, on for this thread while a step may be
    /// recorded (so that the plain run caches the kernel parameters ops
    /// upload and the recording finds them), with the gate that keeps
    /// other threads from reading the new entries early.
    pub(crate) struct Uploads {
        /// candle's guard (whose type candle does not name), until the
        /// cache is turned off.
        cache: Option<Box<dyn std::any::Any + Send>>,
        /// The thread whose cache it turned on.
        thread: std::thread::ThreadId,
        /// The hold on the gate, let go with the rest (after the cache is
        /// off).
        _pass: super::GatePass,
        /// Whether the step was replayed: it then uploaded nothing.
        pub(crate) replayed: bool,
    }

    impl Uploads {
        /// Takes `gate`, then turns the cache on.
        pub(crate) fn open(
            cuda: &candle_core::CudaDevice,
            gate: &std::sync::Arc<super::UploadGate>,
        ) -> Self {
            // Guards of this thread's earlier steps let go elsewhere count
            // its cache down now.
            STRAYS.drop_mine();
            let pass = super::UploadGate::enter(gate);
            Self {
                cache: Some(Box::new(cuda.enable_cuda_graph_htod_cache())),
                thread: std::thread::current().id(),
                _pass: pass,
                replayed: false,
            }
        }

        /// Turns the cache off, on the thread that turned it on: candle's
        /// guard counts down the cache of whichever thread drops it, so
        /// on another thread (a workspace dropped or stepped elsewhere
        /// after a step that never ended) the guard waits in [`STRAYS`]
        /// for its own thread's next step, rather than turning this
        /// thread's cache off.
        fn turn_off(&mut self) {
            if let Some(cache) = self.cache.take() {
                if std::thread::current().id() == self.thread {
                    drop(cache);
                } else {
                    STRAYS.keep(self.thread, cache);
                }
            }
        }

        /// Turns the cache off and lets go of the gate, once this thread's
        /// stream has done the copies that fill the entries it added (a
        /// device error here surfaces at the next op).
        pub(crate) fn close(mut self, device: &Device) {
            self.turn_off();
            if !self.replayed {
                wait(device);
            }
        }
    }

    impl Drop for Uploads {
        fn drop(&mut self) {
            // The pass goes after this, with the fields.
            self.turn_off();
        }
    }

    /// Waits for this thread's stream, whatever error another call left
    /// in cudarc's slot ([`crate::driver::wait`]); a failed wait is left
    /// in the slot for the next call.
    fn wait(device: &Device) {
        if let Ok(cuda) = device.as_cuda_device() {
            let ctx = cuda.cuda_stream().context().clone();
            ctx.record_err(crate::driver::wait(cuda));
        }
    }

    /// An error another call left in cudarc's slot, taken out of it.
    pub(super) type Held = std::result::Result<(), DriverError>;

    /// Starts capturing the device's stream (this thread's work only).
    /// Returns an error another call left in cudarc's slot, taken out of it
    /// until [`end`] puts it back: every cudarc call of the capture would
    /// fail with it (and a failed recording keeps a scratch's steps op by
    /// op for a while), as a replay's launch would.
    pub(super) fn begin(device: &Device) -> Result<Held> {
        let stream = stream(device)?;
        let ctx = stream.context();
        let held = ctx.check_err();
        let begun = stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .w();
        match begun {
            Ok(()) => Ok(held),
            Err(e) => {
                ctx.record_err(held);
                Err(e)
            }
        }
    }

    /// Ends the capture and instantiates the graph, then puts back the
    /// error [`begin`] held (unless the end left one of its own). The
    /// capture ends whatever else fails, so that the thread's stream runs
    /// work again.
    pub(super) fn end(device: &Device, held: Held) -> Result<Graph> {
        let stream = stream(device)?;
        let ctx = stream.context();
        let ended = end_capture(&stream);
        let left = ctx.check_err();
        ctx.record_err(left.and(held));
        ended
    }

    /// [`end`] without the held error.
    fn end_capture(
        stream: &std::sync::Arc<candle_core::cuda_backend::cudarc::driver::CudaStream>,
    ) -> Result<Graph> {
        let ctx = stream.context();
        // cudarc keeps the errors of calls that cannot return one (frees)
        // in one slot for every thread, and fails the next call with them,
        // which would fail the end of the capture before it ends it. Take
        // them first (they may be another thread's, or this capture's: a
        // free into a capture an earlier call invalidated).
        let pending = ctx.check_err();
        let graph = stream.end_capture(
            sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
        );
        let after = ctx.check_err();
        if graph.is_err() {
            close(stream.cu_stream());
        }
        match (graph, after) {
            // A whole graph: errors taken before or after its end were not
            // this capture's (which would have invalidated it, and cudarc's
            // end reports its own); leave one for the next call, as cudarc
            // would have.
            (Ok(Some(g)), after) => {
                ctx.record_err(after.and(pending));
                Ok(Graph(g))
            }
            (Ok(None), _) => candle_core::bail!("the CUDA graph capture recorded nothing"),
            // The capture's own error, and one taken before it (maybe the
            // cause: a free into the capture an earlier call invalidated).
            (Err(e), _) => match pending {
                Ok(()) => Err(e).w(),
                Err(p) => candle_core::bail!("{e} (an earlier call failed: {p})"),
            },
        }
    }

    /// Ends a capture that [`end`] will not, if one is open on this
    /// thread's stream, and puts back the error [`begin`] held.
    pub(super) fn abandon(device: &Device, held: Held) {
        if let Ok(stream) = stream(device) {
            close(stream.cu_stream());
            stream.context().record_err(held);
        }
    }

    /// Ends a capture still open on `stream` (this thread's) and drops what
    /// it recorded.
    fn close(stream: sys::CUstream) {
        use candle_core::cuda_backend::cudarc::driver::result;
        // SAFETY: `stream` is this thread's stream handle from candle's
        // device, whose context is current on this thread (the capture
        // began here); a graph the end returns is owned by no one else and
        // destroyed once.
        unsafe {
            if let Ok(sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE) =
                result::stream::is_capturing(stream)
            {
                return;
            }
            if let Ok(g) = result::stream::end_capture(stream) {
                if !g.is_null() {
                    let _ = result::graph::destroy(g);
                }
            }
        }
    }
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::UploadGate;

    /// The gate's holder may take it again; another thread waits until
    /// every pass is gone.
    #[test]
    fn one_thread_at_a_time_holds_the_gate() {
        let gate = Arc::new(UploadGate::default());
        let outer = UploadGate::enter(&gate);
        let inner = UploadGate::enter(&gate);
        let entered = Arc::new(AtomicBool::new(false));
        let other = {
            let (gate, entered) = (gate.clone(), entered.clone());
            std::thread::spawn(move || {
                let _pass = UploadGate::enter(&gate);
                entered.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!entered.load(Ordering::SeqCst), "entered while held");
        drop(inner);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!entered.load(Ordering::SeqCst), "entered while held once");
        drop(outer);
        other.join().unwrap();
        assert!(entered.load(Ordering::SeqCst));
    }
}
