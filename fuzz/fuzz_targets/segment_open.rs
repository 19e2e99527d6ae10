//! Opening a hostile segment: a valid segment image, patched byte by byte as the input
//! says (header fields, offsets, ring words, slot words, dedup stripes... anything), then
//! opened and, if it opens, used. Every outcome must be an error or working operations:
//! never a panic, a hang or undefined behaviour. (`.ci/run` gives each input a timeout:
//! a hang fails the run.)
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use ackring::{MessageId, PublishOptions, Queue};
use libfuzzer_sys::fuzz_target;

/// A valid segment's bytes, and a scratch path to write patched copies to.
///
/// Nothing is left in the temporary directory: the fuzzer ends with `exit`, which runs no
/// destructors, so each file is removed as soon as it is read or mapped (a mapping
/// outlives its name).
fn image() -> &'static (PathBuf, Vec<u8>) {
    static IMAGE: OnceLock<(PathBuf, Vec<u8>)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let scratch = |name: &str| {
            std::env::temp_dir().join(format!("ackring-fuzz-{}-{name}", std::process::id()))
        };
        let original = scratch("original");
        let _ = std::fs::remove_file(&original);
        let queue = Queue::builder(8, 16)
            .dedup_capacity(64)
            .create_file(&original)
            .unwrap();
        // Some state worth corrupting: ready, leased, delayed and dead messages.
        for n in 0u8..5 {
            queue.publish(&[n; 16]).unwrap();
        }
        std::mem::forget(queue.try_receive().unwrap());
        queue.try_receive().unwrap().nack("later").unwrap();
        queue.try_receive().unwrap().reject("bad").unwrap();
        let bytes = std::fs::read(&original).unwrap();
        std::fs::remove_file(&original).unwrap();
        drop(queue);
        (scratch("patched"), bytes)
    })
}

fuzz_target!(|data: &[u8]| {
    let (path, image) = image();
    let mut bytes = image.clone();
    // Each 5-byte chunk: a 32-bit offset and a byte to put there; an offset with the top
    // bit set truncates the image there instead.
    for chunk in data.chunks_exact(5) {
        let offset = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        if offset & 0x8000_0000 != 0 {
            bytes.truncate((offset & 0x7fff_ffff) as usize % (image.len() + 1));
        } else if !bytes.is_empty() {
            let at = offset as usize % bytes.len();
            bytes[at] = chunk[4];
        }
    }
    std::fs::write(path, &bytes).unwrap();
    let opened = Queue::open_file(path);
    std::fs::remove_file(path).unwrap();
    let queue = match opened {
        Ok(queue) => queue,
        Err(error) => {
            assert!(!error.to_string().is_empty());
            return;
        }
    };
    for round in 0..8 {
        // Ids too, so the dedup stripes (and their locks) are used; some of them twice.
        let options = PublishOptions {
            id: (round % 4 != 3).then_some(MessageId(u64::from(round % 3))),
            ..PublishOptions::default()
        };
        let _ = queue.try_publish_with(&[round; 8], options);
        if let Some(delivery) = queue.try_receive() {
            let _ = delivery.payload().len();
            let _ = if round % 2 == 0 {
                delivery.ack()
            } else {
                delivery.nack("fuzz")
            };
        }
        queue.tick();
    }
    let _ = queue.stats();
    let _ = queue.peek(4);
    let _ = queue.dead_letters();
    let _ = queue.pop_dead_letter();
    let _ = queue.redrive();
});
