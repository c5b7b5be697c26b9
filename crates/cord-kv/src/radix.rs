//! Radix tree over token ids (token-granular, like SGLang's RadixAttention) mapping cached
//! prefixes to KV blocks.
//!
//! Each node covers the token span `[start, start + tokens.len())` of its root path and holds
//! one reference on the block of the *inserting* sequence for every block index that span
//! overlaps. Two neighbouring nodes may both hold a block for the boundary block index (the
//! same block id after a split, or different ids when inserted by different sequences). When
//! matching, block `i` of the result is taken from the deepest matched node covering block `i`:
//! its inserting sequence had the same tokens on the whole path up to that node, so its block
//! holds correct K/V for every earlier position of block `i` as well.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use crate::pool::BlockPool;

const ROOT: usize = 0;
const NO_PARENT: usize = usize::MAX;

#[derive(Debug, Clone)]
struct Node {
    parent: usize,
    /// First token of each child edge -> child id.
    children: HashMap<u32, usize>,
    /// Edge tokens (empty only for the root).
    tokens: Vec<u32>,
    /// Depth (absolute position) of the first edge token.
    start: usize,
    /// Block ids for block indices `start / bs ..= (start + tokens.len() - 1) / bs`.
    blocks: Vec<u32>,
    last_access: u64,
}

impl Node {
    fn first_block(&self, bs: usize) -> usize {
        self.start / bs
    }
}

/// Eviction plan: leaves to remove in order, and how many blocks that frees.
#[derive(Debug, Default)]
pub(crate) struct EvictPlan {
    /// `(node, frees at least one block)`, children before parents.
    nodes: Vec<(usize, bool)>,
    pub(crate) freed: usize,
}

#[derive(Debug, Clone)]
pub(crate) struct RadixTree {
    nodes: Vec<Option<Node>>,
    free_slots: Vec<usize>,
    clock: u64,
    block_size: usize,
}

impl RadixTree {
    pub(crate) fn new(block_size: usize) -> Self {
        let root = Node {
            parent: NO_PARENT,
            children: HashMap::new(),
            tokens: Vec::new(),
            start: 0,
            blocks: Vec::new(),
            last_access: 0,
        };
        Self {
            nodes: vec![Some(root)],
            free_slots: Vec::new(),
            clock: 0,
            block_size,
        }
    }

    fn node(&self, id: usize) -> &Node {
        self.nodes[id].as_ref().expect("live radix node")
    }

