//! `realm bench --profile`: where a decode step's time goes, op by op.
//!
//! [`Profiled`] is a backend that runs every op on another backend, waits
//! for the device after each one and adds the time to the op's account
//! (matrix products by weight type and shape, so that each kernel shape
//! has its line). Waiting after every op adds the launch-to-finish
//! latency a queue would hide, so the accounts sum to more than a plain
//! step takes; their proportions say where the time goes. Steps run op by
//! op (no recording).
//!
//! With [`Marks`] on the device's queue (CUDA's [`OpClock`]), it instead
//! times each op on the device, from a mark before it to a mark after it,
//! with the ops run back to back as a recorded step runs them: the queue is
//! held before every [`SEGMENT`] ops, so that they queue up while the host
//! launches them and then run without waiting for the host. An op the host
//! launched after its hold had ended is counted as late: the device may
//! have been waiting for it, and its time may include the host's. The
//! last op of a step, the download of its logits, waits for the device, so
//! its time includes the host's return from that wait.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use realm_compute_gpu::OpClock;

use realm_core::backend::{
    ActivationOps, AttentionOps, AttentionParams, Backend, BackendCore, BackendResult,
    KvCacheConfig, KvSpan, MatMulOps, NormOps, QkNorm, RopeOps, RopeParams, StepOps, WeightInfo,
};
use realm_core::{GgmlType, TensorView};

/// Calls and time of one op account.
#[derive(Debug, Default, Clone, Copy)]
pub struct Account {
    pub calls: u64,
    pub time: Duration,
}

/// Marks on a device's queue, for device time op by op.
pub trait Marks: Send {
    /// Holds the queue for [`HOLD`], so that the ops launched meanwhile run
    /// back to back once it lets go.
    fn hold(&mut self) -> BackendResult<()>;
    /// Marks the queue where its work now ends.
    fn mark(&mut self) -> BackendResult<()>;
    /// Waits for the device; the time from each mark to the next.
    fn take(&mut self) -> BackendResult<Vec<Duration>>;
}

/// How long the queue is held before each [`SEGMENT`] ops: far longer
/// than the host takes to launch them.
pub const HOLD: Duration = Duration::from_millis(20);

/// The most ops launched behind one hold: few enough that their kernels,
/// allocations and marks fit the driver's queue of pending work (about a
/// thousand commands), which would otherwise make the host wait for the
/// device before the hold ends.
pub const SEGMENT: usize = 64;

impl Marks for OpClock {
    fn hold(&mut self) -> BackendResult<()> {
        OpClock::hold(self, HOLD)
    }
    fn mark(&mut self) -> BackendResult<()> {
        OpClock::mark(self)
    }
    fn take(&mut self) -> BackendResult<Vec<Duration>> {
        OpClock::take(self)
    }
}

/// `B`, timing each op.
pub struct Profiled<'b, B> {
    inner: &'b B,
    accounts: Mutex<BTreeMap<String, Account>>,
    /// With marks: timing on the device.
    marking: Mutex<Option<Marking>>,
}

/// Ops timed on the device, not yet added to their accounts.
struct Marking {
    marks: Box<dyn Marks>,
    /// The ops marked since the last [`Profiled::settle`], in order.
    ops: Vec<Marked>,
    /// When the queue was last held, and the ops launched since.
    held: Instant,
    since_hold: usize,
}

struct Marked {
    name: String,
    /// A hold came between it and the op before.
    after_hold: bool,
    /// Launched after its hold had ended.
    late: bool,
}

/// What [`Profiled::settle`] added.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Ops added to their accounts.
    pub ops: usize,
    /// Of them, launched after their hold had ended.
    pub late: usize,
    /// The device's idle time between them, holds excepted.
    pub idle: Duration,
}

