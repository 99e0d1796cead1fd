//! Property tests of the GGUF reader and writer: whatever is written reads
//! back exactly, and no input, however damaged, makes the reader panic.
//! `PROPTEST_CASES` sets the number of cases (`cargo xtask proptest`: 20,000).

use proptest::collection::vec;
use proptest::prelude::*;
use realm_core::gguf::{
    merge_writer, split_writers, Gguf, GgufReader, GgufWriter, Metadata, MetadataArray,
    MetadataValue, SplitLimit, SplitOptions,
};
use realm_core::GgmlType;

fn finite_f32() -> impl Strategy<Value = f32> {
    any::<f32>().prop_filter("NaN never equals itself", |x| !x.is_nan())
}

fn finite_f64() -> impl Strategy<Value = f64> {
    any::<f64>().prop_filter("NaN never equals itself", |x| !x.is_nan())
}

fn array(depth: u32) -> BoxedStrategy<MetadataArray> {
    let leaf = prop_oneof![
        vec(any::<u8>(), 0..8).prop_map(MetadataArray::U8),
        vec(any::<i8>(), 0..8).prop_map(MetadataArray::I8),
        vec(any::<u16>(), 0..8).prop_map(MetadataArray::U16),
        vec(any::<i16>(), 0..8).prop_map(MetadataArray::I16),
        vec(any::<u32>(), 0..8).prop_map(MetadataArray::U32),
        vec(any::<i32>(), 0..8).prop_map(MetadataArray::I32),
        vec(any::<u64>(), 0..8).prop_map(MetadataArray::U64),
        vec(any::<i64>(), 0..8).prop_map(MetadataArray::I64),
        vec(finite_f32(), 0..8).prop_map(MetadataArray::F32),
        vec(finite_f64(), 0..8).prop_map(MetadataArray::F64),
        vec(any::<bool>(), 0..8).prop_map(MetadataArray::Bool),
        vec(".{0,12}", 0..8).prop_map(MetadataArray::String),
    ];
    if depth == 0 {
        leaf.boxed()
    } else {
        prop_oneof![4 => leaf, 1 => vec(array(depth - 1), 0..3).prop_map(MetadataArray::Array)]
            .boxed()
    }
}

fn value() -> impl Strategy<Value = MetadataValue> {
    prop_oneof![
        any::<u8>().prop_map(MetadataValue::U8),
        any::<i8>().prop_map(MetadataValue::I8),
        any::<u16>().prop_map(MetadataValue::U16),
        any::<i16>().prop_map(MetadataValue::I16),
        any::<u32>().prop_map(MetadataValue::U32),
        any::<i32>().prop_map(MetadataValue::I32),
        any::<u64>().prop_map(MetadataValue::U64),
        any::<i64>().prop_map(MetadataValue::I64),
        finite_f32().prop_map(MetadataValue::F32),
        finite_f64().prop_map(MetadataValue::F64),
        any::<bool>().prop_map(MetadataValue::Bool),
        ".{0,24}".prop_map(MetadataValue::String),
        array(3).prop_map(MetadataValue::Array),
    ]
}

#[derive(Debug, Clone)]
struct Tensor {
    dtype: GgmlType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

fn tensor() -> impl Strategy<Value = Tensor> {
    const TYPES: [GgmlType; 7] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::I8,
    ];
    (
        prop::sample::select(&TYPES[..]),
        1u64..3,
        vec(1u64..4, 0..3),
    )
        .prop_flat_map(|(dtype, blocks, rest)| {
            let mut shape = vec![blocks * dtype.block_size() as u64];
            shape.extend(rest);
            let n = dtype.row_bytes(shape.iter().product()).unwrap() as usize;
            vec(any::<u8>(), n).prop_map(move |data| Tensor {
                dtype,
                shape: shape.clone(),
                data,
            })
        })
}

fn file() -> impl Strategy<Value = (Vec<(String, MetadataValue)>, Vec<Tensor>, Option<u32>)> {
    (
        prop::collection::btree_map("[a-z._]{1,20}", value(), 0..8),
        vec(tensor(), 0..5),
        prop::option::of(prop::sample::select(&[1u32, 8, 32, 64, 4096][..])),
    )
        .prop_map(|(kv, tensors, align)| {
            (
                kv.into_iter()
                    .filter(|(k, _)| k != "general.alignment")
                    .collect(),
                tensors,
                align,
            )
        })
}

