//! Fuzzes the GGUF reader: any bytes must give a file or an error, never a
//! panic, and a file that parses must hand out every tensor it lists.
#![no_main]

use libfuzzer_sys::fuzz_target;
use realm_core::gguf::{Gguf, GgufReader};

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = Gguf::from_bytes(data) {
        for view in file.tensors() {
            let view = view.expect("a validated file hands out every tensor");
            let info = file.header().tensor_info(view.name()).expect("listed");
            assert_eq!(view.n_elements(), info.n_elements());
            assert_eq!(view.data().len() as u64, info.n_bytes);
            if view.n_elements() == 0 {
                // No bytes; a shape like [0] is one row of length zero.
                assert!(view.data().is_empty());
                assert!(view.row(0).is_none_or(|r| r.is_empty()));
            }
        }
        for (_, value) in file.metadata().iter() {
            let _ = value.display_summary(4);
        }
    }
    if let Ok(mut stream) = GgufReader::new(std::io::Cursor::new(data)) {
        let names: Vec<String> = stream.header().tensors().iter().map(|t| t.name.clone()).collect();
        for name in names {
            stream.read_tensor_data(&name).expect("a validated stream reads every tensor");
        }
    }
});
