//! Decoding a fuzzer's bytes into a target's arguments. Never fails: a missing byte reads
//! as 0, so every input is some case and the fuzzer wastes no executions on refusals.

/// A cursor over the input.
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { rest: data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.rest.split_first() {
            Some((&b, rest)) => {
                self.rest = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    pub fn u64(&mut self) -> u64 {
        let mut bytes = [0; 8];
        for b in &mut bytes {
            *b = self.byte();
        }
        u64::from_le_bytes(bytes)
    }

    /// Up to `n` bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.rest.split_at(n.min(self.rest.len()));
        self.rest = rest;
        head
    }

    /// The bytes up to the next `sep` (consumed, not returned), or all that is left; `None`
    /// once nothing is left.
    pub fn field(&mut self, sep: u8) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        match self.rest.iter().position(|&b| b == sep) {
            Some(at) => {
                let (head, rest) = (&self.rest[..at], &self.rest[at + 1..]);
                self.rest = rest;
                Some(head)
            }
            None => Some(self.rest()),
        }
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }
}

/// A position in `0..=len` from 16 fuzzer bits, spread over the whole range.
pub fn scaled(bits: u16, len: usize) -> usize {
    ((u64::from(bits) * (len as u64 + 1)) >> 16) as usize
}
