//! The smoke's mutator: libFuzzer's simplest moves (bit flips, interesting bytes, inserts,
//! deletions, duplicated ranges, dictionary tokens, splices of two corpus inputs) driven by
//! a seeded generator, so a smoke run is the same on every machine.

/// xorshift64*: small, fast, and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

const INTERESTING: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, b'\n', b'"', b'0', b'9', b' '];

/// A mutant of `base`: 1 to 4 moves, at most `max_len` bytes.
pub fn mutate(rng: &mut Rng, base: &[u8], other: &[u8], dict: &[&str], max_len: usize) -> Vec<u8> {
    let mut out = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = out.len();
        match rng.below(8) {
            0 if len > 0 => {
                let at = rng.below(len);
                out[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len);
                out[at] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let at = rng.below(len + 1);
                out.insert(at, rng.next_u64() as u8);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = 1 + rng.below((len - at).min(16));
                out.drain(at..at + n);
            }
            4 if len > 0 => {
                let from = rng.below(len);
                let n = 1 + rng.below((len - from).min(64));
                let copy = out[from..from + n].to_vec();
                let at = rng.below(len + 1);
                out.splice(at..at, copy);
            }
            5 | 6 if !dict.is_empty() => {
                let token = dict[rng.below(dict.len())].as_bytes();
                let at = rng.below(len + 1);
                if rng.below(2) == 0 || at + token.len() > len {
                    out.splice(at..at, token.iter().copied());
                } else {
                    out[at..at + token.len()].copy_from_slice(token);
                }
            }
            _ if !other.is_empty() => {
                // Splice: a head of this input, a tail of another.
                let head = rng.below(len + 1);
                let tail = rng.below(other.len());
                out.truncate(head);
                out.extend_from_slice(&other[tail..]);
            }
            _ => {}
        }
    }
    out.truncate(max_len);
    out
}
