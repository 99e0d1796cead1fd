//! A chat reply's reasoning, apart from its answer, as llama.cpp's server
//! gives them (`reasoning_content` and `content`): DeepSeek R1's, Qwen 3's
//! and SmolLM3's `<think>` block, Magistral's and Ministral 3's `[THINK]`
//! block, or gpt-oss's harmony channels.
//!
//! [`ReasoningSplitter`] takes the reply as it streams, piece by piece, and
//! hands back what can be told apart already; text that may be the start of
//! a marker waits for the next piece. The pieces put together are the same
//! whatever the reply's division into pieces.
//!
//! ```
//! use realm_models::reasoning::{ReasoningFormat, ReasoningSplitter};
//! let mut s = ReasoningSplitter::new(ReasoningFormat::Think, false);
//! let mut parts = s.push("<think>\nParis is the capital.</thi");
//! parts.append(s.push("nk>\n\nParis."));
//! parts.append(s.finish());
//! assert_eq!(parts.reasoning, "Paris is the capital.");
//! assert_eq!(parts.content, "Paris.");
//! ```

/// How a model marks its reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningFormat {
    /// A `<think>` ... `</think>` block before the answer (DeepSeek R1,
    /// Qwen 3, SmolLM3): its text trimmed is the reasoning, the text after
    /// it (leading whitespace dropped) the answer. A reply that does not
    /// open one is all answer, unless the prompt opened it.
    Think,
    /// The same block between Mistral's `[THINK]` and `[/THINK]`
    /// (Magistral, Ministral 3 Reasoning), control tokens that the reply
    /// must show ([`ReasoningFormat::preserved_tokens`]).
    MistralThink,
    /// OpenAI's harmony messages (gpt-oss): `<|channel|>NAME<|message|>`
    /// ... `<|end|>`, the next one opened by `<|start|>assistant`; the
    /// `analysis` channel's text is the reasoning, every other channel's the
    /// answer but a message to a tool's (its header names a recipient,
    /// `to=functions.NAME`: a call, for [`crate::tools`] to read), which is
    /// neither. The reply must hold the markers' text (special tokens
    /// shown).
    Harmony,
}

impl ReasoningFormat {
    /// The format a chat template writes, if it knows one: harmony when it
    /// writes `<|channel|>`, Mistral's block when it writes `[THINK]`, a
    /// think block when it writes `<think>`.
    pub fn of_template(source: &str) -> Option<Self> {
        if source.contains("<|channel|>") {
            Some(Self::Harmony)
        } else if source.contains("[THINK]") {
            Some(Self::MistralThink)
        } else if source.contains("<think>") || source.contains("</think>") {
            Some(Self::Think)
        } else {
            None
        }
    }

    /// The think block a template's model writes, whether the template
    /// tells one or not (llama.cpp's `deepseek` format): Mistral's where
    /// the template writes `[THINK]`, `<think>` otherwise.
    pub fn block_of_template(source: &str) -> Self {
        match Self::of_template(source) {
            Some(Self::MistralThink) => Self::MistralThink,
            _ => Self::Think,
        }
    }

    /// The markers that open and close a think block in this format
    /// (none for harmony).
    pub fn block(self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Think => Some(("<think>", "</think>")),
            Self::MistralThink => Some(("[THINK]", "[/THINK]")),
            Self::Harmony => None,
        }
    }

    /// Whether `prompt` (a rendered chat, up to its generation prompt)
    /// opens a think block already, so that the reply starts inside it.
    ///
    /// ```
    /// use realm_models::reasoning::ReasoningFormat;
    /// assert!(ReasoningFormat::Think.opened_by("<|im_start|>assistant\n<think>\n"));
    /// assert!(!ReasoningFormat::MistralThink.opened_by("[INST]Hi[/INST]"));
    /// ```
    pub fn opened_by(self, prompt: &str) -> bool {
        self.block()
            .is_some_and(|(open, _)| prompt.trim_end().ends_with(open))
    }

    /// The control tokens a reply in this format must show as text
    /// (generation's preserved tokens): Mistral's markers; the others are
    /// text already or shown by the template's own tokens.
    pub fn preserved_tokens(self) -> &'static [&'static str] {
        match self {
            Self::MistralThink => &["[THINK]", "[/THINK]"],
            Self::Think | Self::Harmony => &[],
        }
    }
}

