//! KV caches on the device, allocated as slots of shared blocks so that a
//! batch of sequences created together attends with a few ops over a
//! block, not a few ops per sequence.
//!
//! A block holds, per layer, one `[2, slots, n_kv_heads, max_seq_len,
//! head_dim]` tensor: keys, then values (one tensor, so that one kernel
//! stores both). A cache is one slot: views of its block's tensors. Blocks of one configuration double in size (1,
//! 2, 4, ... up to [`MAX_SLOTS`] slots) as caches are made, so a single
//! session pays for one slot and 32 sessions made in a row sit in 6
//! blocks, consecutive slots in each. A dropped cache frees its slot for the
//! next cache of that configuration; the block's memory goes when its last
//! cache does.

use std::sync::{Arc, Mutex, Weak};

use candle_core::{DType, Device, Tensor};
use realm_core::backend::{BackendError, BackendResult, KvCacheConfig, KvDtype};
use realm_core::GgmlType;

use crate::{dev_err, product};

/// The most slots one block holds.
pub const MAX_SLOTS: usize = 32;

/// Blocks hold a multiple of this many positions (at most this many more
/// than a cache asks for: on SmolLM2 with f16 caches, 6 MB).
pub const LENGTH_STEP: usize = 256;

/// One block's tensors and free slots.
pub(crate) struct KvBlock {
    /// Its caches' configuration, the length rounded up.
    cfg: KvCacheConfig,
    slots: usize,
    /// Per layer, `[2, slots, heads, max_seq_len, head_dim]`: keys and
    /// values.
    pub(crate) kv: Vec<Tensor>,
    /// Per layer, views of `kv`'s keys and values, `[slots, heads,
    /// max_seq_len, head_dim]`.
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    free: Mutex<Vec<usize>>,
}

