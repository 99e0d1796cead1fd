//! The vocabulary's pieces as a byte trie laid out in depth-first order,
//! so that a walk over every token is one pass over flat arrays, and a
//! prefix that leads nowhere skips its whole subtree in one jump.

/// A byte trie of token pieces (see [`Tokenizer::piece_trie`]).
///
/// Node `i` stands for the prefix spelled by the bytes on the path to it;
/// nodes come in depth-first order, so a node's subtree is the range
/// `i..subtree_end(i)` and its parent is the last node before it one level
/// up. Tokens with empty pieces are not in it.
///
/// [`Tokenizer::piece_trie`]: super::Tokenizer::piece_trie
///
/// ```
/// use realm_core::tokenizer::PieceTrie;
/// let t = PieceTrie::new([&b"ab"[..], b"a", b"", b"b"]);
/// // nodes: "a" (token 1), "ab" (token 0), "b" (token 3)
/// assert_eq!(t.len(), 3);
/// assert_eq!((t.byte(0), t.depth(0), t.tokens(0)), (b'a', 1, &[1][..]));
/// assert_eq!((t.byte(1), t.depth(1), t.tokens(1)), (b'b', 2, &[0][..]));
/// assert_eq!(t.subtree_end(0), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct PieceTrie {
    bytes: Vec<u8>,
    depths: Vec<u32>,
    ends: Vec<u32>,
    /// Tokens ending at node `i`: `ids[first[i]..first[i + 1]]`.
    first: Vec<u32>,
    ids: Vec<u32>,
}

impl PieceTrie {
    /// The trie of `pieces`, token `i` having the `i`-th.
    pub fn new<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut order: Vec<(&[u8], u32)> = pieces
            .into_iter()
            .zip(0u32..)
            .filter(|(p, _)| !p.is_empty())
            .collect();
        order.sort_unstable();
        let mut t = Self::default();
        // The nodes on the path to the previous piece, by depth - 1.
        let mut path: Vec<u32> = Vec::new();
        let mut prev: &[u8] = &[];
        for &(piece, id) in &order {
            let common = piece.iter().zip(prev).take_while(|(a, b)| a == b).count();
            for &node in &path[common..] {
                t.ends[node as usize] = t.bytes.len() as u32;
            }
            path.truncate(common);
            for (d, &b) in piece.iter().enumerate().skip(common) {
                path.push(t.bytes.len() as u32);
                t.bytes.push(b);
                t.depths.push(d as u32 + 1);
                t.ends.push(0);
                t.first.push(t.ids.len() as u32);
            }
            // Tokens are added in node order, so node i's run of ids ends
            // where the next node's begins.
            t.ids.push(id);
            prev = piece;
        }
        for &node in &path {
            t.ends[node as usize] = t.bytes.len() as u32;
        }
        t.first.push(t.ids.len() as u32);
        t
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when no token has a piece.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The last byte of node `i`'s prefix.
    pub fn byte(&self, i: usize) -> u8 {
        self.bytes[i]
    }

    /// The length of node `i`'s prefix (1 for the nodes under the root).
    pub fn depth(&self, i: usize) -> usize {
        self.depths[i] as usize
    }

    /// The node after node `i`'s subtree.
    pub fn subtree_end(&self, i: usize) -> usize {
        self.ends[i] as usize
    }

    /// The tokens whose piece is exactly node `i`'s prefix.
    pub fn tokens(&self, i: usize) -> &[u32] {
        &self.ids[self.first[i] as usize..self.first[i + 1] as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walking the trie spells every token's piece, each once.
    #[test]
    fn spells_every_piece() {
        let pieces: Vec<&[u8]> = vec![
            b"the",
            b"t",
            b"th",
            b"",
            b"a",
            b"the",
            b"\xe4\xb8",
            b"zz",
            b"ta",
        ];
        let t = PieceTrie::new(pieces.iter().copied());
        let mut seen = vec![None; pieces.len()];
        let mut path: Vec<u8> = Vec::new();
        for i in 0..t.len() {
            path.truncate(t.depth(i) - 1);
            path.push(t.byte(i));
            assert!(t.subtree_end(i) > i && t.subtree_end(i) <= t.len());
            for j in i + 1..t.subtree_end(i) {
                assert!(t.depth(j) > t.depth(i));
            }
            for &id in t.tokens(i) {
                assert!(seen[id as usize].is_none());
                seen[id as usize] = Some(path.clone());
            }
        }
        for (i, p) in pieces.iter().enumerate() {
            let expected = (!p.is_empty()).then(|| p.to_vec());
            assert_eq!(seen[i], expected, "token {i}");
        }
        // The distinct prefixes: a; t th the ta; e4 e4b8; z zz.
        assert_eq!(t.len(), 9);
    }
}
