//! A table of per-request state keyed by Envoy's context id, for the builds that keep their
//! own (see `host::direct`). Envoy numbers contexts one after another, so the id's low bits
//! spread the requests in flight over the slots with hardly a collision: open addressing
//! with linear probing, an empty slot ends a search, and a removal shifts the run after it
//! back (no tombstones). It doubles when half full. Every operation is O(1) on average,
//! whatever the number of requests in flight. (A map from the standard library would do,
//! but its code costs the plain module more than this, and the module has a size budget.)

/// Slots when the first request comes (a power of two).
const FIRST_CAPACITY: usize = 256;

pub struct SlotTable<T> {
    slots: Vec<Option<(u32, T)>>,
    len: usize,
}

impl<T> Default for SlotTable<T> {
    fn default() -> Self {
        SlotTable::new()
    }
}

impl<T> SlotTable<T> {
    pub const fn new() -> Self {
        SlotTable {
            slots: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn home(&self, id: u32) -> usize {
        id as usize & (self.slots.len() - 1)
    }

    fn next(&self, i: usize) -> usize {
        (i + 1) & (self.slots.len() - 1)
    }

    fn find(&self, id: u32) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(id);
        loop {
            match self.slots.get(i)? {
                None => return None,
                Some((k, _)) if *k == id => return Some(i),
                Some(_) => i = self.next(i),
            }
        }
    }

    /// Puts `value` under `id` (replacing any value it had), and lends it back.
    pub fn insert(&mut self, id: u32, value: T) -> &mut T {
        if let Some(i) = self.find(id) {
            self.slots[i] = Some((id, value));
            return self.value_at(i);
        }
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mut i = self.home(id);
        while self.slots[i].is_some() {
            i = self.next(i);
        }
        self.slots[i] = Some((id, value));
        self.len += 1;
        self.value_at(i)
    }

    fn value_at(&mut self, i: usize) -> &mut T {
        match &mut self.slots[i] {
            Some((_, value)) => value,
            None => unreachable!("slot {i} was just filled"),
        }
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut T> {
        let i = self.find(id)?;
        self.slots[i].as_mut().map(|(_, value)| value)
    }

    pub fn remove(&mut self, id: u32) -> Option<T> {
        let mut hole = self.find(id)?;
        let (_, value) = self.slots[hole].take()?;
        self.len -= 1;
        // Shift back each entry of the run after the hole that may not stay where it is:
        // one whose home is not cyclically within (hole, j].
        let mut j = hole;
        loop {
            j = self.next(j);
            let Some((k, _)) = &self.slots[j] else {
                break;
            };
            let home = self.home(*k);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
        }
        Some(value)
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(FIRST_CAPACITY);
        let old = std::mem::take(&mut self.slots);
        self.slots.resize_with(capacity, || None);
        self.len = 0;
        for (id, value) in old.into_iter().flatten() {
            self.insert(id, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn keeps_what_a_map_keeps() {
        // Ids as Envoy hands them out (one after another, some far apart), inserted and
        // removed in a shuffled order, against a HashMap.
        let mut table = SlotTable::default();
        let mut map = HashMap::new();
        let mut state = 12345u64;
        let mut next_id = 2u32;
        for step in 0..200_000u32 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (state >> 33) as u32;
            if r % 3 != 0 || map.is_empty() {
                next_id += 1 + r % 4;
                // Every 1000th id lands on a crowded slot of the table.
                let id = if step % 1000 == 0 {
                    next_id.wrapping_mul(256)
                } else {
                    next_id
                };
                assert_eq!(*table.insert(id, step), step);
                map.insert(id, step);
            } else {
                let keys: Vec<u32> = map.keys().copied().take(8).collect();
                let id = keys[(r as usize / 3) % keys.len()];
                assert_eq!(table.remove(id), map.remove(&id), "{id}");
            }
            assert_eq!(table.len(), map.len());
            if step % 997 == 0 {
                for (id, value) in &map {
                    assert_eq!(table.get_mut(*id).copied(), Some(*value));
                }
                assert_eq!(table.get_mut(1), None);
            }
        }
        assert_eq!(table.remove(1), None);
        *table.insert(7, 1) += 1;
        assert_eq!(table.insert(7, 5), &5, "insert replaces");
        assert_eq!(table.remove(7), Some(5));
    }
}