fn build(kv: &[(String, MetadataValue)], tensors: &[Tensor], align: Option<u32>) -> Vec<u8> {
    let mut w = GgufWriter::new();
    if let Some(a) = align {
        w.set("general.alignment", MetadataValue::U32(a));
    }
    for (k, v) in kv {
        w.set(k.clone(), v.clone());
    }
    for (i, t) in tensors.iter().enumerate() {
        w.add_tensor(&format!("t{i}"), t.dtype, &t.shape, &t.data[..])
            .unwrap();
    }
    w.to_bytes().unwrap()
}

proptest! {
    #[test]
    fn write_then_read_round_trips((kv, tensors, align) in file()) {
        let bytes = build(&kv, &tensors, align);
        let file = Gguf::from_bytes(&bytes[..]).unwrap();
        let mut want = Metadata::new();
        if let Some(a) = align {
            want.insert("general.alignment", MetadataValue::U32(a));
        }
        for (k, v) in &kv {
            want.insert(k.clone(), v.clone());
        }
        prop_assert_eq!(file.metadata(), &want);
        prop_assert_eq!(file.header().alignment(), u64::from(align.unwrap_or(32)));
        prop_assert_eq!(file.tensor_infos().len(), tensors.len());
        let mut stream = GgufReader::new(std::io::Cursor::new(&bytes)).unwrap();
        for (i, t) in tensors.iter().enumerate() {
            let name = format!("t{i}");
            let v = file.tensor(&name).unwrap();
            prop_assert_eq!(v.dtype(), t.dtype);
            prop_assert_eq!(v.shape(), &t.shape[..]);
            prop_assert_eq!(v.data(), &t.data[..]);
            prop_assert_eq!(v.data().as_ptr() as u64 % file.header().alignment(), bytes.as_ptr() as u64 % file.header().alignment());
            prop_assert_eq!(stream.read_tensor_data(&name).unwrap(), t.data.clone());
        }
    }

    #[test]
    fn damaged_files_never_panic(
        (kv, tensors, align) in file(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = build(&kv, &tensors, align);
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let _ = Gguf::from_bytes(&bytes[..]);
        let _ = Gguf::from_bytes(&bytes[..cut.index(bytes.len())]);
        let _ = GgufReader::new(std::io::Cursor::new(&bytes));
    }

    #[test]
    fn split_files_read_back_as_the_whole(
        (kv, tensors, align) in file(),
        limit in prop_oneof![(1usize..4).prop_map(SplitLimit::Tensors), (1u64..600).prop_map(SplitLimit::Bytes)],
        no_tensor_first_split in any::<bool>(),
        edit in (any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()),
    ) {
        let bytes = build(&kv, &tensors, align);
        let whole = Gguf::from_bytes(&bytes[..]).unwrap();
        let opts = SplitOptions { limit, no_tensor_first_split };
        // (Refused only for a first tensor past the byte limit.)
        let Ok(writers) = split_writers(&whole, &opts) else {
            let first = tensors.first().map_or(0, |t| t.data.len().next_multiple_of(32) as u64);
            prop_assert!(matches!(limit, SplitLimit::Bytes(n) if n < first));
            return Ok(());
        };
        let mut parts: Vec<Vec<u8>> = writers.iter().map(|w| w.to_bytes().unwrap()).collect();
        let split = Gguf::from_splits(parts.clone()).unwrap();
        prop_assert_eq!(split.split_headers().count(), parts.len());
        for (k, v) in whole.metadata().iter() {
            prop_assert_eq!(split.metadata().get(k), Some(v));
        }
        let merged = merge_writer(&split).unwrap().to_bytes().unwrap();
        let merged = Gguf::from_bytes(&merged[..]).unwrap();
        for (i, t) in tensors.iter().enumerate() {
            let name = format!("t{i}");
            prop_assert_eq!(split.tensor(&name).unwrap().data(), &t.data[..]);
            prop_assert_eq!(merged.tensor(&name).unwrap().data(), &t.data[..]);
        }
        // A damaged file of the set: an error or a model, never a panic.
        let (file, at, b) = edit;
        let part = &mut parts[file.index(writers.len())];
        let i = at.index(part.len());
        part[i] = b;
        let _ = Gguf::from_splits(parts);
    }

    #[test]
    fn arbitrary_bytes_never_panic(tail in vec(any::<u8>(), 0..512), version in 0u32..5) {
        let mut bytes = b"GGUF".to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&tail);
        let _ = Gguf::from_bytes(&bytes[..]);
    }
}

