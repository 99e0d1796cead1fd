//! Launches of Realm's kernels, checked against the parameters each
//! kernel's PTX declares.
//!
//! A kernel launch passes its arguments as untyped pointers: an argument
//! list that disagrees with the kernel (one argument too few, a 4-byte
//! integer where the kernel takes a pointer, a float where it takes an
//! integer, a struct of another size) is not an error to the driver, but a
//! kernel reading garbage, often an illegal address that spoils the CUDA
//! context for everything after it. Each launch here records the kind of
//! every argument and, before launching, compares the list with the
//! kernel's `.param` declarations, read once from its PTX: a mismatch is an
//! error that names the kernel and the argument.
//!
//! The kinds are coarse: PTX declares a pointer and a `long long` alike
//! (8 bytes), and an `int` and an `unsigned` alike, so two such arguments
//! swapped pass the check; what it catches is a list of the wrong length or
//! an argument of the wrong size or of float for integer.

/// A kernel parameter's kind: as PTX declares it, and as a launch passes
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Param {
    /// `.u32`, `.s32` or `.b32`: `int`, `unsigned`.
    Int32,
    /// `.f32`: `float`.
    Float32,
    /// `.u64`, `.s64` or `.b64`: a pointer, `long long`.
    Word64,
    /// `.b8 name[n]`: a struct of `n` bytes, passed by value.
    Bytes(usize),
}

/// The parameters of kernel `name` in `ptx`, in order, or why they cannot
/// be read.
pub(crate) fn entry_params(ptx: &str, name: &str) -> Result<Vec<Param>, String> {
    let head = format!(".entry {name}(");
    let start = ptx
        .find(&head)
        .ok_or_else(|| format!("the PTX has no kernel {name}"))?
        + head.len();
    let len = ptx[start..]
        .find(')')
        .ok_or_else(|| format!("kernel {name}: its parameter list does not end"))?;
    ptx[start..start + len]
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| param(d).ok_or_else(|| format!("kernel {name}: unknown parameter `{d}`")))
        .collect()
}

/// One `.param` declaration's kind, e.g. `.param .u64 k_param_0` or
/// `.param .align 8 .b8 k_param_11[512]`.
fn param(decl: &str) -> Option<Param> {
    let mut words = decl.split_whitespace();
    if words.next()? != ".param" {
        return None;
    }
    let (mut kind, mut name) = (None, None);
    while let Some(w) = words.next() {
        match w {
            ".align" => {
                words.next()?;
            }
            ".u32" | ".s32" | ".b32" => kind = Some(Param::Int32),
            ".f32" => kind = Some(Param::Float32),
            ".u64" | ".s64" | ".b64" => kind = Some(Param::Word64),
            ".b8" | ".u8" | ".s8" => kind = Some(Param::Bytes(1)),
            // Pointer attributes (`.ptr .global`); any other type is unknown.
            ".ptr" | ".global" | ".const" | ".shared" | ".local" => {}
            w if w.starts_with('.') => return None,
            w => name = Some(w),
        }
    }
    match (kind?, name?.split_once('[')) {
        (Param::Bytes(1), Some((_, n))) => n.strip_suffix(']')?.parse().ok().map(Param::Bytes),
        (_, Some(_)) => None,
        (kind, None) => Some(kind),
    }
}

/// Checks a launch's arguments (`got`) against kernel `name`'s parameters
/// (`want`).
pub(crate) fn check(name: &str, want: &[Param], got: &[Param]) -> Result<(), String> {
    match (0..want.len().max(got.len())).find(|&i| want.get(i) != got.get(i)) {
        None => Ok(()),
        Some(i) => Err(format!(
            "kernel {name}: argument {i} is {}, the kernel's parameter {} \
             ({} arguments for {} parameters)",
            got.get(i).map_or("missing".into(), |p| format!("{p:?}")),
            want.get(i)
                .map_or("does not exist".into(), |p| format!("is {p:?}")),
            got.len(),
            want.len()
        )),
    }
}

#[cfg(feature = "cuda")]
pub(crate) use cuda::Kernel;

