//! The bus's record encoding: any bytes read back from a store (a torn or corrupt record) are
//! an error, never a panic, and a decoded event encodes again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = ofe_core::event::decode(data) {
        let again = ofe_core::event::encode(&event).expect("a decoded event encodes");
        let back = ofe_core::event::decode(&again).expect("and decodes again");
        assert_eq!(back, event);
    }
});
