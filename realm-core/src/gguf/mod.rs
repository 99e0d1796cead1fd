//! GGUF files: a strict reader (memory-mapped or from any byte source) and a writer.
