//! Reference-counted block allocator (bookkeeping only; the tensors live in `KvCache`).

/// Free list and per-block reference counts. A block is free iff its refcount is 0.
#[derive(Debug, Clone)]
pub(crate) struct BlockPool {
    refcount: Vec<u32>,
    free: Vec<u32>,
}

impl BlockPool {
    pub(crate) fn new(num_blocks: usize) -> Self {
        Self {
            refcount: vec![0; num_blocks],
            // Popped from the back: block 0 is handed out first.
            free: (0..num_blocks as u32).rev().collect(),
        }
    }

    pub(crate) fn num_blocks(&self) -> usize {
        self.refcount.len()
    }

    pub(crate) fn free_count(&self) -> usize {
        self.free.len()
    }

    pub(crate) fn refcount(&self, block: u32) -> u32 {
        self.refcount[block as usize]
    }

    /// Takes a free block with refcount 1.
    pub(crate) fn alloc(&mut self) -> Option<u32> {
        let b = self.free.pop()?;
        debug_assert_eq!(self.refcount[b as usize], 0);
        self.refcount[b as usize] = 1;
        Some(b)
    }

    pub(crate) fn incref(&mut self, block: u32) {
        debug_assert!(self.refcount[block as usize] > 0, "incref of a free block");
        self.refcount[block as usize] += 1;
    }

    /// Drops one reference; returns true when the block went back to the free list.
    pub(crate) fn decref(&mut self, block: u32) -> bool {
        let rc = &mut self.refcount[block as usize];
        debug_assert!(*rc > 0, "decref of a free block");
        *rc -= 1;
        if *rc == 0 {
            self.free.push(block);
            true
        } else {
            false
        }
    }
}