impl<B: std::fmt::Debug> std::fmt::Debug for Profiled<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profiled")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<'b, B: Backend> Profiled<'b, B> {
    pub fn new(inner: &'b B) -> Self {
        Self {
            inner,
            accounts: Mutex::new(BTreeMap::new()),
            marking: Mutex::new(None),
        }
    }

    /// From now on, times ops on the device between `marks` (see the
    /// module's text) instead of waiting for the device after each.
    pub fn use_marks(&self, marks: Box<dyn Marks>) {
        *lock(&self.marking) = Some(Marking {
            marks,
            ops: Vec::new(),
            held: Instant::now(),
            since_hold: SEGMENT,
        });
    }

    /// With marks, waits for the device and adds each op marked since the
    /// last call to its account: call after a step (the next op is held
    /// again). Without marks, nothing to add.
    pub fn settle(&self) -> Result<Settled> {
        let Some(mk) = &mut *lock(&self.marking) else {
            return Ok(Settled::default());
        };
        let times = mk.marks.take()?;
        let ops = std::mem::take(&mut mk.ops);
        mk.since_hold = SEGMENT;
        // Two marks an op: an op's time, then the time to the next op's.
        if times.len() != (2 * ops.len()).saturating_sub(1) {
            bail!("{} times between marks for {} ops", times.len(), ops.len());
        }
        let mut settled = Settled {
            ops: ops.len(),
            ..Settled::default()
        };
        let mut accounts = lock(&self.accounts);
        for (i, op) in ops.into_iter().enumerate() {
            if i > 0 && !op.after_hold {
                settled.idle += times[2 * i - 1];
            }
            settled.late += usize::from(op.late);
            let a = accounts.entry(op.name).or_default();
            a.calls += 1;
            a.time += times[2 * i];
        }
        Ok(settled)
    }

    /// Runs `f` and adds its time to `name`'s account: the time until the
    /// device is done with it, or with marks its device time.
    fn time<T>(
        &self,
        name: impl FnOnce() -> String,
        f: impl FnOnce() -> BackendResult<T>,
    ) -> BackendResult<T> {
        if let Some(mk) = &mut *lock(&self.marking) {
            let after_hold = mk.since_hold >= SEGMENT;
            if after_hold {
                mk.marks.hold()?;
                (mk.held, mk.since_hold) = (Instant::now(), 0);
            }
            let late = mk.held.elapsed() > HOLD;
            mk.marks.mark()?;
            let out = f()?;
            mk.marks.mark()?;
            mk.since_hold += 1;
            mk.ops.push(Marked {
                name: name(),
                after_hold,
                late,
            });
            return Ok(out);
        }
        let start = Instant::now();
        let out = f()?;
        self.inner.synchronize()?;
        let spent = start.elapsed();
        let mut accounts = lock(&self.accounts);
        let a = accounts.entry(name()).or_default();
        a.calls += 1;
        a.time += spent;
        Ok(out)
    }

    /// Forgets every account (after a warm-up).
    pub fn reset(&self) {
        lock(&self.accounts).clear();
    }

    /// Every account, the most expensive first.
    pub fn accounts(&self) -> Vec<(String, Account)> {
        let accounts = lock(&self.accounts);
        let mut v: Vec<_> = accounts.iter().map(|(k, a)| (k.clone(), *a)).collect();
        v.sort_by_key(|(_, a)| std::cmp::Reverse(a.time));
        v
    }
}

fn named(s: &str) -> impl FnOnce() -> String + '_ {
    move || s.to_string()
}

impl<B: Backend> BackendCore for Profiled<'_, B> {
    type Workspace = B::Workspace;
    type Buffer = B::Buffer;

    fn name(&self) -> &str {
        self.inner.name()
    }
    fn workspace(&self) -> B::Workspace {
        self.inner.workspace()
    }
    fn buffer(&self, len: usize) -> BackendResult<B::Buffer> {
        self.inner.buffer(len)
    }
    fn upload(&self, values: &[f32]) -> BackendResult<B::Buffer> {
        self.time(named("upload"), || self.inner.upload(values))
    }
    fn download(&self, buf: &B::Buffer, out: &mut [f32]) -> BackendResult<()> {
        self.time(named("download"), || self.inner.download(buf, out))
    }
    fn host_slice(buf: &B::Buffer) -> Option<&[f32]> {
        B::host_slice(buf)
    }
    fn read_on_host<R>(
        &self,
        ws: &mut B::Workspace,
        buf: &B::Buffer,
        len: usize,
        read: impl FnOnce(&[f32]) -> R,
    ) -> BackendResult<R> {
        self.time(named("download"), || {
            self.inner.read_on_host(ws, buf, len, read)
        })
    }
    fn synchronize(&self) -> BackendResult<()> {
        self.inner.synchronize()
    }
    fn split_cols(
        &self,
        src: &B::Buffer,
        n_rows: usize,
        widths: &[usize],
        outs: &mut [&mut B::Buffer],
    ) -> BackendResult<()> {
        self.time(named("split_cols"), || {
            self.inner.split_cols(src, n_rows, widths, outs)
        })
    }
    fn copy_rows(
        &self,
        src: &B::Buffer,
        rows: Range<usize>,
        width: usize,
        dst: &mut B::Buffer,
    ) -> BackendResult<()> {
        self.time(named("copy_rows"), || {
            self.inner.copy_rows(src, rows, width, dst)
        })
    }
}

