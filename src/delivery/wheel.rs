//! A hierarchical timer wheel with one-second resolution, for deferred
//! deliveries: O(1) insert, amortised O(1) expiry, memory proportional to the
//! items (no sorted structure over millions of entries).
//!
//! Level `L` has 64 slots of `64^L` seconds each. An item sits at the level of
//! the highest 6-bit group in which its deadline differs from "now", so every
//! occupied slot lies ahead of the current position; when a higher-level slot
//! comes due its items are re-inserted one level down (cascade). Polling jumps
//! from occupied slot to occupied slot, never second by second.

const BITS: u32 = 6;
const SLOTS: usize = 1 << BITS;
const LEVELS: usize = 6;
/// Deadlines further out than this are clamped (about 2,177 years).
const MAX_DELTA: u64 = (1 << (BITS * LEVELS as u32)) - 1;

#[derive(Debug)]
struct Level<T> {
    slots: Vec<Vec<(u64, T)>>,
    /// Bit `s` set when slot `s` is not empty.
    occupied: u64,
}

impl<T> Level<T> {
    fn new() -> Self {
        Level { slots: (0..SLOTS).map(|_| Vec::new()).collect(), occupied: 0 }
    }
}

/// Items keyed by a deadline in whole seconds.
#[derive(Debug)]
pub struct Wheel<T> {
    now: u64,
    levels: Vec<Level<T>>,
    /// Items whose deadline had passed when they were inserted.
    due: Vec<T>,
    len: usize,
}

impl<T> Wheel<T> {
    /// An empty wheel whose clock starts at `now` (seconds).
    pub fn new(now: u64) -> Wheel<T> {
        Wheel { now, levels: (0..LEVELS).map(|_| Level::new()).collect(), due: Vec::new(), len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The wheel's current time.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Adds `item`, due at `deadline` (seconds).
    pub fn insert(&mut self, deadline: u64, item: T) {
        self.len += 1;
        self.place(deadline, item);
    }

    fn place(&mut self, deadline: u64, item: T) {
        if deadline <= self.now {
            self.due.push(item);
            return;
        }
        let deadline = deadline.min(self.now + MAX_DELTA);
        let differing = (deadline ^ self.now) | (SLOTS as u64 - 1);
        let level = ((63 - differing.leading_zeros()) / BITS) as usize;
        let level = level.min(LEVELS - 1);
        let slot = ((deadline >> (BITS * level as u32)) & (SLOTS as u64 - 1)) as usize;
        let l = &mut self.levels[level];
        l.slots[slot].push((deadline, item));
        l.occupied |= 1 << slot;
    }

    /// The start of the earliest occupied slot: no item is due before it.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.due.is_empty() {
            return Some(self.now);
        }
        (0..LEVELS).filter_map(|l| self.next_in_level(l).map(|(_, when)| when)).min()
    }

    /// (slot, start time) of the first occupied slot of level `l`.
    fn next_in_level(&self, l: usize) -> Option<(usize, u64)> {
        let level = &self.levels[l];
        let shift = BITS * l as u32;
        let current = ((self.now >> shift) & (SLOTS as u64 - 1)) as u32;
        let ahead = level.occupied & (u64::MAX << current);
        if ahead == 0 {
            return None;
        }
        let slot = ahead.trailing_zeros();
        let epoch = if shift + BITS >= 64 { 0 } else { self.now & !((1u64 << (shift + BITS)) - 1) };
        Some((slot as usize, epoch + (u64::from(slot) << shift)))
    }

    /// Removes and returns every item, due or not; the clock stays.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = std::mem::take(&mut self.due);
        for level in &mut self.levels {
            for slot in &mut level.slots {
                out.extend(slot.drain(..).map(|(_, item)| item));
            }
            level.occupied = 0;
        }
        self.len = 0;
        out
    }

    /// Moves the clock to `now` and returns every item due by then.
    pub fn poll(&mut self, now: u64) -> Vec<T> {
        let mut out = std::mem::take(&mut self.due);
        loop {
            let next = (0..LEVELS).filter_map(|l| self.next_in_level(l).map(|(s, when)| (when, l, s))).min();
            let Some((when, level, slot)) = next.filter(|(when, _, _)| *when <= now) else { break };
            self.now = self.now.max(when);
            let items = std::mem::take(&mut self.levels[level].slots[slot]);
            self.levels[level].occupied &= !(1 << slot);
            for (deadline, item) in items {
                if deadline <= self.now {
                    out.push(item);
                } else {
                    self.place(deadline, item);
                }
            }
            out.append(&mut self.due);
        }
        self.now = self.now.max(now);
        self.len -= out.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_at_their_deadline() {
        let mut w = Wheel::new(1000);
        w.insert(1005, "a");
        w.insert(1000, "now");
        w.insert(1000 + 4000, "b");
        w.insert(1000 + 90_000, "c");
        assert_eq!(w.next_deadline(), Some(1000));
        assert_eq!(w.poll(1000), vec!["now"]);
        assert_eq!(w.poll(1004), Vec::<&str>::new());
        assert_eq!(w.poll(1005), vec!["a"]);
        assert_eq!(w.poll(4999), Vec::<&str>::new());
        assert_eq!(w.poll(5000), vec!["b"]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.poll(u64::MAX / 2), vec!["c"]);
        assert!(w.is_empty());
        let mut w = Wheel::new(10);
        w.insert(5, 1);
        w.insert(100, 2);
        w.insert(1_000_000, 3);
        let mut all = w.drain();
        all.sort_unstable();
        assert_eq!(all, vec![1, 2, 3]);
        assert!(w.is_empty());
        w.insert(11, 4);
        assert_eq!(w.poll(11), vec![4], "the clock did not move");
    }

    #[test]
    fn matches_a_sorted_reference() {
        let mut rng = fastrand::Rng::with_seed(42);
        for round in 0..50 {
            let start = rng.u64(0..1 << 40);
            let mut w = Wheel::new(start);
            let mut reference: Vec<(u64, u32)> = Vec::new();
            let mut now = start;
            for i in 0..2000u32 {
                let delta = match rng.u8(0..4) {
                    0 => rng.u64(0..64),
                    1 => rng.u64(0..5000),
                    2 => rng.u64(0..400_000),
                    _ => rng.u64(0..50_000_000),
                };
                w.insert(now + delta, i);
                reference.push((now + delta, i));
                if rng.u8(0..8) == 0 {
                    now += rng.u64(0..100_000);
                    let mut got = w.poll(now);
                    let mut want: Vec<u32> =
                        reference.iter().filter(|(d, _)| *d <= now).map(|(_, i)| *i).collect();
                    reference.retain(|(d, _)| *d > now);
                    got.sort_unstable();
                    want.sort_unstable();
                    assert_eq!(got, want, "round {round} at {now}");
                    if let Some(next) = w.next_deadline() {
                        let earliest = reference.iter().map(|(d, _)| *d).min().unwrap();
                        assert!(next <= earliest, "next_deadline never late");
                    }
                }
            }
            let rest = w.poll(u64::MAX / 2);
            assert_eq!(rest.len(), reference.len());
            assert!(w.is_empty());
        }
    }
}