    fn node_mut(&mut self, id: usize) -> &mut Node {
        self.nodes[id].as_mut().expect("live radix node")
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn add_node(&mut self, node: Node) -> usize {
        if let Some(id) = self.free_slots.pop() {
            self.nodes[id] = Some(node);
            id
        } else {
            self.nodes.push(Some(node));
            self.nodes.len() - 1
        }
    }

    /// Number of nodes besides the root.
    pub(crate) fn num_nodes(&self) -> usize {
        self.nodes.len() - self.free_slots.len() - 1
    }

    /// Walks the tree along `tokens`; returns `(node, tokens matched in that node)` per visited
    /// node and the total match length.
    fn walk(&self, tokens: &[u32]) -> (Vec<(usize, usize)>, usize) {
        let mut path = Vec::new();
        let mut node = ROOT;
        let mut pos = 0;
        while pos < tokens.len() {
            let Some(&child) = self.node(node).children.get(&tokens[pos]) else {
                break;
            };
            let edge = &self.node(child).tokens;
            let k = common_prefix(edge, &tokens[pos..]);
            path.push((child, k));
            pos += k;
            if k < edge.len() {
                break;
            }
            node = child;
        }
        (path, pos)
    }

    /// Longest cached prefix of `tokens`: its length and the blocks holding it (the caller takes
    /// references on them). Touches the matched nodes for LRU.
    pub(crate) fn match_prefix(&mut self, tokens: &[u32]) -> (usize, Vec<u32>) {
        let bs = self.block_size;
        let (path, m) = self.walk(tokens);
        let mut blocks = vec![u32::MAX; m.div_ceil(bs)];
        let now = self.tick();
        for &(id, k) in &path {
            let node = self.node_mut(id);
            node.last_access = now;
            let first = node.first_block(bs);
            let last = (node.start + k - 1) / bs;
            for (i, slot) in blocks.iter_mut().enumerate().take(last + 1).skip(first) {
                *slot = node.blocks[i - first];
            }
        }
        debug_assert!(blocks.iter().all(|&b| b != u32::MAX));
        (m, blocks)
    }

    /// Records `tokens` held in `blocks` (the block table of a sequence of exactly that length).
    /// New nodes take their own references on the blocks they record.
    pub(crate) fn insert(&mut self, tokens: &[u32], blocks: &[u32], pool: &mut BlockPool) {
        let bs = self.block_size;
        let n = tokens.len();
        debug_assert_eq!(blocks.len(), n.div_ceil(bs));
        let now = self.tick();
        let mut node = ROOT;
        let mut pos = 0;
        while pos < n {
            let Some(&child) = self.node(node).children.get(&tokens[pos]) else {
                let leaf_blocks = blocks[pos / bs..=(n - 1) / bs].to_vec();
                for &b in &leaf_blocks {
                    pool.incref(b);
                }
                let leaf = self.add_node(Node {
                    parent: node,
                    children: HashMap::new(),
                    tokens: tokens[pos..].to_vec(),
                    start: pos,
                    blocks: leaf_blocks,
                    last_access: now,
                });
                self.node_mut(node).children.insert(tokens[pos], leaf);
                return;
            };
            self.node_mut(child).last_access = now;
            let edge_len = self.node(child).tokens.len();
            let k = common_prefix(&self.node(child).tokens, &tokens[pos..]);
            if k == edge_len {
                pos += k;
                node = child;
            } else if pos + k == n {
                // Already cached, ending inside this edge.
                return;
            } else {
                node = self.split(child, k, pool);
                pos += k;
            }
        }
    }

    /// Splits `child` after `k` edge tokens (0 < k < edge length); returns the new upper node.
    fn split(&mut self, child: usize, k: usize, pool: &mut BlockPool) -> usize {
        let bs = self.block_size;
        let c = self.node(child);
        let start = c.start;
        let first = c.first_block(bs);
        let upper_last = (start + k - 1) / bs;
        let lower_first = (start + k) / bs;
        let upper_blocks = c.blocks[..=upper_last - first].to_vec();
        let lower_blocks = c.blocks[lower_first - first..].to_vec();
        if upper_last == lower_first {
            // The boundary block is now recorded by both nodes.
            pool.incref(c.blocks[upper_last - first]);
        }
        let upper = Node {
            parent: c.parent,
            children: HashMap::from([(c.tokens[k], child)]),
            tokens: c.tokens[..k].to_vec(),
            start,
            blocks: upper_blocks,
            last_access: c.last_access,
        };
        let parent = c.parent;
        let first_token = c.tokens[0];
        let upper_id = self.add_node(upper);
        let c = self.node_mut(child);
        c.tokens.drain(..k);
        c.start = start + k;
        c.blocks = lower_blocks;
        c.parent = upper_id;
        self.node_mut(parent).children.insert(first_token, upper_id);
        upper_id
    }

    /// Plans an LRU eviction freeing at least `target` blocks if possible: leaves are removed
    /// oldest first when their removal returns at least one block to the pool (a block nothing
    /// else holds: no sequence, no other node) or when no sequence holds any of their blocks.
    /// Removing a leaf can make its parent a leaf. Blocks held by a sequence are never freed.
    pub(crate) fn plan_evict(&self, target: usize, pool: &BlockPool) -> EvictPlan {
        let mut plan = EvictPlan::default();
        if target == 0 {
            return plan;
        }
        let mut cache_refs: HashMap<u32, u32> = HashMap::new();
        for b in self.nodes.iter().flatten().flat_map(|n| n.blocks.iter()) {
            *cache_refs.entry(*b).or_insert(0) += 1;
        }
        let mut dec: HashMap<u32, u32> = HashMap::new();
        let mut remaining_children: HashMap<usize, usize> = HashMap::new();
        let mut heap: BinaryHeap<Reverse<(u64, usize)>> = self
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(id, n)| n.as_ref().map(|n| (id, n)))
            .filter(|(id, n)| *id != ROOT && n.children.is_empty())
            .map(|(id, n)| Reverse((n.last_access, id)))
            .collect();
        while plan.freed < target {
            let Some(Reverse((_, id))) = heap.pop() else {
                break;
            };
            let node = self.node(id);
            let gain = node
                .blocks
                .iter()
                .filter(|&&b| pool.refcount(b) - dec.get(&b).copied().unwrap_or(0) == 1)
                .count();
            // A leaf that frees nothing is still removed when no sequence holds any of its blocks
            // (they are shared with neighbouring nodes only, e.g. the boundary block of its
            // parent): that makes the parent a leaf.
            let cache_only = || {
                node.blocks
                    .iter()
                    .all(|b| pool.refcount(*b) == cache_refs[b])
            };
            if gain == 0 && !cache_only() {
                continue;
            }
            for &b in &node.blocks {
                *dec.entry(b).or_insert(0) += 1;
            }
            plan.freed += gain;
            plan.nodes.push((id, gain > 0));
            let parent = node.parent;
            if parent != ROOT {
                let p = self.node(parent);
                let left = remaining_children.entry(parent).or_insert(p.children.len());
                *left -= 1;
                if *left == 0 {
                    heap.push(Reverse((p.last_access, parent)));
                }
            }
        }
        // Keep a node that frees nothing only when its parent is removed too (it was removed to
        // make the parent a leaf); parents come after their children in the plan.
        let mut kept: HashSet<usize> = HashSet::new();
        for &(id, gainful) in plan.nodes.iter().rev() {
            if gainful || kept.contains(&self.node(id).parent) {
                kept.insert(id);
            }
        }
        plan.nodes.retain(|(id, _)| kept.contains(id));
        plan
    }