impl<B: Backend> MatMulOps for Profiled<'_, B> {
    type Weight<'a>
        = B::Weight<'a>
    where
        Self: 'a;

    fn supports_matmul(&self, t: GgmlType) -> bool {
        self.inner.supports_matmul(t)
    }
    fn weight<'a>(&self, t: &TensorView<'a>) -> BackendResult<B::Weight<'a>> {
        self.inner.weight(t)
    }
    fn stack<'a>(&self, parts: &[TensorView<'a>]) -> BackendResult<Option<B::Weight<'a>>> {
        self.inner.stack(parts)
    }
    fn matmul(
        &self,
        ws: &mut B::Workspace,
        w: &B::Weight<'_>,
        x: &B::Buffer,
        n_tokens: usize,
        out: &mut B::Buffer,
    ) -> BackendResult<()> {
        let name = || format!("matmul {} {}x{}", w.dtype(), w.rows(), w.cols());
        self.time(name, || self.inner.matmul(ws, w, x, n_tokens, out))
    }
    fn add_rows_product(
        &self,
        dst: &mut B::Buffer,
        first_row: usize,
        x: &B::Buffer,
        n_rows: usize,
        w: &B::Buffer,
        (k, m): (usize, usize),
        s: f32,
    ) -> BackendResult<()> {
        let name = || format!("lora product f32 {m}x{k}");
        self.time(name, || {
            self.inner
                .add_rows_product(dst, first_row, x, n_rows, w, (k, m), s)
        })
    }
    fn embed(
        &self,
        ws: &mut B::Workspace,
        table: &B::Weight<'_>,
        ids: &[u32],
        out: &mut B::Buffer,
    ) -> BackendResult<()> {
        self.time(named("embed"), || self.inner.embed(ws, table, ids, out))
    }
}

impl<B: Backend> NormOps for Profiled<'_, B> {
    fn rms_norm(
        &self,
        x: &B::Buffer,
        w: &B::Buffer,
        eps: f32,
        n_rows: usize,
        out: &mut B::Buffer,
    ) -> BackendResult<()> {
        self.time(named("rms_norm"), || {
            self.inner.rms_norm(x, w, eps, n_rows, out)
        })
    }
    fn rms_norm_inplace(
        &self,
        x: &mut B::Buffer,
        w: &B::Buffer,
        eps: f32,
        n_rows: usize,
    ) -> BackendResult<()> {
        self.time(named("rms_norm"), || {
            self.inner.rms_norm_inplace(x, w, eps, n_rows)
        })
    }
    fn layer_norm(
        &self,
        x: &B::Buffer,
        w: &B::Buffer,
        b: Option<&B::Buffer>,
        eps: f32,
        n_rows: usize,
        out: &mut B::Buffer,
    ) -> BackendResult<()> {
        self.time(named("layer_norm"), || {
            self.inner.layer_norm(x, w, b, eps, n_rows, out)
        })
    }
    fn layer_norm_inplace(
        &self,
        x: &mut B::Buffer,
        w: &B::Buffer,
        b: Option<&B::Buffer>,
        eps: f32,
        n_rows: usize,
    ) -> BackendResult<()> {
        self.time(named("layer_norm"), || {
            self.inner.layer_norm_inplace(x, w, b, eps, n_rows)
        })
    }
    fn add_rms_norm(
        &self,
        x: &mut B::Buffer,
        y: &B::Buffer,
        w: &B::Buffer,
        eps: f32,
        n_rows: usize,
        width: usize,
        out: &mut B::Buffer,
    ) -> BackendResult<()> {
        self.time(named("add_rms_norm"), || {
            self.inner.add_rms_norm(x, y, w, eps, n_rows, width, out)
        })
    }

    fn norm_add_rms_norm(
        &self,
        x: &mut B::Buffer,
        y: &mut B::Buffer,
        y_w: &B::Buffer,
        w: &B::Buffer,
        eps: f32,
        n_rows: usize,
        width: usize,
        out: &mut B::Buffer,
    ) -> BackendResult<()> {
        self.time(named("norm_add_rms_norm"), || {
            self.inner
                .norm_add_rms_norm(x, y, y_w, w, eps, n_rows, width, out)
        })
    }
}

