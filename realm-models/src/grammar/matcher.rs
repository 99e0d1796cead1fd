//! Matching text against a grammar as it is generated.
//!
//! The matcher's state is a set of pushdown stacks, each a list of
//! element positions whose top is a character class: the ways the text so
//! far can continue. A character moves every stack whose top accepts it
//! to its next element, expanding rule references until each top is a
//! class again; no stack left means the text has left the grammar. An
//! empty stack means the grammar can end here.
//!
//! States are interned and their transitions memoised, so the same
//! (state, character) pair is worked out once: walking the whole
//! vocabulary's trie (see [`Matcher::mask`]) is then mostly table lookups.

use std::collections::HashSet;
use std::sync::Arc;

use realm_core::tokenizer::{FastMap, Tokenizer};

use super::{Elem, Grammar, GrammarError};

/// No stacks: the text has left the grammar.
const DEAD: u32 = 0;

/// Interned states past which the cache is cleared (between tokens).
const MAX_STATES: usize = 1 << 16;
/// Memoised transitions past which the cache is cleared.
const MAX_TRANSITIONS: usize = 1 << 22;
/// Most stacks one character's step may visit: a bound on the work an
/// ambiguous grammar (nested optional repetitions) can ask for, so that a
/// grammar from a request cannot stall the engine.
const MAX_EXPANSION: usize = 1 << 18;

/// UTF-8 sequence length by a byte's top four bits (0: a continuation
/// byte, which cannot begin a character).
const UTF8_LEN: [u8; 16] = [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4];

/// A character begun but not finished at the end of a token: its bits so
/// far and how many continuation bytes it still needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Partial {
    value: u32,
    remain: u8,
}

type Stack = Vec<u32>;

#[derive(Debug, Default)]
struct Cache {
    /// Each state's stacks, sorted.
    sets: Vec<Vec<Stack>>,
    ids: FastMap<Vec<Stack>, u32>,
    next: FastMap<(u32, u32), u32>,
}

impl Cache {
    fn new() -> Self {
        let mut c = Self::default();
        c.intern(Vec::new());
        c
    }

    fn intern(&mut self, mut set: Vec<Stack>) -> u32 {
        set.sort_unstable();
        set.dedup();
        if let Some(&id) = self.ids.get(&set) {
            return id;
        }
        let id = self.sets.len() as u32;
        self.ids.insert(set.clone(), id);
        self.sets.push(set);
        id
    }
}

/// One sequence's progress through a [`Grammar`]: which text may come
/// next, and which tokens (see [`Matcher::mask`]).
#[derive(Debug)]
pub struct Matcher {
    grammar: Arc<Grammar>,
    cache: Cache,
    state: u32,
    partial: Partial,
    /// Scratch for [`Matcher::mask`]: (state, partial) by trie depth.
    levels: Vec<(u32, Partial)>,
    allowed: Vec<bool>,
    /// Set once a step needed more than [`MAX_EXPANSION`] stacks; the
    /// matcher then allows nothing.
    overflow: bool,
}

impl Matcher {
    /// A matcher at the start of `grammar`'s `root` rule.
    pub fn new(grammar: Arc<Grammar>) -> Self {
        let mut m = Self {
            grammar,
            cache: Cache::new(),
            state: DEAD,
            partial: Partial::default(),
            levels: Vec::new(),
            allowed: Vec::new(),
            overflow: false,
        };
        m.state = m.start_state();
        m
    }

    fn start_state(&mut self) -> u32 {
        let g = &self.grammar;
        let mut set = Vec::new();
        let mut budget = MAX_EXPANSION;
        for a in g.alternatives(g.root) {
            let stack = if g.elems[a as usize].ends_sequence() {
                vec![]
            } else {
                vec![a]
            };
            self.overflow |= !advance(g, stack, &mut set, &mut budget);
        }
        self.cache.intern(set)
    }

    /// True when the text so far is a whole sentence of the grammar (it
    /// may still go on): an end-of-generation token is allowed here.
    pub fn is_complete(&self) -> bool {
        !self.overflow
            && self.partial.remain == 0
            && self.cache.sets[self.state as usize]
                .first()
                .is_some_and(Vec::is_empty)
    }

    /// True when the text so far followed by `bytes` is the beginning of a
    /// sentence of the grammar (a character may be left unfinished).
    pub fn accepts(&mut self, bytes: &[u8]) -> bool {
        self.walk(bytes).is_some()
    }