    /// Removes the planned nodes; returns the number of blocks returned to the pool.
    pub(crate) fn apply_evict(&mut self, plan: EvictPlan, pool: &mut BlockPool) -> usize {
        let mut freed = 0;
        for (id, _) in plan.nodes {
            let node = self.nodes[id].take().expect("planned node is live");
            debug_assert!(node.children.is_empty());
            for &b in &node.blocks {
                if pool.decref(b) {
                    freed += 1;
                }
            }
            self.node_mut(node.parent).children.remove(&node.tokens[0]);
            self.free_slots.push(id);
        }
        debug_assert_eq!(freed, plan.freed);
        freed
    }

    /// Every block reference held by the tree (with multiplicity).
    pub(crate) fn block_refs(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .flatten()
            .flat_map(|n| n.blocks.iter().copied())
            .collect()
    }

    /// Token sequences of all root-to-leaf paths (every cached sequence is a prefix of one).
    pub(crate) fn leaf_paths(&self) -> Vec<Vec<u32>> {
        let mut out = Vec::new();
        let mut stack = vec![(ROOT, Vec::new())];
        while let Some((id, prefix)) = stack.pop() {
            let node = self.node(id);
            if node.children.is_empty() {
                if id != ROOT {
                    out.push(prefix);
                }
                continue;
            }
            for &child in node.children.values() {
                let mut p = prefix.clone();
                p.extend_from_slice(&self.node(child).tokens);
                stack.push((child, p));
            }
        }
        out.sort();
        out
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
