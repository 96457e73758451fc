//! RFC 6962 Merkle tree hashing, incremental building and proofs.
//!
//! Everything here follows RFC 9162 §2.1 (the RFC 6962 tree, restated and
//! fixed in RFC 9162) with SHA-256:
//!
//! * leaf hash `SHA-256(0x00 || leaf)`, interior node `SHA-256(0x01 || left || right)`;
//! * a tree of `n > 1` leaves splits at `k`, the largest power of two
//!   strictly less than `n` — the last node is never duplicated and pairs
//!   are never sorted;
//! * the empty tree's root is `SHA-256("")`.
//!
//! The module is pure: no I/O, no clock, no randomness. Functions that take a
//! slice of leaves take the leaf *data* (for the ledger, the 32-byte event
//! hashes) and apply the leaf hashing themselves; functions that take a
//! `leaf_hash` expect it already hashed with [`leaf_hash`].

use std::fmt;

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Root of the empty tree, `SHA-256("")` (RFC 9162 §2.1.1).
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Domain-separation prefixes of RFC 9162 §2.1.1: they stop an interior node
/// from being passed off as a leaf (second-preimage resistance).
const LEAF_PREFIX: u8 = 0x00;
const NODE_PREFIX: u8 = 0x01;

/// Size in bytes of the big-endian tree size that opens [`CompactRange::to_bytes`].
const SIZE_BYTES: usize = 8;

/// The largest tree size a [`CompactRange`] is resumed at. No log reaches it,
/// and the cap means appending can never overflow the leaf counter, however
/// the stored bytes were tampered with.
const MAX_RESUMED_SIZE: u64 = 1 << 63;

/// Why a Merkle operation was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MerkleError {
    /// An inclusion proof was asked for a leaf the tree does not have.
    IndexOutOfRange { index: u64, tree_size: u64 },
    /// A consistency proof was asked from a tree larger than the current one.
    OldSizeOutOfRange { old_size: u64, tree_size: u64 },
    /// Stored compact-range bytes or parts do not describe a valid range.
    MalformedCompactRange,
}

impl fmt::Display for MerkleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IndexOutOfRange { index, tree_size } => {
                write!(
                    f,
                    "leaf index {index} is out of range for tree size {tree_size}"
                )
            }
            Self::OldSizeOutOfRange {
                old_size,
                tree_size,
            } => write!(f, "old tree size {old_size} exceeds tree size {tree_size}"),
            Self::MalformedCompactRange => f.write_str("malformed compact range"),
        }
    }
}

impl std::error::Error for MerkleError {}