/// What a piece of a reply adds to its reasoning and to its answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplyParts {
    /// Reasoning text.
    pub reasoning: String,
    /// Answer text.
    pub content: String,
}

impl ReplyParts {
    /// Adds `other`'s text after this one's.
    pub fn append(&mut self, other: ReplyParts) {
        self.reasoning.push_str(&other.reasoning);
        self.content.push_str(&other.content);
    }
}

const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
/// What names a message's recipient in its header.
const RECIPIENT: &str = " to=";
/// The markers that end a harmony message.
const ENDS: [&str; 3] = ["<|end|>", "<|return|>", "<|call|>"];

/// Where a splitter is in the reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Think: before anything but whitespace; whether a block opens.
    Opening,
    /// Think: inside the block.
    Thinking,
    /// Think: the answer (`fresh`: nothing of it out yet, so leading
    /// whitespace is dropped).
    Answer { fresh: bool },
    /// Harmony: a message's header, up to `<|message|>`.
    Header,
    /// Harmony: a message's text, in the reasoning channel or not, or a
    /// call (a message to a tool, `to=functions.NAME` in its header),
    /// which is neither reasoning nor answer.
    Body { analysis: bool, call: bool },
}

/// Splits a reply, as it streams, into reasoning and answer.
#[derive(Debug, Clone)]
pub struct ReasoningSplitter {
    format: ReasoningFormat,
    state: State,
    /// Text not yet placed: a possible marker's start, a header, or the
    /// reasoning's trailing whitespace.
    held: String,
    /// Whether any reasoning is out (its leading whitespace is dropped).
    reasoned: bool,
    /// Markers that end a think block as its close does but stay in the
    /// answer ([`ReasoningSplitter::ended_by`]).
    ends: Vec<&'static str>,
    /// The think block's open and close markers (unused by harmony).
    open: &'static str,
    close: &'static str,
}

impl ReasoningSplitter {
    /// A splitter for a reply in `format`; `thinking`: the prompt opened a
    /// think block already (its template's generation prompt ends with
    /// `<think>`), so the reply starts inside it.
    pub fn new(format: ReasoningFormat, thinking: bool) -> Self {
        let state = match (format.block(), thinking) {
            (Some(_), true) => State::Thinking,
            (Some(_), false) => State::Opening,
            (None, _) => State::Header,
        };
        let (open, close) = format.block().unwrap_or(("", ""));
        Self {
            format,
            state,
            held: String::new(),
            reasoned: false,
            ends: Vec::new(),
            open,
            close,
        }
    }