impl<B: Backend> RopeOps for Profiled<'_, B> {
    fn rope(
        &self,
        ws: &mut B::Workspace,
        x: &mut B::Buffer,
        n_heads: usize,
        head_dim: usize,
        positions: &[u32],
        p: &RopeParams,
    ) -> BackendResult<()> {
        self.time(named("rope"), || {
            self.inner.rope(ws, x, n_heads, head_dim, positions, p)
        })
    }
}

impl<B: Backend> ActivationOps for Profiled<'_, B> {
    fn softmax_inplace(
        &self,
        x: &mut B::Buffer,
        row_len: usize,
        n_rows: usize,
    ) -> BackendResult<()> {
        self.time(named("softmax"), || {
            self.inner.softmax_inplace(x, row_len, n_rows)
        })
    }
    fn silu_inplace(&self, x: &mut B::Buffer, len: usize) -> BackendResult<()> {
        self.time(named("silu"), || self.inner.silu_inplace(x, len))
    }
    fn gelu_inplace(&self, x: &mut B::Buffer, len: usize) -> BackendResult<()> {
        self.time(named("gelu"), || self.inner.gelu_inplace(x, len))
    }
    fn softcap_inplace(&self, x: &mut B::Buffer, cap: f32, len: usize) -> BackendResult<()> {
        self.time(named("softcap"), || self.inner.softcap_inplace(x, cap, len))
    }
    fn swiglu_inplace(
        &self,
        gate: &mut B::Buffer,
        up: &B::Buffer,
        len: usize,
    ) -> BackendResult<()> {
        self.time(named("swiglu"), || self.inner.swiglu_inplace(gate, up, len))
    }
    fn swiglu_oai_inplace(
        &self,
        gate: &mut B::Buffer,
        up: &B::Buffer,
        alpha_limit: (f32, f32),
        len: usize,
    ) -> BackendResult<()> {
        self.time(named("swiglu_oai"), || {
            self.inner.swiglu_oai_inplace(gate, up, alpha_limit, len)
        })
    }
    fn geglu_inplace(&self, gate: &mut B::Buffer, up: &B::Buffer, len: usize) -> BackendResult<()> {
        self.time(named("geglu"), || self.inner.geglu_inplace(gate, up, len))
    }
    fn add_inplace(&self, dst: &mut B::Buffer, src: &B::Buffer, len: usize) -> BackendResult<()> {
        self.time(named("add"), || self.inner.add_inplace(dst, src, len))
    }
    fn add_row_inplace(
        &self,
        dst: &mut B::Buffer,
        row: &B::Buffer,
        n_rows: usize,
    ) -> BackendResult<()> {
        self.time(named("add_row"), || {
            self.inner.add_row_inplace(dst, row, n_rows)
        })
    }
    fn mul_inplace(&self, dst: &mut B::Buffer, src: &B::Buffer, len: usize) -> BackendResult<()> {
        self.time(named("mul"), || self.inner.mul_inplace(dst, src, len))
    }
    fn scale_inplace(&self, dst: &mut B::Buffer, s: f32, len: usize) -> BackendResult<()> {
        self.time(named("scale"), || self.inner.scale_inplace(dst, s, len))
    }
    fn clamp_inplace(&self, x: &mut B::Buffer, limit: f32, len: usize) -> BackendResult<()> {
        self.time(named("clamp"), || self.inner.clamp_inplace(x, limit, len))
    }
    fn relu_squared_inplace(&self, x: &mut B::Buffer, len: usize) -> BackendResult<()> {
        self.time(named("relu_squared"), || {
            self.inner.relu_squared_inplace(x, len)
        })
    }
}