/// The hash of one leaf: `SHA-256(0x00 || data)` (RFC 9162 §2.1.1).
pub fn leaf_hash(data: &[u8]) -> Hash {
    // The ledger's leaves are 32-byte hashes: hash them from one contiguous
    // buffer in one call, which is measurably cheaper than feeding the
    // hasher piece by piece.
    if data.len() == 32 {
        let mut input = [0u8; 33];
        input[0] = LEAF_PREFIX;
        input[1..].copy_from_slice(data);
        return Sha256::digest(input).into();
    }
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(data);
    hasher.finalize().into()
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)` (RFC 9162 §2.1.1).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut input = [0u8; 65];
    input[0] = NODE_PREFIX;
    input[1..33].copy_from_slice(left);
    input[33..].copy_from_slice(right);
    Sha256::digest(input).into()
}

/// The Merkle tree hash `MTH(D[n])` of `leaves` (RFC 9162 §2.1.1).
///
/// `leaves` are the leaf data — for the ledger `&[Hash]` of event hashes, but
/// any byte strings work (the RFC test vectors use leaves of varied length).
/// Runs in one pass with O(log n) memory: the leaves stream through a
/// [`CompactRange`], so the cost is the `2n - 1` SHA-256 calls themselves.
pub fn root<L: AsRef<[u8]>>(leaves: &[L]) -> Hash {
    let mut range = CompactRange::with_capacity(leaves.len());
    for leaf in leaves {
        range.append(leaf.as_ref());
    }
    range.root()
}

/// The RFC 9162 split point: the largest power of two strictly less than `n`.
/// Only meaningful for `n >= 2`.
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The inclusion proof `PATH(index, D[n])` of RFC 9162 §2.1.3.1 for the leaf at
/// `index` in the tree of all `leaves`, ordered from the leaf's sibling up to
/// the root's child.
///
/// The sibling subtree hashes are computed from the leaves, so the cost is
/// at most one pass of hashing over `leaves`.
pub fn inclusion_proof<L: AsRef<[u8]>>(leaves: &[L], index: u64) -> Result<Vec<Hash>, MerkleError> {
    let out_of_range = MerkleError::IndexOutOfRange {
        index,
        tree_size: leaves.len() as u64,
    };
    let mut index = usize::try_from(index).map_err(|_| out_of_range.clone())?;
    if index >= leaves.len() {
        return Err(out_of_range);
    }
    // PATH(m, D[n]) = PATH(m, D[0:k]) : MTH(D[k:n])        for m < k
    //               = PATH(m - k, D[k:n]) : MTH(D[0:k])    for m >= k
    // Walking down from the root yields the siblings top-down; the path lists
    // them bottom-up, hence the reverse at the end.
    let mut path = Vec::new();
    let mut subtree = leaves;
    while subtree.len() > 1 {
        let k = split_point(subtree.len());
        let (left, right) = subtree.split_at(k);
        if index < k {
            path.push(root(right));
            subtree = left;
        } else {
            path.push(root(left));
            subtree = right;
            index -= k;
        }
    }
    path.reverse();
    Ok(path)
}

/// The consistency proof `PROOF(old_size, D[n])` of RFC 9162 §2.1.4.1 between
/// the tree of the first `old_size` leaves and the tree of all `leaves`.
///
/// Empty when `old_size` is 0 or equals the current size: the RFC defines
/// proofs only for `0 < m < n`, and those two cases need no proof.
pub fn consistency_proof<L: AsRef<[u8]>>(
    leaves: &[L],
    old_size: u64,
) -> Result<Vec<Hash>, MerkleError> {
    let out_of_range = MerkleError::OldSizeOutOfRange {
        old_size,
        tree_size: leaves.len() as u64,
    };
    let mut old = usize::try_from(old_size).map_err(|_| out_of_range.clone())?;
    if old > leaves.len() {
        return Err(out_of_range);
    }
    if old == 0 || old == leaves.len() {
        return Ok(Vec::new());
    }
    // PROOF(m, D[n]) = SUBPROOF(m, D[n], true), where
    // SUBPROOF(m, D[m], true)  = {}
    // SUBPROOF(m, D[m], false) = {MTH(D[m])}
    // SUBPROOF(m, D[n], b)     = SUBPROOF(m, D[0:k], b) : MTH(D[k:n])          for m <= k
    //                          = SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])  for m > k
    // As for PATH, walking down collects the nodes in reverse proof order.
    let mut proof = Vec::new();
    let mut subtree = leaves;
    let mut old_root_is_known = true; // the RFC's `b`
    while old < subtree.len() {
        let k = split_point(subtree.len());
        let (left, right) = subtree.split_at(k);
        if old <= k {
            proof.push(root(right));
            subtree = left;
        } else {
            proof.push(root(left));
            subtree = right;
            old -= k;
            old_root_is_known = false;
        }
    }
    if !old_root_is_known {
        proof.push(root(subtree));
    }
    proof.reverse();
    Ok(proof)
}

/// Verifies an inclusion proof with the algorithm of RFC 9162 §2.1.3.2.
///
/// `leaf_hash` is the already hashed leaf (see [`leaf_hash`]). Like every
/// RFC 6962 proof, this binds the leaf to `root`; `tree_size` only steers the
/// computation, so take `tree_size` and `root` from the same verified
/// checkpoint.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if index >= tree_size {
        return false;
    }
    // `f_n` and `s_n` are the RFC's `fn` and `sn`: the node index on the
    // leaf's path and the index of the last node, at the current level.
    let mut f_n = index;
    let mut s_n = tree_size - 1;
    let mut r = *leaf_hash;
    for p in proof {
        if s_n == 0 {
            return false; // the proof is longer than the path
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            // A right-most node with no sibling at this level is carried up
            // unchanged until it becomes a right child (or the root's child).
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// Verifies a consistency proof with the algorithm of RFC 9162 §2.1.4.2:
/// that the tree of `new_size` leaves with root `new_root` is an append-only
/// extension of the tree of `old_size` leaves with root `old_root`.
///
/// The trivial cases the RFC leaves out are decided directly: equal sizes
/// need an empty proof and equal roots; an empty old tree needs an empty
/// proof and the empty root.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty() && *old_root == EMPTY_ROOT;
    }
    // Step 1: a non-trivial proof is never empty.
    let Some((first, rest)) = proof.split_first() else {
        return false;
    };
    // Step 2: when the old tree is a complete subtree the proof omits its
    // root; the old root itself starts both computations instead.
    let (start, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (first, rest)
    };
    // Step 3: `f_n` and `s_n` are the RFC's `fn` and `sn`.
    let mut f_n = old_size - 1;
    let mut s_n = new_size - 1;
    // Step 4: skip the levels where the old tree's last node is a right child
    // inside the first proof node.
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 5.
    let mut f_r = *start;
    let mut s_r = *start;
    // Step 6.
    for c in rest {
        if s_n == 0 {
            return false; // the proof is longer than the path
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 7.
    f_r == *old_root && s_r == *new_root && s_n == 0
}

/// The right edge of a growing tree: the compact range `[0, size)`.
///
/// It holds one hash per set bit of `size` — the roots of the complete
/// subtrees that tile the leaves, largest (left-most) first — which is all
/// that is needed to append more leaves (O(1) hashes amortised per leaf) and
/// to compute the root at the current size. Persist it with
/// [`to_bytes`](Self::to_bytes) and resume with
/// [`from_bytes`](Self::from_bytes), or store [`size`](Self::size) and
/// [`hashes`](Self::hashes) separately and resume with
/// [`from_parts`](Self::from_parts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    /// Invariant: `hashes.len() == size.count_ones()`.
    hashes: Vec<Hash>,
}

impl CompactRange {
    /// The range of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty range with room for the edge of a tree of `leaves` leaves,
    /// so that building it never reallocates.
    fn with_capacity(leaves: usize) -> Self {
        Self {
            size: 0,
            hashes: Vec::with_capacity((usize::BITS - leaves.leading_zeros()) as usize),
        }
    }

    /// Resumes a range from its tree size and subtree hashes (as returned by
    /// [`size`](Self::size) and [`hashes`](Self::hashes)).
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Self, MerkleError> {
        if size > MAX_RESUMED_SIZE || hashes.len() != size.count_ones() as usize {
            return Err(MerkleError::MalformedCompactRange);
        }
        Ok(Self { size, hashes })
    }

    /// The number of leaves appended so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The roots of the complete subtrees covering `[0, size)`, left-most
    /// (largest) first; one per set bit of `size`.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends one leaf given as its data (for the ledger, an event hash).
    pub fn append(&mut self, leaf: &[u8]) {
        self.append_leaf_hash(leaf_hash(leaf));
    }

    /// Appends one leaf given as its already computed [`leaf_hash`].
    pub fn append_leaf_hash(&mut self, leaf_hash: Hash) {
        // Like incrementing a binary counter: each trailing one bit of `size`
        // is a complete subtree as tall as the one being carried, so the two
        // merge into their parent, smallest (right-most) first.
        let merged = self.size.trailing_ones() as usize;
        let keep = self.hashes.len() - merged; // invariant: len >= trailing ones
        let carried = self
            .hashes
            .drain(keep..)
            .rev()
            .fold(leaf_hash, |right, left| node_hash(&left, &right));
        self.hashes.push(carried);
        self.size += 1;
    }

    /// The root `MTH(D[size])` of the tree built so far.
    pub fn root(&self) -> Hash {
        // The left-most subtree holds exactly the first k leaves, k being the
        // largest power of two below `size` (RFC 9162 §2.1.1 split), and the
        // same holds recursively for the rest, so the root folds the subtree
        // hashes from the right.
        let mut from_right = self.hashes.iter().rev();
        match from_right.next() {
            None => EMPTY_ROOT,
            Some(last) => from_right.fold(*last, |right, left| node_hash(left, &right)),
        }
    }

    /// Serialises the range: the tree size as 8 big-endian bytes, then the
    /// subtree hashes, left-most first (so `8 + 32 * size.count_ones()` bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(SIZE_BYTES + self.hashes.len() * 32);
        bytes.extend_from_slice(&self.size.to_be_bytes());
        for hash in &self.hashes {
            bytes.extend_from_slice(hash);
        }
        bytes
    }

    /// Parses bytes written by [`to_bytes`](Self::to_bytes), checking that the
    /// hash count matches the size.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, MerkleError> {
        let (size_bytes, hash_bytes) = bytes
            .split_first_chunk::<SIZE_BYTES>()
            .ok_or(MerkleError::MalformedCompactRange)?;
        let size = u64::from_be_bytes(*size_bytes);
        let expected_len = size.count_ones() as usize * 32;
        if hash_bytes.len() != expected_len {
            return Err(MerkleError::MalformedCompactRange);
        }
        let hashes = hash_bytes
            .chunks_exact(32)
            .map(|chunk| {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(chunk);
                hash
            })
            .collect();
        Self::from_parts(size, hashes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hex_str: &str) -> Hash {
        let bytes = hex::decode(hex_str).expect("valid hex");
        bytes.try_into().expect("32 bytes")
    }

    fn hs(hex_strs: &[&str]) -> Vec<Hash> {
        hex_strs.iter().map(|s| h(s)).collect()
    }

    // ---- Known-answer vectors ------------------------------------------
    //
    // From transparency-dev/merkle `testonly/constants.go` and
    // `proof/verify_test.go`, which carry over certificate-transparency's
    // `cpp/merkletree/merkle_tree_test.cc` (the same leaves and roots).

    /// LeafInputs(): the eight leaves of the reference tree.
    fn kat_leaves() -> Vec<Vec<u8>> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|s| hex::decode(s).expect("valid hex"))
        .collect()
    }

    /// RootHashes(): the root at every size 0..=8.
    const KAT_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// NodeHashes(): every complete subtree, by level then index in level.
    const KAT_NODES: [&[&str]; 4] = [
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
            "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
        ],
        &[
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        ],
        &[
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
        &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
    ];

    /// CompactTrees(): the compact range after each size 0..=8, as
    /// (level, index) into KAT_NODES.
    const KAT_COMPACT: [&[(usize, usize)]; 9] = [
        &[],
        &[(0, 0)],
        &[(1, 0)],
        &[(1, 0), (0, 2)],
        &[(2, 0)],
        &[(2, 0), (0, 4)],
        &[(2, 0), (1, 2)],
        &[(2, 0), (1, 2), (0, 6)],
        &[(3, 0)],
    ];

    /// verify_test.go `inclusionProofs`: (1-based leaf, tree size, path).
    fn kat_inclusion() -> Vec<(u64, u64, Vec<Hash>)> {
        vec![
            (1, 1, vec![]),
            (
                1,
                8,
                hs(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                6,
                8,
                hs(&[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (
                3,
                3,
                hs(&["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
            ),
            (
                2,
                5,
                hs(&[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
        ]
    }

    /// verify_test.go `consistencyProofs`: (old size, new size, proof).
    fn kat_consistency() -> Vec<(u64, u64, Vec<Hash>)> {
        vec![
            (1, 1, vec![]),
            (
                1,
                8,
                hs(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                6,
                8,
                hs(&[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (
                2,
                5,
                hs(&[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
            (
                6,
                7,
                hs(&[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
        ]
    }

    // ---- Reference implementation ---------------------------------------
    //
    // A literal, recursive transcription of the RFC 9162 §2.1 definitions,
    // used to cross-check the iterative code on every small tree.

    fn ref_split(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    fn ref_mth(d: &[Vec<u8>]) -> Hash {
        match d.len() {
            0 => Sha256::digest(b"").into(),
            1 => {
                let mut input = vec![0x00];
                input.extend_from_slice(&d[0]);
                Sha256::digest(&input).into()
            }
            n => {
                let k = ref_split(n);
                let mut input = vec![0x01];
                input.extend_from_slice(&ref_mth(&d[..k]));
                input.extend_from_slice(&ref_mth(&d[k..]));
                Sha256::digest(&input).into()
            }
        }
    }

    fn ref_path(m: usize, d: &[Vec<u8>]) -> Vec<Hash> {
        let n = d.len();
        if n == 1 {
            return vec![];
        }
        let k = ref_split(n);
        if m < k {
            let mut path = ref_path(m, &d[..k]);
            path.push(ref_mth(&d[k..]));
            path
        } else {
            let mut path = ref_path(m - k, &d[k..]);
            path.push(ref_mth(&d[..k]));
            path
        }
    }

    fn ref_subproof(m: usize, d: &[Vec<u8>], b: bool) -> Vec<Hash> {
        let n = d.len();
        if m == n {
            return if b { vec![] } else { vec![ref_mth(d)] };
        }
        let k = ref_split(n);
        if m <= k {
            let mut proof = ref_subproof(m, &d[..k], b);
            proof.push(ref_mth(&d[k..]));
            proof
        } else {
            let mut proof = ref_subproof(m - k, &d[k..], false);
            proof.push(ref_mth(&d[..k]));
            proof
        }
    }

    /// Distinct leaves of mixed lengths, like the ledger's (32 bytes) and not.
    fn test_leaves(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let digest: Hash = Sha256::digest((i as u64).to_be_bytes()).into();
                if i % 3 == 0 {
                    digest[..i % 32].to_vec()
                } else {
                    digest.to_vec()
                }
            })
            .collect()
    }

    // ---- Hashing and roots -----------------------------------------------

    #[test]
    fn empty_root_is_sha256_of_empty_string() {
        let expected: Hash = Sha256::digest(b"").into();
        assert_eq!(EMPTY_ROOT, expected);
        assert_eq!(EMPTY_ROOT, h(KAT_ROOTS[0]));
        assert_eq!(root::<Hash>(&[]), EMPTY_ROOT);
        assert_eq!(CompactRange::new().root(), EMPTY_ROOT);
    }

    #[test]
    fn leaf_and_node_hash_known_answers() {
        // rfc6962_test.go: the empty leaf, and `echo -n 004C313233343536 | xxd -r -p | sha256sum`.
        assert_eq!(
            leaf_hash(b""),
            h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d")
        );
        assert_eq!(
            leaf_hash(b"L123456"),
            h("395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56")
        );
        // Node hashing is ordered and domain-separated from leaf hashing.
        let (a, b) = (leaf_hash(b"Hello"), leaf_hash(b"World"));
        assert_ne!(node_hash(&a, &b), node_hash(&b, &a));
        let mut concatenated = a.to_vec();
        concatenated.extend_from_slice(&b);
        assert_ne!(node_hash(&a, &b), leaf_hash(&concatenated));
    }

    #[test]
    fn known_roots_for_every_size() {
        let leaves = kat_leaves();
        for (size, expected) in KAT_ROOTS.iter().enumerate() {
            assert_eq!(root(&leaves[..size]), h(expected), "size {size}");
        }
    }

    #[test]
    fn known_complete_subtree_hashes() {
        let leaves = kat_leaves();
        for (level, nodes) in KAT_NODES.iter().enumerate() {
            for (index, expected) in nodes.iter().enumerate() {
                let span = (index << level)..((index + 1) << level);
                assert_eq!(
                    root(&leaves[span]),
                    h(expected),
                    "level {level} index {index}"
                );
            }
        }
    }

    #[test]
    fn root_matches_reference_for_sizes_up_to_300() {
        let leaves = test_leaves(300);
        for n in 0..=300 {
            assert_eq!(root(&leaves[..n]), ref_mth(&leaves[..n]), "size {n}");
        }
    }

    #[test]
    fn root_over_hash_leaves_hashes_them_as_leaf_data() {
        let leaves: Vec<Hash> = (0u8..5).map(|i| [i; 32]).collect();
        let as_vecs: Vec<Vec<u8>> = leaves.iter().map(|l| l.to_vec()).collect();
        assert_eq!(root(&leaves), ref_mth(&as_vecs));
    }

    // ---- Compact range ---------------------------------------------------

    #[test]
    fn compact_range_known_answers() {
        let leaves = kat_leaves();
        let mut range = CompactRange::new();
        for (size, expected) in KAT_COMPACT.iter().enumerate() {
            if size > 0 {
                range.append(&leaves[size - 1]);
            }
            let expected: Vec<Hash> = expected
                .iter()
                .map(|&(level, index)| h(KAT_NODES[level][index]))
                .collect();
            assert_eq!(range.size(), size as u64);
            assert_eq!(range.hashes(), expected.as_slice(), "size {size}");
            assert_eq!(range.root(), h(KAT_ROOTS[size]), "size {size}");
        }
    }

    #[test]
    fn compact_range_matches_root_for_every_size_up_to_300() {
        let leaves = test_leaves(300);
        let mut range = CompactRange::new();
        assert_eq!(range.root(), root::<Vec<u8>>(&[]));
        for n in 1..=300 {
            range.append(&leaves[n - 1]);
            assert_eq!(range.size(), n as u64);
            assert_eq!(range.hashes().len(), n.count_ones() as usize);
            assert_eq!(range.root(), root(&leaves[..n]), "size {n}");
        }
    }

    #[test]
    fn compact_range_resumes_from_bytes_and_parts_at_every_size() {
        let leaves = test_leaves(300);
        let final_root = root(&leaves);
        let mut range = CompactRange::new();
        for n in 0..=300usize {
            let bytes = range.to_bytes();
            assert_eq!(bytes.len(), 8 + 32 * n.count_ones() as usize);
            let restored = CompactRange::from_bytes(&bytes).expect("round trip");
            assert_eq!(restored, range);
            let from_parts = CompactRange::from_parts(range.size(), range.hashes().to_vec())
                .expect("round trip");
            assert_eq!(from_parts, range);
            // Only every 37th size resumes to the end, to keep the test quick.
            if n % 37 == 0 {
                let mut resumed = restored;
                for leaf in &leaves[n..] {
                    resumed.append(leaf);
                }
                assert_eq!(resumed.root(), final_root, "resumed at {n}");
            }
            if n < 300 {
                range.append(&leaves[n]);
            }
        }
    }

    #[test]
    fn compact_range_append_leaf_hash_equals_append() {
        let leaves = test_leaves(20);
        let mut by_data = CompactRange::new();
        let mut by_hash = CompactRange::new();
        for leaf in &leaves {
            by_data.append(leaf);
            by_hash.append_leaf_hash(leaf_hash(leaf));
        }
        assert_eq!(by_data, by_hash);
    }

    #[test]
    fn compact_range_rejects_malformed_input() {
        let mut range = CompactRange::new();
        for i in 0u8..5 {
            range.append(&[i]);
        }
        let bytes = range.to_bytes(); // size 5: two hashes
        assert_eq!(bytes.len(), 8 + 64);
        assert!(CompactRange::from_bytes(&[]).is_err());
        assert!(CompactRange::from_bytes(&bytes[..7]).is_err());
        assert!(CompactRange::from_bytes(&bytes[..bytes.len() - 1]).is_err());
        assert!(CompactRange::from_bytes(&bytes[..8 + 32]).is_err());
        let mut extra = bytes.clone();
        extra.extend_from_slice(&[0; 32]);
        assert!(CompactRange::from_bytes(&extra).is_err());
        let mut wrong_size = bytes.clone();
        wrong_size[7] = 6; // 6 has two set bits too: accepted, but a different tree
        assert!(CompactRange::from_bytes(&wrong_size).is_ok());
        wrong_size[7] = 7; // three set bits, two hashes
        assert!(CompactRange::from_bytes(&wrong_size).is_err());
        let mut huge = bytes;
        huge[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(CompactRange::from_bytes(&huge).is_err());
        assert!(CompactRange::from_parts(3, vec![[0; 32]]).is_err());
        assert!(CompactRange::from_parts(1 << 63, vec![[0; 32]]).is_ok());
        assert!(CompactRange::from_parts((1 << 63) + 1, vec![[0; 32]; 2]).is_err());
        assert!(CompactRange::from_parts(u64::MAX, vec![[0; 32]; 64]).is_err());
        assert_eq!(
            CompactRange::from_parts(0, vec![]).expect("empty"),
            CompactRange::new()
        );
    }

    // ---- Inclusion proofs --------------------------------------------------

    /// Every tampering of a valid inclusion proof that must be rejected
    /// (after verify_test.go `corruptInclusionProof`, extended).
    fn assert_inclusion_tampering_rejected(
        leaf: &Hash,
        index: u64,
        size: u64,
        proof: &[Hash],
        root: &Hash,
    ) {
        let ctx = format!("index {index} size {size}");
        // Wrong index: every other index of the tree, and past its end.
        for other in 0..size + 2 {
            if other != index {
                assert!(
                    !verify_inclusion(leaf, other, size, proof, root),
                    "{ctx}: index {other}"
                );
            }
        }
        assert!(
            !verify_inclusion(leaf, index.wrapping_sub(1), size, proof, root),
            "{ctx}"
        );
        assert!(
            !verify_inclusion(leaf, u64::MAX, size, proof, root),
            "{ctx}"
        );
        // Wrong tree size.
        assert!(
            !verify_inclusion(leaf, index, size * 2, proof, root),
            "{ctx}: size*2"
        );
        assert!(
            !verify_inclusion(leaf, index, size / 2, proof, root),
            "{ctx}: size/2"
        );
        assert!(
            !verify_inclusion(leaf, index, 0, proof, root),
            "{ctx}: size 0"
        );
        // Wrong leaf or root.
        assert!(
            !verify_inclusion(&leaf_hash(b"WrongLeaf"), index, size, proof, root),
            "{ctx}"
        );
        assert!(
            !verify_inclusion(leaf, index, size, proof, &EMPTY_ROOT),
            "{ctx}"
        );
        let mut wrong_root = *root;
        wrong_root[31] ^= 1;
        assert!(
            !verify_inclusion(leaf, index, size, proof, &wrong_root),
            "{ctx}"
        );
        // A flipped bit anywhere in any element.
        for i in 0..proof.len() {
            for (byte, bit) in [(0, 3), (17, 0), (31, 7)] {
                let mut bad = proof.to_vec();
                bad[i][byte] ^= 1 << bit;
                assert!(
                    !verify_inclusion(leaf, index, size, &bad, root),
                    "{ctx}: flip {i}"
                );
            }
        }
        // Extra elements at the end or the front.
        for extra in [*root, [0; 32], *leaf] {
            let mut appended = proof.to_vec();
            appended.push(extra);
            assert!(
                !verify_inclusion(leaf, index, size, &appended, root),
                "{ctx}: appended"
            );
            let mut prepended = vec![extra];
            prepended.extend_from_slice(proof);
            assert!(
                !verify_inclusion(leaf, index, size, &prepended, root),
                "{ctx}: prepended"
            );
        }
        // Missing elements.
        if let Some((_, rest)) = proof.split_last() {
            assert!(
                !verify_inclusion(leaf, index, size, rest, root),
                "{ctx}: truncated"
            );
        }
        if let Some((_, rest)) = proof.split_first() {
            assert!(
                !verify_inclusion(leaf, index, size, rest, root),
                "{ctx}: front removed"
            );
        }
        // An element replaced by another hash.
        if proof.len() > 1 {
            let mut replaced = proof.to_vec();
            replaced[1] = h("abacaba000000000000000000000000000000000000000000060061e00123456");
            assert!(
                !verify_inclusion(leaf, index, size, &replaced, root),
                "{ctx}: replaced"
            );
        }
    }

    #[test]
    fn inclusion_known_answers() {
        let leaves = kat_leaves();
        for (leaf_number, size, expected) in kat_inclusion() {
            let index = leaf_number - 1;
            let tree = &leaves[..size as usize];
            let root = h(KAT_ROOTS[size as usize]);
            let leaf = leaf_hash(&leaves[index as usize]);
            let proof = inclusion_proof(tree, index).expect("in range");
            assert_eq!(proof, expected, "leaf {leaf_number} size {size}");
            assert!(verify_inclusion(&leaf, index, size, &proof, &root));
            assert_inclusion_tampering_rejected(&leaf, index, size, &proof, &root);
        }
    }

    /// Proof shapes from transparency-dev/merkle `proof/proof_test.go`
    /// `TestInclusion`: (size, index, node ids as (level, index), and the
    /// [begin, end) run of ids that is rehashed into one ephemeral node).
    type Shape = (u64, u64, &'static [(u32, u64)], Option<(usize, usize)>);

    const INCLUSION_SHAPES: &[Shape] = &[
        (1, 0, &[], None),
        (2, 0, &[(0, 1)], None),
        (2, 1, &[(0, 0)], None),
        (3, 1, &[(0, 0), (0, 2)], None),
        (7, 0, &[(0, 1), (1, 1), (0, 6), (1, 2)], Some((2, 4))),
        (7, 1, &[(0, 0), (1, 1), (0, 6), (1, 2)], Some((2, 4))),
        (7, 2, &[(0, 3), (1, 0), (0, 6), (1, 2)], Some((2, 4))),
        (7, 3, &[(0, 2), (1, 0), (0, 6), (1, 2)], Some((2, 4))),
        (7, 4, &[(0, 5), (0, 6), (2, 0)], None),
        (7, 5, &[(0, 4), (0, 6), (2, 0)], None),
        (7, 6, &[(1, 2), (2, 0)], None),
        (4, 2, &[(0, 3), (1, 0)], None),
        (5, 3, &[(0, 2), (1, 0), (0, 4)], None),
        (6, 3, &[(0, 2), (1, 0), (1, 2)], None),
        (6, 4, &[(0, 5), (2, 0)], None),
        (
            15,
            10,
            &[(0, 11), (1, 4), (0, 14), (1, 6), (3, 0)],
            Some((2, 4)),
        ),
        (
            31,
            24,
            &[(0, 25), (1, 13), (0, 30), (1, 14), (3, 2), (4, 0)],
            Some((2, 4)),
        ),
        (
            95,
            81,
            &[
                (0, 80),
                (1, 41),
                (2, 21),
                (0, 94),
                (1, 46),
                (2, 22),
                (4, 4),
                (6, 0),
            ],
            Some((3, 6)),
        ),
    ];

    /// `TestConsistency`: (old size, new size, node ids, rehashed run).
    const CONSISTENCY_SHAPES: &[Shape] = &[
        (1, 2, &[(0, 1)], None),
        (1, 4, &[(0, 1), (1, 1)], None),
        (1, 6, &[(0, 1), (1, 1), (1, 2)], None),
        (2, 3, &[(0, 2)], None),
        (2, 8, &[(1, 1), (2, 1)], None),
        (
            3,
            7,
            &[(0, 2), (0, 3), (1, 0), (0, 6), (1, 2)],
            Some((3, 5)),
        ),
        (4, 7, &[(0, 6), (1, 2)], Some((0, 2))),
        (5, 7, &[(0, 4), (0, 5), (0, 6), (2, 0)], None),
        (6, 7, &[(1, 2), (0, 6), (2, 0)], None),
        (7, 8, &[(0, 6), (0, 7), (1, 2), (2, 0)], None),
        (1, 1, &[], None),
        (2, 2, &[], None),
        (3, 3, &[], None),
        (4, 4, &[], None),
        (5, 5, &[], None),
        (7, 7, &[], None),
        (8, 8, &[], None),
        (2, 4, &[(1, 1)], None),
        (3, 5, &[(0, 2), (0, 3), (1, 0), (0, 4)], None),
        (3, 6, &[(0, 2), (0, 3), (1, 0), (1, 2)], None),
        (4, 6, &[(1, 2)], None),
        (1, 7, &[(0, 1), (1, 1), (0, 6), (1, 2)], Some((2, 4))),
        (
            10,
            15,
            &[(1, 4), (1, 5), (0, 14), (1, 6), (3, 0)],
            Some((2, 4)),
        ),
        (
            24,
            31,
            &[(3, 2), (0, 30), (1, 14), (2, 6), (4, 0)],
            Some((1, 4)),
        ),
        (
            81,
            95,
            &[
                (0, 80),
                (0, 81),
                (1, 41),
                (2, 21),
                (0, 94),
                (1, 46),
                (2, 22),
                (4, 4),
                (6, 0),
            ],
            Some((4, 7)),
        ),
    ];

    /// The hashes a shape names: node (level, index) is the root of leaves
    /// [index << level, (index + 1) << level); a rehashed run of ids is the
    /// root of the (incomplete) subtree spanning all of them.
    fn shape_hashes(
        leaves: &[Vec<u8>],
        ids: &[(u32, u64)],
        rehash: Option<(usize, usize)>,
    ) -> Vec<Hash> {
        let span = |&(level, index): &(u32, u64)| {
            ((index << level) as usize, ((index + 1) << level) as usize)
        };
        let mut out = Vec::new();
        let mut i = 0;
        while i < ids.len() {
            match rehash {
                Some((begin, end)) if i == begin => {
                    let spans: Vec<_> = ids[begin..end].iter().map(span).collect();
                    let start = spans.iter().map(|s| s.0).min().expect("non-empty run");
                    let stop = spans.iter().map(|s| s.1).max().expect("non-empty run");
                    out.push(root(&leaves[start..stop]));
                    i = end;
                }
                _ => {
                    let (start, stop) = span(&ids[i]);
                    out.push(root(&leaves[start..stop]));
                    i += 1;
                }
            }
        }
        out
    }

    #[test]
    fn inclusion_proof_shapes_match_transparency_dev() {
        let leaves = test_leaves(95);
        for &(size, index, ids, rehash) in INCLUSION_SHAPES {
            let tree = &leaves[..size as usize];
            let expected = shape_hashes(tree, ids, rehash);
            assert_eq!(
                inclusion_proof(tree, index).expect("in range"),
                expected,
                "size {size} index {index}"
            );
        }
    }

    #[test]
    fn inclusion_proof_rejects_out_of_range_index() {
        let leaves = test_leaves(7);
        for (size, index) in [
            (0, 0),
            (0, 1),
            (1, 2),
            (0, 3),
            (7, 7),
            (7, 8),
            (7, u64::MAX),
        ] {
            assert_eq!(
                inclusion_proof(&leaves[..size], index),
                Err(MerkleError::IndexOutOfRange {
                    index,
                    tree_size: size as u64
                })
            );
        }
    }

    #[test]
    fn verify_inclusion_degenerate_inputs() {
        let leaf = leaf_hash(b"data");
        // A one-leaf tree: the root is the leaf hash and the path is empty.
        assert!(verify_inclusion(&leaf, 0, 1, &[], &leaf));
        assert!(!verify_inclusion(&leaf, 0, 1, &[], &EMPTY_ROOT));
        assert!(!verify_inclusion(&EMPTY_ROOT, 0, 1, &[], &leaf));
        for (index, size) in [(0, 0), (1, 0), (1, 1), (2, 1)] {
            assert!(!verify_inclusion(&leaf, index, size, &[], &leaf));
            assert!(!verify_inclusion(&leaf, index, size, &[], &EMPTY_ROOT));
        }
    }

    #[test]
    fn every_inclusion_proof_up_to_64_leaves_matches_reference_and_verifies() {
        let leaves = test_leaves(64);
        for size in 1..=64usize {
            let tree = &leaves[..size];
            let root = root(tree);
            for index in 0..size {
                let proof = inclusion_proof(tree, index as u64).expect("in range");
                assert_eq!(proof, ref_path(index, tree), "index {index} size {size}");
                let leaf = leaf_hash(&tree[index]);
                assert!(
                    verify_inclusion(&leaf, index as u64, size as u64, &proof, &root),
                    "index {index} size {size}"
                );
                assert_inclusion_tampering_rejected(
                    &leaf,
                    index as u64,
                    size as u64,
                    &proof,
                    &root,
                );
            }
        }
    }

    /// An inclusion proof binds the leaf to the root; the tree size only
    /// steers the computation. Per transparency-dev's verifier, the path of
    /// leaf `i` in a tree of `n` is fixed by `inner = bit_len(i ^ (n - 1))`
    /// hashes by the bits of `i` and then `popcount(i >> inner)` left
    /// siblings. This pins down that a proof verifies under another size only
    /// when that size gives exactly the same path shape — never otherwise.
    #[test]
    fn inclusion_proof_verifies_under_another_size_only_with_identical_shape() {
        fn shape(index: u64, size: u64) -> (u32, u32) {
            let inner = u64::BITS - (index ^ (size - 1)).leading_zeros();
            let border = (index.checked_shr(inner).unwrap_or(0)).count_ones();
            (inner, border)
        }
        let leaves = test_leaves(32);
        for size in 1..=32u64 {
            let tree = &leaves[..size as usize];
            let root = root(tree);
            for index in 0..size {
                let proof = inclusion_proof(tree, index).expect("in range");
                let leaf = leaf_hash(&tree[index as usize]);
                for other in (index + 1)..=70 {
                    let same_shape = shape(index, other) == shape(index, size);
                    assert_eq!(
                        verify_inclusion(&leaf, index, other, &proof, &root),
                        same_shape,
                        "index {index} size {size} as size {other}"
                    );
                }
            }
        }
    }

    // ---- Consistency proofs ----------------------------------------------

    /// Every tampering of a valid, non-trivial consistency proof that must be
    /// rejected (after verify_test.go `corruptConsistencyProof`, extended).
    fn assert_consistency_tampering_rejected(
        old_size: u64,
        new_size: u64,
        old_root: &Hash,
        new_root: &Hash,
        proof: &[Hash],
    ) {
        let ctx = format!("{old_size} -> {new_size}");
        let verify =
            |m: u64, n: u64, r1: &Hash, r2: &Hash, p: &[Hash]| verify_consistency(m, n, r1, r2, p);
        // Wrong sizes.
        assert!(
            !verify(old_size - 1, new_size, old_root, new_root, proof),
            "{ctx}: m-1"
        );
        assert!(
            !verify(old_size + 1, new_size, old_root, new_root, proof),
            "{ctx}: m+1"
        );
        assert!(
            !verify(old_size ^ 2, new_size, old_root, new_root, proof),
            "{ctx}: m^2"
        );
        assert!(
            !verify(old_size, new_size * 2, old_root, new_root, proof),
            "{ctx}: n*2"
        );
        assert!(
            !verify(old_size, new_size / 2, old_root, new_root, proof),
            "{ctx}: n/2"
        );
        assert!(
            !verify(new_size, old_size, old_root, new_root, proof),
            "{ctx}: sizes swapped"
        );
        // Wrong or swapped roots.
        let mut bad_old = *old_root;
        bad_old[0] ^= 1;
        let mut bad_new = *new_root;
        bad_new[31] ^= 0x80;
        assert!(
            !verify(old_size, new_size, &bad_old, new_root, proof),
            "{ctx}: old root"
        );
        assert!(
            !verify(old_size, new_size, old_root, &bad_new, proof),
            "{ctx}: new root"
        );
        assert!(
            !verify(old_size, new_size, new_root, old_root, proof),
            "{ctx}: roots swapped"
        );
        assert!(
            !verify(old_size, new_size, old_root, old_root, proof),
            "{ctx}: old twice"
        );
        assert!(
            !verify(old_size, new_size, new_root, new_root, proof),
            "{ctx}: new twice"
        );
        // Empty proof.
        assert!(
            !verify(old_size, new_size, old_root, new_root, &[]),
            "{ctx}: empty"
        );
        // Extra elements at the end or the front.
        for extra in [*old_root, *new_root, [0; 32], proof[0]] {
            let mut appended = proof.to_vec();
            appended.push(extra);
            assert!(
                !verify(old_size, new_size, old_root, new_root, &appended),
                "{ctx}: appended"
            );
            let mut prepended = vec![extra];
            prepended.extend_from_slice(proof);
            assert!(
                !verify(old_size, new_size, old_root, new_root, &prepended),
                "{ctx}: prepended"
            );
        }
        // Missing elements.
        if let Some((_, rest)) = proof.split_last() {
            assert!(
                !verify(old_size, new_size, old_root, new_root, rest),
                "{ctx}: truncated"
            );
        }
        if let Some((_, rest)) = proof.split_first() {
            assert!(
                !verify(old_size, new_size, old_root, new_root, rest),
                "{ctx}: front removed"
            );
        }
        // A flipped bit anywhere in any element.
        for i in 0..proof.len() {
            for (byte, bit) in [(0, 4), (13, 1), (31, 7)] {
                let mut bad = proof.to_vec();
                bad[i][byte] ^= 1 << bit;
                assert!(
                    !verify(old_size, new_size, old_root, new_root, &bad),
                    "{ctx}: flip {i}"
                );
            }
        }
    }

    #[test]
    fn consistency_known_answers() {
        let leaves = kat_leaves();
        for (old_size, new_size, expected) in kat_consistency() {
            let tree = &leaves[..new_size as usize];
            let old_root = h(KAT_ROOTS[old_size as usize]);
            let new_root = h(KAT_ROOTS[new_size as usize]);
            let proof = consistency_proof(tree, old_size).expect("in range");
            assert_eq!(proof, expected, "{old_size} -> {new_size}");
            assert!(verify_consistency(
                old_size, new_size, &old_root, &new_root, &proof
            ));
            if !proof.is_empty() {
                assert_consistency_tampering_rejected(
                    old_size, new_size, &old_root, &new_root, &proof,
                );
            }
        }
    }

    #[test]
    fn consistency_proof_shapes_match_transparency_dev() {
        let leaves = test_leaves(95);
        for &(old_size, new_size, ids, rehash) in CONSISTENCY_SHAPES {
            let tree = &leaves[..new_size as usize];
            let expected = shape_hashes(tree, ids, rehash);
            assert_eq!(
                consistency_proof(tree, old_size).expect("in range"),
                expected,
                "{old_size} -> {new_size}"
            );
        }
    }

    #[test]
    fn consistency_proof_rejects_old_size_beyond_tree() {
        let leaves = test_leaves(8);
        assert_eq!(
            consistency_proof(&leaves, 9),
            Err(MerkleError::OldSizeOutOfRange {
                old_size: 9,
                tree_size: 8
            })
        );
        assert!(consistency_proof(&leaves[..0], 5).is_err());
        assert!(consistency_proof(&leaves, u64::MAX).is_err());
        assert_eq!(consistency_proof(&leaves, 0), Ok(vec![]));
        assert_eq!(consistency_proof(&leaves, 8), Ok(vec![]));
    }

    #[test]
    fn verify_consistency_trivial_cases() {
        // After verify_test.go `TestVerifyConsistency`, with the empty tree
        // held to its real root.
        let (r1, r2) = (leaf_hash(b"don't care 1"), leaf_hash(b"don't care 2"));
        assert!(verify_consistency(0, 0, &EMPTY_ROOT, &EMPTY_ROOT, &[]));
        assert!(verify_consistency(0, 1, &EMPTY_ROOT, &r2, &[]));
        assert!(verify_consistency(1, 1, &r2, &r2, &[]));
        assert!(!verify_consistency(0, 1, &r1, &r2, &[]));
        assert!(!verify_consistency(0, 0, &r1, &r2, &[]));
        assert!(!verify_consistency(1, 1, &r1, &r2, &[]));
        assert!(!verify_consistency(1, 0, &r1, &r2, &[]));
        assert!(!verify_consistency(2, 1, &r1, &r2, &[]));
        assert!(!verify_consistency(1, 2, &r1, &r2, &[]));
        assert!(!verify_consistency(0, 0, &EMPTY_ROOT, &r2, &[]));
        assert!(!verify_consistency(1, 1, &EMPTY_ROOT, &r2, &[]));
        let one = [EMPTY_ROOT];
        assert!(!verify_consistency(0, 0, &EMPTY_ROOT, &EMPTY_ROOT, &one));
        assert!(!verify_consistency(0, 1, &EMPTY_ROOT, &EMPTY_ROOT, &one));
        assert!(!verify_consistency(1, 1, &EMPTY_ROOT, &EMPTY_ROOT, &one));
    }

    #[test]
    fn every_consistency_proof_up_to_64_leaves_matches_reference_and_verifies() {
        let leaves = test_leaves(64);
        let roots: Vec<Hash> = (0..=64).map(|n| root(&leaves[..n])).collect();
        for new_size in 1..=64usize {
            let tree = &leaves[..new_size];
            for old_size in 1..=new_size {
                let proof = consistency_proof(tree, old_size as u64).expect("in range");
                let expected = if old_size == new_size {
                    vec![]
                } else {
                    ref_subproof(old_size, tree, true)
                };
                assert_eq!(proof, expected, "{old_size} -> {new_size}");
                let (m, n) = (old_size as u64, new_size as u64);
                assert!(
                    verify_consistency(m, n, &roots[old_size], &roots[new_size], &proof),
                    "{old_size} -> {new_size}"
                );
                if old_size == new_size {
                    continue;
                }
                assert_consistency_tampering_rejected(
                    m,
                    n,
                    &roots[old_size],
                    &roots[new_size],
                    &proof,
                );
                // The proof fails for any other pair of honest roots.
                for other in 1..=64usize {
                    if other != old_size {
                        assert!(
                            !verify_consistency(m, n, &roots[other], &roots[new_size], &proof),
                            "{old_size} -> {new_size} with old root of {other}"
                        );
                    }
                    if other != new_size {
                        assert!(
                            !verify_consistency(m, n, &roots[old_size], &roots[other], &proof),
                            "{old_size} -> {new_size} with new root of {other}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn consistency_from_empty_tree_needs_no_proof() {
        let leaves = test_leaves(10);
        for n in 0..=10 {
            let proof = consistency_proof(&leaves[..n], 0).expect("in range");
            assert!(proof.is_empty());
            assert!(verify_consistency(
                0,
                n as u64,
                &EMPTY_ROOT,
                &root(&leaves[..n]),
                &proof
            ));
        }
    }
}
