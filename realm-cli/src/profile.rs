//! `realm bench --profile`: where a decode step's time goes, op by op.
//!
//! [`Profiled`] is a backend that runs every op on another backend, waits
//! for the device after each one and adds the time to the op's account
//! (matrix products by weight type and shape, so that each kernel shape
//! has its line). Waiting after every op adds the launch-to-finish
//! latency a queue would hide, so the accounts sum to more than a plain
//! step takes; their proportions say where the time goes. Steps run op by
//! op (no recording).

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// `B`, timing each op.
#[derive(Debug)]
pub struct Profiled<'b, B> {
    inner: &'b B,
    accounts: Mutex<BTreeMap<String, Account>>,
}

impl<'b, B: Backend> Profiled<'b, B> {
    pub fn new(inner: &'b B) -> Self {
        Self {
            inner,
            accounts: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs `f`, waits for the device, and adds the time to `name`'s account.
    fn time<T>(
        &self,
        name: impl FnOnce() -> String,
        f: impl FnOnce() -> BackendResult<T>,
    ) -> BackendResult<T> {
        let start = Instant::now();
        let out = f()?;
        self.inner.synchronize()?;
        let spent = start.elapsed();
        let mut accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        let a = accounts.entry(name()).or_default();
        a.calls += 1;
        a.time += spent;
        Ok(out)
    }

    /// Forgets every account (after a warm-up).
    pub fn reset(&self) {
        self.accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Every account, the most expensive first.
    pub fn accounts(&self) -> Vec<(String, Account)> {
        let accounts = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
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
    fn swiglu_inplace(
        &self,
        gate: &mut B::Buffer,
        up: &B::Buffer,
        len: usize,
    ) -> BackendResult<()> {
        self.time(named("swiglu"), || self.inner.swiglu_inplace(gate, up, len))
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
}

impl<B: Backend> AttentionOps for Profiled<'_, B> {
    type KvCache = B::KvCache;

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
