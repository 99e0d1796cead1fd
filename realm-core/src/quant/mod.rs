//! The ggml quantization formats: block layouts, dequantization to f32 and
//! quantization from f32.

pub mod blocks;