impl<B: Backend> AttentionOps for Profiled<'_, B> {
    type KvCache = B::KvCache;

    fn supports_sinks(&self) -> bool {
        self.inner.supports_sinks()
    }
    fn kv_cache(&self, cfg: &KvCacheConfig) -> BackendResult<B::KvCache> {
        self.inner.kv_cache(cfg)
    }
    fn kv_write(
        &self,
        ws: &mut B::Workspace,
        cache: &mut B::KvCache,
        at: KvSpan,
        k: &B::Buffer,
        v: &B::Buffer,
        rows: Range<usize>,
    ) -> BackendResult<()> {
        self.time(named("kv_write"), || {
            self.inner.kv_write(ws, cache, at, k, v, rows)
        })
    }
    fn kv_read(
        &self,
        cache: &B::KvCache,
        layer: usize,
        positions: Range<usize>,
        k: &mut [f32],
        v: &mut [f32],
    ) -> BackendResult<()> {
        self.time(named("kv_read"), || {
            self.inner.kv_read(cache, layer, positions, k, v)
        })
    }
    fn attention(
        &self,
        ws: &mut B::Workspace,
        cache: &B::KvCache,
        at: KvSpan,
        q: &B::Buffer,
        rows: Range<usize>,
        p: &AttentionParams,
        out: &mut B::Buffer,
    ) -> BackendResult<()> {
        self.time(named("attention"), || {
            self.inner.attention(ws, cache, at, q, rows, p, out)
        })
    }
    fn attend_rows(
        &self,
        ws: &mut B::Workspace,
        caches: &mut [&mut B::KvCache],
        layer: usize,
        positions: &[u32],
        kv: (&B::Buffer, &B::Buffer),
        q: &B::Buffer,
        p: &AttentionParams,
        out: &mut B::Buffer,
    ) -> BackendResult<()> {
        self.time(named("attend_rows"), || {
            self.inner
                .attend_rows(ws, caches, layer, positions, kv, q, p, out)
        })
    }
    fn rope_attend_rows(
        &self,
        ws: &mut B::Workspace,
        caches: &mut [&mut B::KvCache],
        layer: usize,
        positions: &[u32],
        qkv: (&mut B::Buffer, &mut B::Buffer, &B::Buffer),
        qk_norm: Option<QkNorm<'_, B::Buffer>>,
        rope: &RopeParams,
        p: &AttentionParams,
        out: &mut B::Buffer,
    ) -> BackendResult<()> {
        self.time(named("rope_attend_rows"), || {
            self.inner
                .rope_attend_rows(ws, caches, layer, positions, qkv, qk_norm, rope, p, out)
        })
    }
    fn rope_attend(
        &self,
        ws: &mut B::Workspace,
        cache: &mut B::KvCache,
        layer: usize,
        positions: &[u32],
        qkv: (&mut B::Buffer, &mut B::Buffer, &B::Buffer),
        qk_norm: Option<QkNorm<'_, B::Buffer>>,
        rope: &RopeParams,
        p: &AttentionParams,
        out: &mut B::Buffer,
    ) -> BackendResult<()> {
        self.time(named("rope_attend"), || {
            self.inner
                .rope_attend(ws, cache, layer, positions, qkv, qk_norm, rope, p, out)
        })
    }
}