    /// Moves past `bytes`; fails, changing nothing, unless
    /// [`accepts`](Self::accepts) would say yes.
    pub fn accept(&mut self, bytes: &[u8]) -> Result<(), GrammarError> {
        let walked = self.walk(bytes);
        if self.overflow {
            return Err(GrammarError::TooComplex);
        }
        let (state, partial) = walked.ok_or(GrammarError::Rejected)?;
        self.state = state;
        self.partial = partial;
        if self.cache.sets.len() > MAX_STATES || self.cache.next.len() > MAX_TRANSITIONS {
            let set = self.cache.sets[state as usize].clone();
            self.cache = Cache::new();
            self.state = self.cache.intern(set);
        }
        Ok(())
    }

    /// True once the grammar asked for more work in one step than a
    /// matcher allows ([`GrammarError::TooComplex`]): nothing is allowed
    /// after that.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    fn walk(&mut self, bytes: &[u8]) -> Option<(u32, Partial)> {
        if self.overflow {
            return None;
        }
        let (mut s, mut p) = (self.state, self.partial);
        for &b in bytes {
            (s, p) = self.step(s, p, b)?;
        }
        self.can_stop(s, p).then_some((s, p))
    }

    /// True when `token` may come next: an end-of-generation token when the
    /// grammar is complete, another when its piece (control tokens as
    /// their text, as llama.cpp matches them) is accepted. A token with an
    /// empty piece never is.
    pub fn allows_token(&mut self, tokenizer: &Tokenizer, token: u32) -> bool {
        if tokenizer.is_eog(token) {
            return self.is_complete();
        }
        match tokenizer.token_to_piece(token, true) {
            Ok(piece) if piece.first().is_some_and(|&b| b != 0) => self.accepts(piece),
            _ => false,
        }
    }

    /// Moves past `token` (an end-of-generation token changes nothing);
    /// fails, changing nothing, unless [`allows_token`](Self::allows_token).
    pub fn accept_token(&mut self, tokenizer: &Tokenizer, token: u32) -> Result<(), GrammarError> {
        if tokenizer.is_eog(token) {
            return match self.is_complete() {
                true => Ok(()),
                false if self.overflow => Err(GrammarError::TooComplex),
                false => Err(GrammarError::Rejected),
            };
        }
        match tokenizer.token_to_piece(token, true) {
            Ok(piece) if piece.first().is_some_and(|&b| b != 0) => self.accept(piece),
            _ => Err(GrammarError::Rejected),
        }
    }

    /// Sets the logit of every token that may not come next to minus
    /// infinity, walking the tokenizer's piece trie once.
    pub fn mask(&mut self, tokenizer: &Tokenizer, logits: &mut [f32]) {
        let trie = tokenizer.piece_trie();
        let mut allowed = std::mem::take(&mut self.allowed);
        let mut levels = std::mem::take(&mut self.levels);
        allowed.clear();
        allowed.resize(logits.len(), false);
        levels.clear();
        levels.push((self.state, self.partial));
        let mut i = 0;
        while i < trie.len() && !self.overflow {
            levels.truncate(trie.depth(i));
            let (s, p) = levels[levels.len() - 1];
            match self.step(s, p, trie.byte(i)) {
                None => i = trie.subtree_end(i),
                Some((s, p)) => {
                    let ids = trie.tokens(i);
                    if !ids.is_empty() && self.can_stop(s, p) {
                        for &id in ids {
                            if let Some(a) = allowed.get_mut(id as usize) {
                                *a = true;
                            }
                        }
                    }
                    levels.push((s, p));
                    i += 1;
                }
            }
        }
        if self.overflow {
            allowed.fill(false);
        }
        let complete = self.is_complete();
        for &id in tokenizer.eog_ids() {
            if let Some(a) = allowed.get_mut(id as usize) {
                *a = complete;
            }
        }
        for (l, &a) in logits.iter_mut().zip(&allowed) {
            if !a {
                *l = f32::NEG_INFINITY;
            }
        }
        self.allowed = allowed;
        self.levels = levels;
    }

    /// One more byte of text: a state with no stacks, or a byte that cannot
    /// continue valid UTF-8, gives `None`.
    fn step(&mut self, s: u32, p: Partial, b: u8) -> Option<(u32, Partial)> {
        if b == 0 {
            return None;
        }
        let (value, remain) = if p.remain > 0 {
            if b >> 6 != 2 {
                return None;
            }
            ((p.value << 6) | u32::from(b & 0x3f), p.remain - 1)
        } else {
            let len = UTF8_LEN[usize::from(b >> 4)];
            if len == 0 {
                return None;
            }
            (u32::from(b) & ((1u32 << (8 - len)) - 1), len - 1)
        };
        if remain > 0 {
            return Some((s, Partial { value, remain }));
        }
        let next = self.transition(s, value);
        (next != DEAD).then_some((next, Partial::default()))
    }

    /// Whether text may stop at (s, p) and still be a grammar prefix: any
    /// live state; with a character unfinished, one whose class some
    /// ending of that character could match.
    fn can_stop(&self, s: u32, p: Partial) -> bool {
        if s == DEAD {
            return false;
        }
        if p.remain == 0 {
            return true;
        }
        self.cache.sets[s as usize]
            .iter()
            .filter_map(|st| st.last())
            .any(|&top| match_partial(&self.grammar, top, p))
    }

    fn transition(&mut self, s: u32, c: u32) -> u32 {
        if let Some(&t) = self.cache.next.get(&(s, c)) {
            return t;
        }
        if self.overflow {
            return DEAD;
        }
        let g = &self.grammar;
        let mut out = Vec::new();
        let mut budget = MAX_EXPANSION;
        for stack in &self.cache.sets[s as usize] {
            let Some((&top, below)) = stack.split_last() else {
                continue;
            };
            let (ok, after) = match_char(g, top, c);
            if ok {
                let mut next = below.to_vec();
                if !g.elems[after as usize].ends_sequence() {
                    next.push(after);
                }
                if !advance(g, next, &mut out, &mut budget) {
                    self.overflow = true;
                    return DEAD;
                }
            }
        }
        let t = self.cache.intern(out);
        self.cache.next.insert((s, c), t);
        t
    }
}