impl KvBlock {
    fn new(
        device: &Device,
        cfg: &KvCacheConfig,
        dt: DType,
        slots: usize,
    ) -> candle_core::Result<Self> {
        let mut kv = Vec::with_capacity(cfg.n_layers);
        let mut k = Vec::with_capacity(cfg.n_layers);
        let mut v = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let s = cfg.shape(l);
            let shape = (2, slots, s.n_kv_heads, cfg.max_seq_len, s.head_dim);
            // Zeros: a static step's masked reads of unwritten positions
            // must see finite values.
            let both = Tensor::zeros(shape, dt, device)?;
            k.push(both.get(0)?);
            v.push(both.get(1)?);
            kv.push(both);
        }
        // Other threads take this block's slots and write them on their own
        // streams (CUDA's per-thread streams): the zeros must be there first.
        crate::driver::synchronize(device)?;
        Ok(Self {
            cfg: cfg.clone(),
            slots,
            kv,
            k,
            v,
            // Taken from the end: lowest slots first.
            free: Mutex::new((0..slots).rev().collect()),
        })
    }

    fn take(&self) -> Option<usize> {
        self.free.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn live(&self) -> usize {
        self.slots - self.free.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// The element type of a cache: f32 or f16 (this backend keeps no Q8_0
/// caches; [`KvPool::cache`] refuses them).
pub(crate) fn dtype_of(d: KvDtype) -> BackendResult<DType> {
    match d {
        KvDtype::F32 => Ok(DType::F32),
        KvDtype::F16 => Ok(DType::F16),
        KvDtype::Q8_0 => Err(BackendError::UnsupportedType {
            op: "kv_cache",
            dtype: GgmlType::Q8_0,
        }),
    }
}

/// Keys and values of every layer of one sequence, on the device: per
/// layer one `[n_kv_heads, positions, head_dim]` view of keys and one of
/// values (a slot of a shared block, whose `positions` are `max_seq_len`
/// rounded up to a multiple of [`LENGTH_STEP`]), in the cache's element
/// type, written in place.
pub struct GpuKvCache {
    cfg: KvCacheConfig,
    block: Arc<KvBlock>,
    slot: usize,
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
}

impl std::fmt::Debug for GpuKvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuKvCache")
            .field("cfg", &self.cfg)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl Drop for GpuKvCache {
    fn drop(&mut self) {
        // Its block's memory may go with it.
        if let Some(k) = self.k.first() {
            crate::driver::make_current(k.device());
        }
        self.block
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.slot);
    }
}

impl GpuKvCache {
    /// The configuration the cache was made with.
    pub fn config(&self) -> &KvCacheConfig {
        &self.cfg
    }

    /// The configuration of its block: the cache's, with the positions its
    /// views span (`max_seq_len` rounded up to a multiple of
    /// [`LENGTH_STEP`]). Caches of one storage configuration may attend in
    /// one launch.
    pub(crate) fn storage(&self) -> &KvCacheConfig {
        &self.block.cfg
    }

    /// The block and slot, for batching.
    pub(crate) fn block(&self) -> (&Arc<KvBlock>, usize) {
        (&self.block, self.slot)
    }

    /// Whether `next` is the slot after this one in the same block.
    pub(crate) fn precedes(&self, next: &GpuKvCache) -> bool {
        Arc::ptr_eq(&self.block, &next.block) && self.slot + 1 == next.slot
    }
}

/// The backend's blocks, by configuration.
#[derive(Debug, Default)]
pub(crate) struct KvPool {
    blocks: Mutex<Vec<Weak<KvBlock>>>,
}

impl KvPool {
    /// A cache of `cfg`: a free slot of a block of its storage
    /// configuration ([`GpuKvCache::storage`]), or a slot of a new block
    /// twice the size of that configuration's live caches (at most
    /// [`MAX_SLOTS`]).
    pub(crate) fn cache(&self, device: &Device, cfg: &KvCacheConfig) -> BackendResult<GpuKvCache> {
        const OP: &str = "kv_cache";
        let dt = dtype_of(cfg.dtype)?;
        if cfg.n_layers == 0 || cfg.max_seq_len == 0 {
            return Err(BackendError::InvalidParameter {
                op: OP,
                what: "every dimension of a KV cache must be positive",
            });
        }
        cfg.check_shapes(OP)?;
        let storage = KvCacheConfig {
            max_seq_len: product(
                OP,
                "cache size overflows",
                cfg.max_seq_len.div_ceil(LENGTH_STEP),
                LENGTH_STEP,
            )?,
            ..cfg.clone()
        };
        let mut all = 0usize;
        for l in 0..cfg.n_layers {
            let s = cfg.shape(l);
            let layer = product(OP, "cache size overflows", s.n_kv_heads, s.head_dim)
                .and_then(|v| product(OP, "cache size overflows", v, 2 * storage.max_seq_len))?;
            all = all
                .checked_add(layer)
                .ok_or(BackendError::InvalidParameter {
                    op: OP,
                    what: "cache size overflows",
                })?;
        }
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        blocks.retain(|b| b.strong_count() > 0);
        let mut live = 0;
        let mut found = None;
        for b in blocks.iter().filter_map(Weak::upgrade) {
            if b.cfg != storage {
                continue;
            }
            live += b.live();
            if found.is_none() {
                if let Some(slot) = b.take() {
                    found = Some((b, slot));
                }
            }
        }
        let (block, slot) = match found {
            Some(f) => f,
            None => {
                let slots = live.clamp(1, MAX_SLOTS);
                product(OP, "cache size overflows", all, slots)?;
                let block =
                    Arc::new(KvBlock::new(device, &storage, dt, slots).map_err(dev_err(OP))?);
                blocks.push(Arc::downgrade(&block));
                let slot = block.take().ok_or(BackendError::InvalidParameter {
                    op: OP,
                    what: "a new block has no free slot",
                })?;
                (block, slot)
            }
        };
        let views = (|| -> candle_core::Result<_> {
            let view = |t: &Tensor| t.narrow(0, slot, 1)?.squeeze(0);
            let k = block
                .k
                .iter()
                .map(view)
                .collect::<candle_core::Result<Vec<_>>>()?;
            let v = block
                .v
                .iter()
                .map(view)
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok((k, v))
        })();
        match views {
            Ok((k, v)) => Ok(GpuKvCache {
                cfg: cfg.clone(),
                block,
                slot,
                k,
                v,
            }),
            Err(e) => {
                block
                    .free
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(slot);
                Err(dev_err(OP)(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_seq_len: usize) -> KvCacheConfig {
        KvCacheConfig {
            n_layers: 2,
            n_kv_heads: 2,
            head_dim: 4,
            max_seq_len,
            dtype: KvDtype::F32,
            layer_shapes: None,
        }
    }

    #[test]
    fn caches_fill_doubling_blocks_and_reuse_freed_slots() {
        let (pool, dev) = (KvPool::default(), Device::Cpu);
        let c: Vec<_> = (0..8).map(|_| pool.cache(&dev, &cfg(8)).unwrap()).collect();
        let sizes: Vec<usize> = c.iter().map(|c| c.block.slots).collect();
        assert_eq!(sizes, [1, 1, 2, 2, 4, 4, 4, 4]);
        let follows: Vec<bool> = c.windows(2).map(|w| w[0].precedes(&w[1])).collect();
        assert_eq!(follows, [false, false, true, false, true, true, true]);
        // Another configuration gets its own block.
        let other = pool
            .cache(
                &dev,
                &KvCacheConfig {
                    n_kv_heads: 1,
                    ..cfg(8)
                },
            )
            .unwrap();
        assert_eq!((other.block.slots, other.slot), (1, 0));
        assert!(!c[7].precedes(&other));
        // A dropped cache's slot goes to the next cache of its configuration.
        let mut c = c;
        let freed = c.remove(5);
        let (block, slot) = (Arc::clone(&freed.block), freed.slot);
        drop(freed);
        let again = pool.cache(&dev, &cfg(8)).unwrap();
        assert!(Arc::ptr_eq(&again.block, &block) && again.slot == slot);
        // Views are the slot's: writing one cache leaves its neighbours.
        let ones = Tensor::ones((2, LENGTH_STEP, 4), DType::F32, &dev).unwrap();
        c[2].k[1].slice_set(&ones, 0, 0).unwrap();
        let sum = |t: &Tensor| t.sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(
            (sum(&c[2].k[1]), sum(&c[3].k[1]), sum(&c[2].k[0])),
            (2048.0, 0.0, 0.0)
        );
        // Keys and values are views of one tensor per layer, of
        // `LENGTH_STEP` positions.
        assert_eq!((sum(&c[2].v[1]), sum(&c[2].block.kv[1])), (0.0, 2048.0));
        assert_eq!(c[2].k[1].dims(), [2, LENGTH_STEP, 4]);
        assert!(pool
            .cache(
                &dev,
                &KvCacheConfig {
                    n_layers: 0,
                    ..cfg(8)
                }
            )
            .is_err());
        assert!(pool.cache(&dev, &cfg(usize::MAX - 1)).is_err());
    }

    #[test]
    fn lengths_a_little_apart_share_blocks() {
        let (pool, dev) = (KvPool::default(), Device::Cpu);
        let lens = [100, LENGTH_STEP, 1, LENGTH_STEP + 1, 200];
        let c: Vec<_> = lens
            .iter()
            .map(|&n| pool.cache(&dev, &cfg(n)).unwrap())
            .collect();
        // Each cache keeps the length it asked for.
        let asked: Vec<usize> = c.iter().map(|c| c.config().max_seq_len).collect();
        assert_eq!(asked, lens);
        let held: Vec<usize> = c.iter().map(|c| c.storage().max_seq_len).collect();
        assert_eq!(held, [256, 256, 256, 512, 256]);
        // The caches of 256 positions fill blocks of 1, 1 and 2 as caches
        // of one length would; the one of 512 has a block of its own.
        let sizes: Vec<usize> = c.iter().map(|c| c.block.slots).collect();
        assert_eq!(sizes, [1, 1, 2, 1, 2]);
        assert!(c[2].precedes(&c[4]));
        assert!(!c[2].precedes(&c[3]) && !c[3].precedes(&c[4]));
    }
}
