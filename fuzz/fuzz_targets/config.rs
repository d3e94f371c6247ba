//! The configuration parser and validator (TOML, then every section's checks).
//!
//! Input: byte 0 picks the shape. Even: the rest is the file, as UTF-8 (lossy). Odd: the
//! embedded default configuration with the rest of the input as (offset, byte) replacements.
//! Checks: no panic; an accepted configuration is accepted again (parsing is deterministic);
//! a refusal says what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stockd::config::Config;

const DEFAULT: &str = include_str!("../../src/config/default.toml");

fuzz_target!(|data: &[u8]| {
    let Some((&shape, rest)) = data.split_first() else { return };
    let text = if shape % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let mut bytes = DEFAULT.as_bytes().to_vec();
        for pair in rest.chunks_exact(3) {
            let at = u16::from_le_bytes([pair[0], pair[1]]) as usize % bytes.len();
            bytes[at] = pair[2];
        }
        String::from_utf8_lossy(&bytes).into_owned()
    };
    match Config::from_toml(&text, "fuzz.toml") {
        Ok(_) => assert!(Config::from_toml(&text, "fuzz.toml").is_ok()),
        Err(e) => assert!(!e.to_string().is_empty(), "a refusal without a message"),
    }
});
