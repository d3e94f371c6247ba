//! The snapshot loader past its checksums: the rkyv archive validation and the consistency
//! checks that rebuild the engine, for every snapshot version still read.
//!
//! Input: byte 0 picks the version (1 to `SNAPSHOT_VERSION`); the rest is the body, framed by
//! a header with valid checksums (so the fuzzer reaches the archive, not only the checksum
//! test). Checks: no panic; a snapshot that loads rebuilds an engine whose image makes the
//! same engine again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stockd::engine::{Engine, EngineConfig};
use stockd::snapshot::{self, SNAPSHOT_HEADER_BYTES, SNAPSHOT_MAGIC, SNAPSHOT_VERSION};
use stockd::wal::MemStorage;

fuzz_target!(|data: &[u8]| {
    let Some((&version, body)) = data.split_first() else { return };
    let version = u32::from(version) % SNAPSHOT_VERSION + 1;
    let mut file = vec![0u8; SNAPSHOT_HEADER_BYTES];
    file[0..8].copy_from_slice(&SNAPSHOT_MAGIC);
    file[8..12].copy_from_slice(&version.to_le_bytes());
    file[16..24].copy_from_slice(&7u64.to_le_bytes());
    file[24..32].copy_from_slice(&1_000u64.to_le_bytes());
    file[32..40].copy_from_slice(&(body.len() as u64).to_le_bytes());
    file[40..44].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let crc = crc32c::crc32c(&file[..60]);
    file[60..64].copy_from_slice(&crc.to_le_bytes());
    file.extend_from_slice(body);
    let storage = MemStorage::new();
    let name = snapshot::snapshot_name(7);
    storage.put(&name, file);
    let config = EngineConfig::default();
    let Ok(loaded) = snapshot::load(&storage, &name, config.clone()) else { return };
    let image = loaded.engine.image();
    let rebuilt = Engine::from_image(config, &image).expect("an image the engine made loads");
    assert!(rebuilt.image() == image, "image round trip differs");
});