/// The fuzz seeds, written by the `gguf` Python package, read as it wrote them.
#[test]
fn files_written_by_the_reference_writer_read_back() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds");
    let small = std::fs::read(format!("{dir}/small_model.gguf")).unwrap();
    let file = Gguf::from_bytes(&small[..]).unwrap();
    assert_eq!(
        file.metadata().get_str("general.architecture").unwrap(),
        "llama"
    );
    assert_eq!(
        file.metadata()
            .get_str_array("tokenizer.ggml.tokens")
            .unwrap(),
        ["a", "b", "ab", "<s>"]
    );
    let nested = file.metadata().get_array("nested").unwrap();
    assert_eq!(
        nested,
        &MetadataArray::Array(vec![
            MetadataArray::I32(vec![1, 2]),
            MetadataArray::I32(vec![3])
        ])
    );
    let embd = file.tensor("token_embd.weight").unwrap();
    assert_eq!(
        (embd.dtype(), embd.shape()),
        (GgmlType::F32, &[32u64, 4][..])
    );
    let want: Vec<u8> = (0..128).flat_map(|i| (i as f32).to_le_bytes()).collect();
    assert_eq!(embd.data(), &want[..]);
    assert_eq!(
        file.tensor("blk.0.attn_q.weight").unwrap().shape(),
        &[32u64, 2]
    );
    let aligned = std::fs::read(format!("{dir}/small_model_align64.gguf")).unwrap();
    assert_eq!(
        Gguf::from_bytes(&aligned[..]).unwrap().header().alignment(),
        64
    );
    let md = std::fs::read(format!("{dir}/metadata_only.gguf")).unwrap();
    let md = Gguf::from_bytes(&md[..]).unwrap();
    assert_eq!(md.metadata().get_f32("d").unwrap(), 2.25);
    assert!(md.metadata().get_bool("b").unwrap());
}

/// Found by the fuzzer: a zero-sized tensor in a file that ends before its
/// (empty) data section was accepted, then could not be viewed.
#[test]
fn data_section_past_the_end_is_an_error() {
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes()); // one tensor
    bytes.extend_from_slice(&0u64.to_le_bytes()); // no metadata
    bytes.extend_from_slice(&0u64.to_le_bytes()); // empty name
    bytes.extend_from_slice(&1u32.to_le_bytes()); // one dimension
    bytes.extend_from_slice(&0u64.to_le_bytes()); // of length 0
    bytes.extend_from_slice(&0u32.to_le_bytes()); // f32
    bytes.extend_from_slice(&0u64.to_le_bytes()); // offset 0
    bytes.extend_from_slice(b"+d"); // 58 bytes; data would start at 64
    let err = Gguf::from_bytes(&bytes[..]).unwrap_err();
    assert!(
        err.to_string().contains("padding before the tensor data"),
        "{err}"
    );
    bytes.resize(64, 0);
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    assert_eq!(file.tensor("").unwrap().data().len(), 0);
}

/// Found by the fuzzer: an empty tensor whose other dimensions multiply past
/// u64 has zero elements everywhere (writer, header, view), never overflows.
#[test]
fn empty_tensor_with_huge_dimensions() {
    let mut w = GgufWriter::new();
    let shape = [0u64, 1 << 40, 1 << 40];
    w.add_tensor("e", GgmlType::Q4_0, &shape, &[][..]).unwrap();
    let bytes = w.to_bytes().unwrap();
    let file = Gguf::from_bytes(&bytes[..]).unwrap();
    assert_eq!(file.tensor_infos()[0].n_elements(), 0);
    let v = file.tensor("e").unwrap();
    assert_eq!((v.n_elements(), v.n_rows(), v.data().len()), (0, 0, 0));
    assert!(v.row(0).is_none());
}
