//! [`Gated`]: `act(gate) * up` in one kernel (`kernels/gated.cu`), in place
//! of candle's activation kernel and product kernel.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape};

use super::{q8, RowLayout};

/// The activation of a gated unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// SiLU: SwiGLU (llama family).
    Silu,
    /// GELU, tanh approximation (as ggml's): GeGLU (Gemma).
    Gelu,
}

impl Gate {
    fn apply(self, x: f32) -> f32 {
        match self {
            Gate::Silu => x / (1.0 + (-x).exp()),
            Gate::Gelu => {
                let sqrt_two_over_pi =
                    std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
                0.5 * x * (1.0 + (sqrt_two_over_pi * x * (1.0 + 0.044715 * x * x)).tanh())
            }
        }
    }
}

/// `act(gate) * up`, element by element, of two f32 tensors of one shape
/// (contiguous, or rows contiguous at any stride: the halves of a stacked
/// product's rows); with `blocks`, flat, followed by the results' blocks
/// of that kind ([`q8`]: Q8_1 blocks of a multiple of 32 values, or the
/// matrix layout of rows of a multiple of 32).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Gated {
    pub(crate) act: Gate,
    pub(crate) blocks: q8::Blocks,
}

/// The rows of `l`: a 2-D layout's, or a contiguous one's values as one
/// row.
fn rows_of(l: &Layout) -> Result<RowLayout> {
    match l.dims().len() {
        2 => RowLayout::of(l),
        _ => match l.contiguous_offsets() {
            Some((a, b)) => Ok(RowLayout {
                start: a,
                rows: 1,
                width: b - a,
                stride: b - a,
            }),
            None => candle_core::bail!("gated unit: values must be contiguous rows"),
        },
    }
}

impl Gated {
    /// The number of values and the rows' width.
    fn check(&self, l1: &Layout, l2: &Layout) -> Result<(usize, usize)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("gated unit: gate and up differ in shape");
        }
        let n = l1.shape().elem_count();
        let rows = rows_of(l1)?;
        rows_of(l2)?;
        if u32::try_from(n + self.blocks.words(rows.rows, rows.width)).is_err() {
            candle_core::bail!("gated unit: more than 2^32 values");
        }
        let whole = match self.blocks {
            q8::Blocks::No => true,
            q8::Blocks::Vector => n.is_multiple_of(q8::BLOCK),
            q8::Blocks::Matrix => rows.width.is_multiple_of(q8::BLOCK),
        };
        if !whole || (rows.width == 0 && self.blocks != q8::Blocks::No) {
            candle_core::bail!("gated unit: blocks of rows of {} values", rows.width);
        }
        Ok((n, rows.width))
    }

    /// The result's shape.
    fn shape(&self, l1: &Layout, n: usize, width: usize) -> Shape {
        match self.blocks {
            q8::Blocks::No => l1.shape().clone(),
            blocks => Shape::from(n + blocks.words(n / width, width)),
        }
    }
}

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "gated"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, width) = self.check(l1, l2)?;
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (s1, s2) else {
            candle_core::bail!("gated unit: f32 values");
        };
        let (g, u) = (rows_of(l1)?.gather(g)?, rows_of(l2)?.gather(u)?);
        let mut out: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| self.act.apply(g) * u)
            .collect();
        if n > 0 && self.blocks != q8::Blocks::No {
            let results = out.clone();
            self.blocks
                .quantize_into(&results, n / width, width, &mut out);
        }
        Ok((CpuStorage::F32(out), self.shape(l1, n, width)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::LaunchConfig;

        use super::launch::Kernel;

        const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/gated.ptx"));
        let (n, width) = self.check(l1, l2)?;
        let dev = s1.device();
        let (gl, ul) = (rows_of(l1)?, rows_of(l2)?);
        let g = s1.as_cuda_slice::<f32>()?.slice(gl.start..gl.end());
        let u = s2.as_cuda_slice::<f32>()?.slice(ul.start..ul.end());
        let shape = self.shape(l1, n, width);
        // SAFETY: the kernel writes every one of the n values, and with
        // blocks their words, all but matrix blocks' spare blocks, which a
        // product reads only for results it drops (any bits are an f32).
        let out = unsafe { dev.alloc::<f32>(shape.elem_count())? };
        // Null pointers say: no blocks (of that layout).
        let blocks_at = super::cuda::address(&out, n);
        let (blocks, matrix) = match self.blocks {
            q8::Blocks::No => (0, 0),
            q8::Blocks::Vector => (blocks_at, 0),
            q8::Blocks::Matrix => (0, blocks_at),
        };
        let name = match self.act {
            Gate::Silu => "swiglu_f32",
            Gate::Gelu => "geglu_f32",
        };
        let kernel = Kernel::load(dev, name, "realm_gated", PTX)?;
        let mut b = kernel.args();
        let n32 = n as u32;
        b.arg(&g);
        b.arg(&u);
        b.arg(&out);
        b.arg(&n32);
        b.arg(&blocks);
        let width = width as u32;
        let (g_stride, u_stride) = (gl.stride as i64, ul.stride as i64);
        b.arg(&width);
        b.arg(&g_stride);
        b.arg(&u_stride);
        b.arg(&matrix);
        // SAFETY: the arguments match the kernel's parameters in order and
        // type; `g` and `u` hold n values in rows of `width` at their
        // strides, within their views, `out` n values (then their words,
        // with blocks: n a multiple of 32, or for the matrix layout, rows
        // of a multiple of 32 padded, both kinds), and the kernel's
        // grid-stride loop stops at n; its blocks of threads are whole
        // warps, which the blocks' shuffles need.
        unsafe { b.launch(LaunchConfig::for_num_elems(n32)) }?;
        Ok((
            candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()),
            shape,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candles_activations() {
        let g = Tensor::new(&[-3.0f32, -0.5, 0.0, 0.25, 2.0, 7.5], &Device::Cpu).unwrap();
        let u = Tensor::new(&[1.5f32, -2.0, 3.0, 0.5, -1.0, 0.1], &Device::Cpu).unwrap();
        for (gate, want) in [
            (Gate::Silu, (g.silu().unwrap() * &u).unwrap()),
            (Gate::Gelu, (g.gelu().unwrap() * &u).unwrap()),
        ] {
            let op = Gated {
                act: gate,
                blocks: q8::Blocks::No,
            };
            let got = g.apply_op2_no_bwd(&u, &op).unwrap();
            let (got, want) = (
                got.to_vec1::<f32>().unwrap(),
                want.to_vec1::<f32>().unwrap(),
            );
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{gate:?}: {a} vs {b}"
                );
            }
        }
        let short = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
        let op = Gated {
            act: Gate::Silu,
            blocks: q8::Blocks::No,
        };
        assert!(g.apply_op2_no_bwd(&short, &op).is_err());
        // Blocks need whole blocks of values.
        let blocks = Gated {
            blocks: q8::Blocks::Vector,
            ..op
        };
        assert!(g.apply_op2_no_bwd(&u, &blocks).is_err());
    }
}