    /// A think block also ends where one of `markers` begins, the marker
    /// starting the answer: a tool call a model opens without closing its
    /// reasoning (`<tool_call>`, as llama.cpp reads Qwen 3's) is then an
    /// answer's call, not reasoning.
    ///
    /// ```
    /// use realm_models::reasoning::{ReasoningFormat, ReasoningSplitter};
    /// let mut s = ReasoningSplitter::new(ReasoningFormat::Think, false).ended_by(&["<tool_call>"]);
    /// let mut parts = s.push("<think>Need it.\n<tool_call>\n{}");
    /// parts.append(s.finish());
    /// assert_eq!((parts.reasoning.as_str(), parts.content.as_str()), ("Need it.", "<tool_call>\n{}"));
    /// ```
    pub fn ended_by(mut self, markers: &[&'static str]) -> Self {
        self.ends = markers.to_vec();
        self
    }

    /// The format it splits.
    pub fn format(&self) -> ReasoningFormat {
        self.format
    }

    /// Takes the next piece of the reply; returns what is known of it now.
    pub fn push(&mut self, text: &str) -> ReplyParts {
        self.held.push_str(text);
        let mut out = ReplyParts::default();
        while self.step(&mut out, false) {}
        out
    }

    /// The reply has ended: places what was held.
    pub fn finish(&mut self) -> ReplyParts {
        let mut out = ReplyParts::default();
        while self.step(&mut out, true) {}
        out
    }

    /// Places what it can of the held text; whether to go on.
    fn step(&mut self, out: &mut ReplyParts, end: bool) -> bool {
        match self.state.clone() {
            State::Opening => {
                let rest = self.held.trim_start();
                if let Some(after) = rest.strip_prefix(self.open) {
                    self.held = after.to_string();
                    self.state = State::Thinking;
                    true
                } else if !end && self.open.starts_with(rest) {
                    // Whitespace, or the start of `<think>`: wait.
                    false
                } else {
                    self.state = State::Answer { fresh: false };
                    true
                }
            }
            State::Thinking => match self.think_end() {
                Some((at, len)) => {
                    let text = self.held[..at].to_string();
                    self.held.drain(..at + len);
                    self.reason(&text, out, true);
                    self.state = State::Answer { fresh: true };
                    true
                }
                None => {
                    let mut marks = vec![self.close];
                    marks.extend(&self.ends);
                    let keep = if end {
                        0
                    } else {
                        marker_prefix(&self.held, &marks)
                    };
                    let cut = self.held.len() - keep;
                    let text = self.held[..cut].to_string();
                    self.held.drain(..cut);
                    self.reason(&text, out, end);
                    false
                }
            },
            State::Answer { fresh } => {
                let text = std::mem::take(&mut self.held);
                let text = if fresh { text.trim_start() } else { &text };
                if !text.is_empty() {
                    out.content.push_str(text);
                    self.state = State::Answer { fresh: false };
                }
                false
            }
            // A reply that opens no message (nor names a recipient, as
            // one that goes on from `<|start|>assistant` may) is its own
            // answer.
            State::Header
                if !self.held.is_empty()
                    && ["<|", RECIPIENT].iter().all(|m| {
                        !self.held.starts_with(m) && !m.starts_with(self.held.as_str())
                    }) =>
            {
                self.state = State::Body {
                    analysis: false,
                    call: false,
                };
                true
            }
            State::Header => match self.held.find(MESSAGE) {
                Some(at) => {
                    let header = &self.held[..at];
                    let analysis = header
                        .rsplit(CHANNEL)
                        .next()
                        .filter(|_| header.contains(CHANNEL))
                        .is_some_and(|c| {
                            c.split(|ch: char| ch.is_whitespace() || ch == '<')
                                .next()
                                .is_some_and(|name| name == "analysis")
                        });
                    let call = header.contains(RECIPIENT) && !header.contains(" to=assistant");
                    self.held.drain(..at + MESSAGE.len());
                    self.state = State::Body { analysis, call };
                    true
                }
                None if end => {
                    out.content.push_str(&std::mem::take(&mut self.held));
                    false
                }
                None => false,
            },
            State::Body { analysis, call } => {
                let found = ENDS
                    .iter()
                    .filter_map(|m| self.held.find(m).map(|at| (at, m.len())))
                    .min();
                let (cut, next) = match found {
                    Some((at, len)) => (at, Some(at + len)),
                    None if end => (self.held.len(), None),
                    None => (self.held.len() - marker_prefix(&self.held, &ENDS), None),
                };
                let text = &self.held[..cut];
                if call {
                    // A tool's call: read by the tools' parser.
                } else if analysis {
                    out.reasoning.push_str(text);
                } else {
                    out.content.push_str(text);
                }
                self.held.drain(..next.unwrap_or(cut));
                if next.is_some() {
                    self.state = State::Header;
                    return true;
                }
                false
            }
        }
    }

    /// Where the held text's think block ends, and the length of what
    /// ends it that is dropped (the close; none of a marker that stays).
    fn think_end(&self) -> Option<(usize, usize)> {
        let close = self.held.find(self.close).map(|at| (at, self.close.len()));
        let marker = self.ends.iter().filter_map(|m| self.held.find(m)).min();
        match (close, marker) {
            (Some(c), Some(m)) if m < c.0 => Some((m, 0)),
            (None, Some(m)) => Some((m, 0)),
            (c, _) => c,
        }
    }

    /// Puts think-block text out as reasoning: leading whitespace dropped
    /// before any is out, trailing whitespace held until more comes (and
    /// dropped at the block's end, `last`).
    fn reason(&mut self, text: &str, out: &mut ReplyParts, last: bool) {
        let mut text = text;
        if !self.reasoned {
            text = text.trim_start();
        }
        let body = text.trim_end();
        if !body.is_empty() {
            self.reasoned = true;
            out.reasoning.push_str(body);
        }
        if !last {
            // The whitespace after the body waits at the front of `held`.
            let tail = text[body.len()..].to_string();
            self.held.insert_str(0, &tail);
        }
    }
}

/// The length of the longest end of `text` that begins one of `markers`
/// (and so may be one once more text comes).
fn marker_prefix(text: &str, markers: &[&str]) -> usize {
    let mut best = 0;
    for m in markers {
        for (i, _) in m.char_indices().skip(1) {
            if i > best && text.ends_with(&m[..i]) {
                best = i;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts of `reply` fed in pieces of `size` bytes (at char
    /// boundaries), and fed whole.
    fn split(format: ReasoningFormat, thinking: bool, reply: &str, size: usize) -> ReplyParts {
        // (The `<tool_call>` formats' end: inert in replies without one.)
        let mut s = ReasoningSplitter::new(format, thinking).ended_by(&["<tool_call>"]);
        let mut parts = ReplyParts::default();
        let mut piece = String::new();
        for ch in reply.chars() {
            piece.push(ch);
            if piece.len() >= size {
                parts.append(s.push(&piece));
                piece.clear();
            }
        }
        parts.append(s.push(&piece));
        parts.append(s.finish());
        parts
    }

    fn both(format: ReasoningFormat, thinking: bool, reply: &str) -> (String, String) {
        let whole = split(format, thinking, reply, usize::MAX);
        for size in 1..8 {
            assert_eq!(
                split(format, thinking, reply, size),
                whole,
                "{reply:?} by {size}"
            );
        }
        (whole.reasoning, whole.content)
    }

    #[test]
    fn think_blocks() {
        use ReasoningFormat::Think;
        let s = |r: &str, c: &str| (r.to_string(), c.to_string());
        assert_eq!(
            both(Think, false, "<think>\nA b.\n</think>\n\nC."),
            s("A b.", "C.")
        );
        assert_eq!(both(Think, false, "  <think>x</think>y  "), s("x", "y  "));
        assert_eq!(
            both(Think, false, "No block. <think>x</think>"),
            s("", "No block. <think>x</think>")
        );
        // Opened by the prompt.
        assert_eq!(both(Think, true, "x y\n</think>\n\nz"), s("x y", "z"));
        // Cut short: all of it reasoning (or, unopened, answer).
        assert_eq!(both(Think, true, "x </thi"), s("x </thi", ""));
        assert_eq!(both(Think, false, "<think>x  \n"), s("x", ""));
        assert_eq!(both(Think, false, " <thi"), s("", " <thi"));
        assert_eq!(both(Think, false, ""), s("", ""));
        // A call ends the block (opened by the reply or the prompt) and
        // begins the answer; after the block it is the answer's.
        assert_eq!(
            both(Think, false, "<think>Rain?\n<tool_call>\n{}"),
            s("Rain?", "<tool_call>\n{}")
        );
        assert_eq!(both(Think, true, "<tool_call>{}"), s("", "<tool_call>{}"));
        assert_eq!(
            both(Think, false, "<think>a</think><tool_call>"),
            s("a", "<tool_call>")
        );
        // Whitespace inside is kept; a `<` that opens no marker passes.
        assert_eq!(
            both(Think, false, "<think>a \n b <c</think>d"),
            s("a \n b <c", "d")
        );
    }

    #[test]
    fn mistral_think_blocks() {
        use ReasoningFormat::MistralThink;
        let s = |r: &str, c: &str| (r.to_string(), c.to_string());
        assert_eq!(
            both(MistralThink, false, "[THINK]Paris, surely.[/THINK]Paris."),
            s("Paris, surely.", "Paris.")
        );
        // `<think>` is no marker here, nor `[THINK]` in `<think>`'s format.
        assert_eq!(
            both(MistralThink, false, "<think>a</think>b"),
            s("", "<think>a</think>b")
        );
        assert_eq!(
            ReasoningFormat::Think.block(),
            Some(("<think>", "</think>"))
        );
        assert_eq!(both(MistralThink, true, "x [/THIN"), s("x [/THIN", ""));
        assert_eq!(
            both(MistralThink, false, "[THINK]a[/THINK][TOOL_CALLS]f[ARGS]{}"),
            s("a", "[TOOL_CALLS]f[ARGS]{}")
        );
    }

    #[test]
    fn harmony_channels() {
        use ReasoningFormat::Harmony;
        let s = |r: &str, c: &str| (r.to_string(), c.to_string());
        let reply = "<|channel|>analysis<|message|>User asks. Answer: Paris.<|end|>\
                     <|start|>assistant<|channel|>final<|message|>Paris.";
        assert_eq!(
            both(Harmony, false, reply),
            s("User asks. Answer: Paris.", "Paris.")
        );
        // A call (a recipient, a constraint in the header) is neither.
        let call = "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|call|>";
        assert_eq!(both(Harmony, false, call), s("", ""));
        let call = "<|channel|>analysis<|message|>Look up.<|end|><|start|>assistant to=functions.f\
                    <|channel|>commentary json<|message|>{}<|end|><|start|>assistant\
                    <|channel|>commentary to=assistant<|message|>Done.<|end|>";
        assert_eq!(both(Harmony, false, call), s("Look up.", "Done."));
        // The recipient first, going on from `<|start|>assistant`.
        let call = " to=functions.f<|channel|>commentary json<|message|>{}";
        assert_eq!(both(Harmony, false, call), s("", ""));
        assert_eq!(both(Harmony, false, " top"), s("", " top"));
        // No header at all: the answer.
        assert_eq!(
            both(Harmony, false, "Just text <| here"),
            s("", "Just text <| here")
        );
        // Cut short in a header.
        assert_eq!(
            both(Harmony, false, "<|channel|>anal"),
            s("", "<|channel|>anal")
        );
    }

    #[test]
    fn formats_from_templates() {
        assert_eq!(
            ReasoningFormat::of_template("{{ '<|start|>assistant<|channel|>final' }}"),
            Some(ReasoningFormat::Harmony)
        );
        assert_eq!(
            ReasoningFormat::of_template("{% if t %}<think>\n{% endif %}"),
            Some(ReasoningFormat::Think)
        );
        assert_eq!(ReasoningFormat::of_template("{{ m.content }}"), None);
        let ministral = "{{ '[THINK]' + block['thinking'] + '[/THINK]' }}";
        assert_eq!(
            ReasoningFormat::of_template(ministral),
            Some(ReasoningFormat::MistralThink)
        );
        assert_eq!(
            ReasoningFormat::block_of_template(ministral),
            ReasoningFormat::MistralThink
        );
        assert_eq!(
            ReasoningFormat::block_of_template("{{ m.content }}"),
            ReasoningFormat::Think
        );
    }
}