/// Expands `stack` until every resulting stack's top is a character
/// class (or the stack is empty), adding those to `out`. The grammar has
/// no left recursion, so this ends; `false` when it would visit more
/// stacks than `budget` has left.
fn advance(g: &Grammar, stack: Stack, out: &mut Vec<Stack>, budget: &mut usize) -> bool {
    let mut todo = vec![stack];
    let mut seen: HashSet<Stack> = HashSet::new();
    while let Some(stack) = todo.pop() {
        if !seen.insert(stack.clone()) {
            continue;
        }
        if *budget == 0 {
            return false;
        }
        *budget -= 1;
        let Some((&top, below)) = stack.split_last() else {
            out.push(stack);
            continue;
        };
        let Elem::Rule(rule) = g.elems[top as usize] else {
            out.push(stack);
            continue;
        };
        for a in g.alternatives(rule) {
            let mut next = below.to_vec();
            if !g.elems[top as usize + 1].ends_sequence() {
                next.push(top + 1);
            }
            if !g.elems[a as usize].ends_sequence() {
                next.push(a);
            }
            todo.push(next);
        }
    }
    true
}

/// The value a class element holds (0 for `.`).
fn value(e: Elem) -> u32 {
    match e {
        Elem::Char(v) | Elem::CharNot(v) | Elem::CharAlt(v) => v,
        _ => 0,
    }
}

/// Calls `f(lo, hi)` for each member of the class at `pos` (`.` as the
/// whole range); returns whether the class is positive and the position
/// after it.
fn class(g: &Grammar, mut pos: u32, mut f: impl FnMut(u32, u32)) -> (bool, u32) {
    let positive = !matches!(g.elems[pos as usize], Elem::CharNot(_));
    loop {
        let e = g.elems[pos as usize];
        if e == Elem::Any {
            f(0, u32::MAX);
            pos += 1;
        } else if let Elem::RangeUpper(hi) = g.elems[pos as usize + 1] {
            f(value(e), hi);
            pos += 2;
        } else {
            f(value(e), value(e));
            pos += 1;
        }
        if !matches!(g.elems[pos as usize], Elem::CharAlt(_)) {
            return (positive, pos);
        }
    }
}

/// Whether character `c` matches the class at `pos`, and the position
/// after the class.
fn match_char(g: &Grammar, pos: u32, c: u32) -> (bool, u32) {
    let mut found = false;
    let (positive, after) = class(g, pos, |lo, hi| found |= lo <= c && c <= hi);
    (found == positive, after)
}

/// Whether some completion of the unfinished character `p` could match
/// the class at `pos`, judged as llama.cpp does: a positive class that
/// overlaps the characters `p` can still become, or a negated one that
/// does not overlap them at all.
fn match_partial(g: &Grammar, pos: u32, p: Partial) -> bool {
    let bits = 6 * u32::from(p.remain);
    // One continuation byte after a lead worth under 2: an overlong
    // encoding of a 7-bit character.
    if p.remain == 1 && p.value < 2 {
        return false;
    }
    let mut low = p.value << bits;
    let high = low | ((1u32 << bits) - 1);
    if low == 0 {
        low = match p.remain {
            2 => 1 << 11,
            3 => 1 << 16,
            _ => low,
        };
    }
    let mut overlaps = false;
    let (positive, _) = class(g, pos, |lo, hi| overlaps |= lo <= high && low <= hi);
    overlaps == positive
}