/// Steps run op by op, so that each op is timed.
impl<B: Backend> StepOps for Profiled<'_, B> {
    type Recording = B::Recording;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use realm_compute_cpu::CpuBackend;
    use realm_core::backend::{BackendCore, BackendResult, NormOps};

    use super::{Marks, Profiled, Settled, SEGMENT};

    /// A queue whose time from mark i to mark i + 1 is `i + 1` us, which
    /// counts its holds.
    #[derive(Default)]
    struct Counted {
        marks: u64,
        holds: Arc<AtomicU64>,
    }

    impl Marks for Counted {
        fn hold(&mut self) -> BackendResult<()> {
            self.holds.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn mark(&mut self) -> BackendResult<()> {
            self.marks += 1;
            Ok(())
        }
        fn take(&mut self) -> BackendResult<Vec<Duration>> {
            let n = std::mem::take(&mut self.marks);
            Ok((1..n).map(Duration::from_micros).collect())
        }
    }

    #[test]
    fn marked_ops_are_timed_between_their_own_two_marks() {
        let cpu = CpuBackend::new().unwrap();
        let p = Profiled::new(&cpu);
        let counted = Counted::default();
        let holds = counted.holds.clone();
        p.use_marks(Box::new(counted));
        let x = cpu.upload(&[1.0, -2.0, 3.0, 0.5]).unwrap();
        let w = cpu.upload(&[1.0; 4]).unwrap();
        let mut out = cpu.buffer(4).unwrap();
        let mut host = [0f32; 4];
        // Marks 1-2, 3-4 and 5-6: 1, 3 and 5 us; 2 and 4 us between.
        p.rms_norm(&x, &w, 1e-6, 1, &mut out).unwrap();
        p.download(&out, &mut host).unwrap();
        p.rms_norm(&x, &w, 1e-6, 1, &mut out).unwrap();
        let settled = p.settle().unwrap();
        let idle = Duration::from_micros(6);
        assert!(settled.ops == 3 && settled.idle == idle, "{settled:?}");
        // One hold, before the first op.
        assert_eq!(holds.load(Ordering::Relaxed), 1);
        let accounts = p.accounts();
        let get = |op: &str| accounts.iter().find(|(n, _)| n == op).unwrap().1;
        assert_eq!(get("rms_norm").calls, 2);
        assert_eq!(get("rms_norm").time, Duration::from_micros(1 + 5));
        assert_eq!(get("download").calls, 1);
        assert_eq!(get("download").time, Duration::from_micros(3));
        // The ops still ran: x over its root mean square.
        let rms = ((1.0 + 4.0 + 9.0 + 0.25) / 4.0f32 + 1e-6).sqrt();
        assert!((host[1] - -2.0 / rms).abs() < 1e-5, "{host:?}");
        // Nothing marked since: nothing to add.
        assert_eq!(p.settle().unwrap(), Settled::default());
        assert_eq!(p.accounts().len(), 2);
        // The next step is held again.
        p.rms_norm(&x, &w, 1e-6, 1, &mut out).unwrap();
        assert_eq!(holds.load(Ordering::Relaxed), 2);
        assert_eq!(p.settle().unwrap().ops, 1);
    }

    #[test]
    fn every_segment_of_ops_is_held_and_its_hold_is_not_idle_time() {
        let cpu = CpuBackend::new().unwrap();
        let p = Profiled::new(&cpu);
        let counted = Counted::default();
        let holds = counted.holds.clone();
        p.use_marks(Box::new(counted));
        let x = cpu.upload(&[1.0; 4]).unwrap();
        let mut out = cpu.buffer(4).unwrap();
        let n = SEGMENT + 2;
        for _ in 0..n {
            p.rms_norm(&x, &x, 1e-6, 1, &mut out).unwrap();
        }
        assert_eq!(holds.load(Ordering::Relaxed), 2);
        // Op i's time is 2i + 1 us and the time after it 2i + 2 us; the
        // time before op SEGMENT holds the queue, and is not idle.
        let settled = p.settle().unwrap();
        let gaps: u64 = (0..n as u64 - 1).map(|i| 2 * i + 2).sum();
        let hold = 2 * (SEGMENT as u64 - 1) + 2;
        assert_eq!(settled.idle, Duration::from_micros(gaps - hold));
        let ops: u64 = (0..n as u64).map(|i| 2 * i + 1).sum();
        assert_eq!(p.accounts()[0].1.time, Duration::from_micros(ops));
    }

    #[test]
    fn an_op_launched_after_its_hold_ended_is_late() {
        let cpu = CpuBackend::new().unwrap();
        let p = Profiled::new(&cpu);
        p.use_marks(Box::new(Counted::default()));
        let x = cpu.upload(&[1.0; 4]).unwrap();
        let mut out = cpu.buffer(4).unwrap();
        p.rms_norm(&x, &x, 1e-6, 1, &mut out).unwrap();
        std::thread::sleep(super::HOLD + Duration::from_millis(5));
        p.rms_norm(&x, &x, 1e-6, 1, &mut out).unwrap();
        let settled = p.settle().unwrap();
        assert!(settled.ops == 2 && settled.late == 1, "{settled:?}");
    }

    #[test]
    fn marks_that_do_not_pair_with_the_ops_are_an_error() {
        let cpu = CpuBackend::new().unwrap();
        let p = Profiled::new(&cpu);
        let mut counted = Counted::default();
        counted.mark().unwrap(); // a stray mark before the op's two
        p.use_marks(Box::new(counted));
        let x = cpu.upload(&[1.0; 4]).unwrap();
        let mut out = cpu.buffer(4).unwrap();
        p.rms_norm(&x, &x, 1e-6, 1, &mut out).unwrap();
        let e = p.settle().unwrap_err().to_string();
        assert!(e.contains("2 times between marks for 1 ops"), "{e}");
    }
}
