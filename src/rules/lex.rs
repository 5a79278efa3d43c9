//! Rule text -> tokens: words, punctuation and line ends, each with its 1-based line and column
//! (in characters, a tab counting as one).
//!
//! This module owns how the text is cut: `#` starts a comment, `,` `{` `}` stand alone, `!`
//! stands alone at the start of a word, and every line ends with a `Newline` token so the
//! statement machine (`syntax.rs`) can report "end of line" places. It never decides what a
//! word means (that is `keywords.rs` and `syntax.rs`), never fails and never panics: any text
//! is some list of tokens.

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tok {
    Word(String),
    Comma,
    Open,
    Close,
    Bang,
    Newline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) line: usize,
    pub(super) col: usize,
}

impl Token {
    /// The column just after this token.
    pub(super) fn end_col(&self) -> usize {
        match &self.tok {
            Tok::Word(w) => self.col + w.chars().count(),
            _ => self.col + 1,
        }
    }

    pub(super) fn describe(&self) -> String {
        match &self.tok {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Comma => "','".to_string(),
            Tok::Open => "'{'".to_string(),
            Tok::Close => "'}'".to_string(),
            Tok::Bang => "'!'".to_string(),
            Tok::Newline => "end of line".to_string(),
        }
    }
}

/// Split text into tokens. `#` starts a comment; `,`, `{`, `}` stand alone; `!` stands alone at
/// the start of a word (`!dport` is `!` `dport`). Every line ends with a `Newline` token.
pub(super) fn lex(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let mut word = String::new();
        let mut word_col = 0;
        let flush = |word: &mut String, word_col: usize, out: &mut Vec<Token>| {
            if !word.is_empty() {
                out.push(Token {
                    tok: Tok::Word(std::mem::take(word)),
                    line: line_no,
                    col: word_col,
                });
            }
        };
        let mut width = 0;
        for (i, ch) in line.chars().enumerate() {
            let col = i + 1;
            width = col;
            let single = match ch {
                '#' => break,
                ',' => Some(Tok::Comma),
                '{' => Some(Tok::Open),
                '}' => Some(Tok::Close),
                '!' if word.is_empty() => Some(Tok::Bang),
                c if c.is_whitespace() => {
                    flush(&mut word, word_col, &mut out);
                    continue;
                }
                c => {
                    if word.is_empty() {
                        word_col = col;
                    }
                    word.push(c);
                    continue;
                }
            };
            flush(&mut word, word_col, &mut out);
            if let Some(tok) = single {
                out.push(Token {
                    tok,
                    line: line_no,
                    col,
                });
            }
        }
        flush(&mut word, word_col, &mut out);
        let end = line.chars().count().max(width) + 1;
        out.push(Token {
            tok: Tok::Newline,
            line: line_no,
            col: end,
        });
    }
    out
}

// ------------------------------------------------------------------------------------------------

/// Index of the `Newline` that ends the line holding `toks[i]` (or `toks.len()`).
pub(super) fn line_end(toks: &[Token], i: usize) -> usize {
    toks.iter()
        .skip(i)
        .position(|t| t.tok == Tok::Newline)
        .map_or(toks.len(), |p| p + i)
}
