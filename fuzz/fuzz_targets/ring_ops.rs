//! Differential fuzzing of the ring: any sequence of operations on `Ring` (and on a
//! `TokenRing` in plain memory) must behave exactly like a bounded `VecDeque`.
#![no_main]

use std::collections::VecDeque;

use ackring::{Ring, TokenRing};
use libfuzzer_sys::fuzz_target;

#[repr(C, align(128))]
struct Block([u8; 128]);

fuzz_target!(|data: &[u8]| {
    let Some((&capacity_byte, ops)) = data.split_first() else {
        return;
    };
    // Small capacities cross every boundary quickly; larger ones wrap less often.
    let capacity = match capacity_byte % 12 {
        9 => 64,
        10 => 128,
        11 => 100,
        small => usize::from(small) + 1,
    };
    let ring = Ring::new(capacity).unwrap();
    let bytes = TokenRing::bytes_needed(capacity).unwrap();
    let mut blocks: Vec<Block> = (0..bytes.div_ceil(128)).map(|_| Block([0; 128])).collect();
    // SAFETY: `Block` is plain bytes; the slice stays within the Vec, which outlives `tokens`.
    let memory = unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), bytes) };
    let tokens = TokenRing::init(memory, capacity).unwrap();
    let mut model = VecDeque::new();
    let mut next = 0u64;

    for &op in ops {
        let amount = usize::from(op >> 3);
        match op & 7 {
            0 | 1 => {
                let fits = model.len() < capacity;
                assert_eq!(ring.try_push(next).is_ok(), fits);
                assert_eq!(tokens.try_push(next).is_ok(), fits);
                if fits {
                    model.push_back(next);
                }
                next += 1;
            }
            2 | 3 => {
                let expected = model.pop_front();
                assert_eq!(ring.try_pop(), expected);
                assert_eq!(tokens.try_pop().ok(), expected);
            }
            4 => {
                let mut batch: Vec<u64> = (next..next + amount as u64).collect();
                let slice = batch.clone();
                let pushed = ring.push_batch(&mut batch);
                assert_eq!(pushed, amount.min(capacity - model.len()));
                assert_eq!(batch, slice[pushed..]);
                assert_eq!(tokens.push_slice(&slice), Ok(pushed));
                model.extend(&slice[..pushed]);
                next += amount as u64;
            }
            5 => {
                let mut out = Vec::new();
                let popped = ring.pop_batch(&mut out, amount);
                let mut token_out = vec![0; amount];
                assert_eq!(tokens.pop_into(&mut token_out), Ok(popped));
                let expected: Vec<u64> = model.drain(..amount.min(model.len())).collect();
                assert_eq!(out, expected);
                assert_eq!(token_out[..popped], expected);
            }
            _ => {
                assert_eq!(ring.len(), model.len());
                assert_eq!(tokens.len(), model.len());
                assert_eq!(ring.is_empty(), model.is_empty());
                assert_eq!(ring.is_full(), model.len() == capacity);
            }
        }
    }
});