#[cfg(feature = "cuda")]
mod cuda {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    use candle_core::cuda_backend::cudarc::driver::{
        CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchArgs, LaunchConfig,
        PushKernelArg,
    };
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, Result};

    use super::Param;
    use crate::fused::rope_angles::InvFreqs;
    use crate::fused::SlotTable;

    /// A value a launch passes, and the parameter kind it fills.
    pub(crate) trait KernelArg {
        const PARAM: Param;
    }

    macro_rules! kernel_args {
        ($($t:ty => $p:expr),* $(,)?) => {
            $(impl KernelArg for $t { const PARAM: Param = $p; })*
        };
    }
    kernel_args!(
        i32 => Param::Int32,
        u32 => Param::Int32,
        f32 => Param::Float32,
        i64 => Param::Word64,
        u64 => Param::Word64,
        SlotTable => Param::Bytes(std::mem::size_of::<SlotTable>()),
        InvFreqs => Param::Bytes(std::mem::size_of::<InvFreqs>()),
    );
    // Device memory is passed as its address.
    impl<T> KernelArg for CudaSlice<T> {
        const PARAM: Param = Param::Word64;
    }
    impl<T> KernelArg for CudaView<'_, T> {
        const PARAM: Param = Param::Word64;
    }
    impl<T> KernelArg for CudaViewMut<'_, T> {
        const PARAM: Param = Param::Word64;
    }

    /// Kernel `name`'s name and parameters in `ptx`, read once per kernel.
    fn params(name: &str, ptx: &str) -> Result<(Arc<str>, Arc<[Param]>)> {
        type Read = HashMap<Arc<str>, Arc<[Param]>>;
        static READ: OnceLock<Mutex<Read>> = OnceLock::new();
        let mut read = READ
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((k, p)) = read.get_key_value(name) {
            return Ok((k.clone(), p.clone()));
        }
        let p: Arc<[Param]> = super::entry_params(ptx, name)
            .map_err(candle_core::Error::Msg)?
            .into();
        let k: Arc<str> = name.into();
        read.insert(k.clone(), p.clone());
        Ok((k, p))
    }

    /// One of Realm's kernels, loaded, with its parameters.
    pub(crate) struct Kernel {
        func: CudaFunction,
        /// candle's stream of the device (each thread's own).
        stream: Arc<CudaStream>,
        name: Arc<str>,
        params: Arc<[Param]>,
    }

    impl Kernel {
        /// Kernel `name` of module `module`, whose PTX is `ptx`, on `dev`
        /// (candle loads a module once per device).
        pub(crate) fn load(dev: &CudaDevice, name: &str, module: &str, ptx: &str) -> Result<Self> {
            let (name, params) = params(name, ptx)?;
            Ok(Self {
                func: dev
                    .get_or_load_custom_func(&name, module, ptx)?
                    .into_cuda_function(),
                stream: dev.cuda_stream(),
                name,
                params,
            })
        }

        /// A launch's arguments, to be pushed in the kernel's order.
        pub(crate) fn args(&self) -> Launch<'_> {
            Launch {
                kernel: self,
                args: self.stream.launch_builder(&self.func),
                kinds: Vec::with_capacity(self.params.len()),
            }
        }
    }

    /// The arguments of one launch of a [`Kernel`], with their kinds.
    pub(crate) struct Launch<'a> {
        kernel: &'a Kernel,
        args: LaunchArgs<'a>,
        kinds: Vec<Param>,
    }

    impl<'a> Launch<'a> {
        /// Pushes the next argument.
        pub(crate) fn arg<T: KernelArg>(&mut self, v: &'a T) -> &mut Self
        where
            LaunchArgs<'a>: PushKernelArg<&'a T>,
        {
            self.kinds.push(T::PARAM);
            self.args.arg(v);
            self
        }

        /// Pushes the next argument, memory the kernel writes.
        pub(crate) fn arg_mut<T: KernelArg>(&mut self, v: &'a mut T) -> &mut Self
        where
            LaunchArgs<'a>: PushKernelArg<&'a mut T>,
        {
            self.kinds.push(T::PARAM);
            self.args.arg(v);
            self
        }

        /// Launches the kernel, or fails without launching when the
        /// arguments' kinds are not the kernel's parameters.
        ///
        /// # Safety
        ///
        /// As cudarc's `launch`: the arguments must be what the kernel
        /// expects of them (memory it may read and write at the sizes it
        /// uses, for `cfg`'s grid), which the check of kinds cannot see.
        pub(crate) unsafe fn launch(mut self, cfg: LaunchConfig) -> Result<()> {
            super::check(&self.kernel.name, &self.kernel.params, &self.kinds)
                .map_err(candle_core::Error::Msg)?;
            // SAFETY: the arguments are as many as the kernel's parameters,
            // each of its size and, at 4 bytes, float or integer as it is
            // (checked above); that they are the right values (which the
            // kinds cannot tell apart) is the caller's promise.
            unsafe { self.args.launch(cfg) }.w()?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{check, entry_params, Param};

    /// A kernel declared as nvcc writes PTX, with pointer attributes as
    /// some versions add them.
    const PTX: &str = "
.visible .entry other_kernel(
\t.param .u32 other_kernel_param_0
)
{
}
.visible .entry k(
\t.param .u64 .ptr .global .align 4 k_param_0,
\t.param .u32 k_param_1,
\t.param .s32 k_param_2,
\t.param .f32 k_param_3,
\t.param .align 8 .b8 k_param_4[512],
\t.param .s64 k_param_5
)
.maxntid 256, 1, 1
{
\tret;
}
";

    #[test]
    fn parameters_are_read_in_order() {
        use Param::*;
        assert_eq!(
            entry_params(PTX, "k").unwrap(),
            [Word64, Int32, Int32, Float32, Bytes(512), Word64]
        );
        assert_eq!(entry_params(PTX, "other_kernel").unwrap(), [Int32]);
        // A name that ends another's is not that kernel.
        assert!(entry_params(PTX, "kernel").is_err());
        assert!(entry_params(".entry k(\n.param .f64 k_param_0\n)", "k")
            .unwrap_err()
            .contains("unknown parameter"));
        assert!(entry_params(".entry k(\n.param .u64 k_param_0", "k").is_err());
    }

    /// Every kernel module's name and PTX, as nvcc wrote it for this build.
    #[cfg(feature = "cuda")]
    const PTX_MODULES: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/ptx_modules.rs"));

    /// Every kernel of Realm's PTX.
    #[cfg(feature = "cuda")]
    #[test]
    fn every_kernel_in_the_ptx_is_read() {
        use Param::*;
        for &(module, ptx) in PTX_MODULES {
            let names: Vec<&str> = ptx
                .lines()
                .filter_map(|l| l.split(".entry ").nth(1)?.strip_suffix('('))
                .collect();
            assert!(!names.is_empty(), "{module}: no kernels");
            for name in names {
                let params = entry_params(ptx, name).unwrap();
                assert!(!params.is_empty(), "{name}: no parameters");
            }
        }
        let ptx = |m: &str| PTX_MODULES.iter().find(|(k, _)| *k == m).unwrap().1;
        // `swiglu_f32(const float *, const float *, float *, uint32_t,
        // realm_block_q8_1 *, uint32_t, long long, long long,
        // realm_block_mmq_ds4 *)`.
        assert_eq!(
            entry_params(ptx("gated"), "swiglu_f32").unwrap(),
            [Word64, Word64, Word64, Int32, Word64, Int32, Word64, Word64, Word64]
        );
        // The slot table the kernels take by value is Rust's SlotTable.
        let table = Bytes(std::mem::size_of::<crate::fused::SlotTable>());
        for (m, k) in [
            ("decode_attention", "decode_attention_f16_64"),
            ("rope_store", "rope_store_f32"),
        ] {
            let params = entry_params(ptx(m), k).unwrap();
            assert_eq!(params.iter().filter(|&&p| p == table).count(), 1, "{k}");
        }
    }

    #[test]
    fn a_launch_unlike_its_kernel_is_an_error_naming_the_argument() {
        use Param::*;
        let want = [Word64, Int32, Float32];
        assert!(check("k", &want, &want).is_ok());
        let e = check("k", &want, &[Word64, Float32, Float32]).unwrap_err();
        assert!(
            e.contains("argument 1 is Float32") && e.contains("is Int32"),
            "{e}"
        );
        let e = check("k", &want, &want[..2]).unwrap_err();
        assert!(e.contains("argument 2 is missing"), "{e}");
        let e = check("k", &want[..2], &want).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }
}
