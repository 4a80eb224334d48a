//! GitLab's CI variable-expression language (`rules:if`, `only:variables`, `workflow:rules`).
//!
//! Grammar, loosest binding first: `||`, then `&&`, then the comparisons `==`, `!=`, `=~`, `!~`,
//! then `!` and operands. Operands are `$VAR`, string literals in double or single quotes (no
//! escapes, as in GitLab), `null`, `/regex/flags` and parenthesised groups. A whole expression is
//! true when its value is "present": a non-empty string, `true`, or a matching comparison. An
//! undefined variable is `null`, so `$UNDEFINED == null` holds and `$UNDEFINED == ""` does not.
//!
//! Regexes follow GitLab (RE2 with Ruby's `^`/`$` meaning start and end of a *line*): flags are
//! `i` (case-insensitive), `m` (dot matches newline, Ruby's meaning) and `x`. A variable on the
//! right of `=~` whose value looks like `/…/flags` is used as a regex. This module does no
//! variable expansion inside strings: GitLab does none either.

use std::fmt;

use regex::{Regex, RegexBuilder};

/// A parsed expression.
#[derive(Clone, Debug)]
pub struct Expr {
    root: Node,
}

#[derive(Clone, Debug)]
enum Node {
    Var(String),
    Str(String),
    Null,
    Regex(Pattern),
    Not(Box<Node>),
    Cmp(Box<Node>, CmpOp, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Match,
    NoMatch,
}

#[derive(Clone, Debug)]
struct Pattern {
    source: String,
    regex: Regex,
}

/// An expression syntax error: what was wrong and at which character (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at character {}", self.message, self.column)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Var(String),
    Str(String),
    Null,
    Regex(String),
    Eq,
    Ne,
    Match,
    NoMatch,
    And,
    Or,
    Not,
    LParen,
    RParen,
}

/// Compiles `/pattern/flags` (GitLab's Ruby-like syntax) into a regex.
pub(crate) fn compile_regex(literal: &str) -> Result<Regex, String> {
    let body = literal
        .strip_prefix('/')
        .ok_or_else(|| "a regex must start with `/`".to_owned())?;
    let end = body
        .rfind('/')
        .ok_or_else(|| "a regex must end with `/`".to_owned())?;
    let (pattern, flags) = (&body[..end], &body[end + 1..]);
    let mut builder = RegexBuilder::new(pattern);
    builder.multi_line(true);
    for flag in flags.chars() {
        match flag {
            'i' => builder.case_insensitive(true),
            'm' => builder.dot_matches_new_line(true),
            'x' => builder.ignore_whitespace(true),
            other => return Err(format!("unsupported regex flag `{other}`")),
        };
    }
    builder.build().map_err(|e| {
        // The regex crate's message draws the pattern over several lines; keep its last one.
        let detail = e.to_string();
        let last = detail.lines().last().unwrap_or_default();
        let last = last.strip_prefix("error: ").unwrap_or(last);
        format!("invalid regex `{literal}`: {last}")
    })
}

fn lex(input: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let chars: Vec<(usize, char)> = input.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |at: usize, message: &str| ExprError {
        column: at + 1,
        message: message.to_owned(),
    };
    while i < chars.len() {
        let (_, c) = chars[i];
        let col = i;
        let next = chars.get(i + 1).map(|&(_, c)| c);
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                i += 1;
                continue;
            }
            '$' => {
                let mut j = i + 1;
                let braced = chars.get(j).map(|&(_, c)| c) == Some('{');
                if braced {
                    j += 1;
                }
                let start = j;
                while j < chars.len() && (chars[j].1.is_alphanumeric() || chars[j].1 == '_') {
                    j += 1;
                }
                if j == start {
                    return Err(err(col, "`$` must be followed by a variable name"));
                }
                let name: String = chars[start..j].iter().map(|&(_, c)| c).collect();
                if braced {
                    if chars.get(j).map(|&(_, c)| c) != Some('}') {
                        return Err(err(col, "unclosed `${`"));
                    }
                    j += 1;
                }
                out.push((Tok::Var(name), col));
                i = j;
            }
            '"' | '\'' => {
                let mut j = i + 1;
                while j < chars.len() && chars[j].1 != c {
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(err(col, "unterminated string"));
                }
                let s: String = chars[i + 1..j].iter().map(|&(_, c)| c).collect();
                out.push((Tok::Str(s), col));
                i = j + 1;
            }
            '/' => {
                let mut j = i + 1;
                while j < chars.len() && chars[j].1 != '/' {
                    if chars[j].1 == '\\' {
                        j += 1;
                    }
                    j += 1;
                }
                if j >= chars.len() {
                    return Err(err(col, "unterminated regex"));
                }
                j += 1;
                while j < chars.len() && chars[j].1.is_ascii_alphabetic() {
                    j += 1;
                }
                let s: String = chars[i..j].iter().map(|&(_, c)| c).collect();
                out.push((Tok::Regex(s), col));
                i = j;
            }
            '=' if next == Some('=') => {
                out.push((Tok::Eq, col));
                i += 2;
            }
            '=' if next == Some('~') => {
                out.push((Tok::Match, col));
                i += 2;
            }
            '!' if next == Some('=') => {
                out.push((Tok::Ne, col));
                i += 2;
            }
            '!' if next == Some('~') => {
                out.push((Tok::NoMatch, col));
                i += 2;
            }
            '!' => {
                out.push((Tok::Not, col));
                i += 1;
            }
            '&' if next == Some('&') => {
                out.push((Tok::And, col));
                i += 2;
            }
            '|' if next == Some('|') => {
                out.push((Tok::Or, col));
                i += 2;
            }
            '(' => {
                out.push((Tok::LParen, col));
                i += 1;
            }
            ')' => {
                out.push((Tok::RParen, col));
                i += 1;
            }
            _ if input[chars[i].0..].starts_with("null")
                && !chars
                    .get(i + 4)
                    .is_some_and(|&(_, c)| c.is_alphanumeric() || c == '_') =>
            {
                out.push((Tok::Null, col));
                i += 4;
            }
            _ => return Err(err(col, &format!("unexpected `{c}`"))),
        }
    }
    Ok(out)
}

/// More tokens than this make an expression nobody writes by hand (and a deep tree to walk).
const MAX_TOKENS: usize = 1000;
/// Parentheses and `!` nested deeper than this are refused (the parser recurses on them).
const MAX_NESTING: usize = 50;

struct ParseState {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    len: usize,
    depth: usize,
}

impl ParseState {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn column(&self) -> usize {
        self.toks
            .get(self.pos)
            .map_or(self.len + 1, |&(_, c)| c + 1)
    }

    fn error(&self, message: &str) -> ExprError {
        ExprError {
            column: self.column(),
            message: message.to_owned(),
        }
    }

    fn or(&mut self) -> Result<Node, ExprError> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            let right = self.and()?;
            left = Node::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, ExprError> {
        let mut left = self.cmp()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            let right = self.cmp()?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn cmp(&mut self) -> Result<Node, ExprError> {
        let left = self.unary()?;
        let op = match self.peek() {
            Some(Tok::Eq) => CmpOp::Eq,
            Some(Tok::Ne) => CmpOp::Ne,
            Some(Tok::Match) => CmpOp::Match,
            Some(Tok::NoMatch) => CmpOp::NoMatch,
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.unary()?;
        if matches!(op, CmpOp::Match | CmpOp::NoMatch)
            && !matches!(right, Node::Regex(_) | Node::Var(_))
        {
            return Err(ExprError {
                column: self
                    .toks
                    .get(self.pos - 1)
                    .map_or(self.len + 1, |&(_, c)| c + 1),
                message: "the right side of `=~`/`!~` must be a /regex/ or a variable".to_owned(),
            });
        }
        Ok(Node::Cmp(Box::new(left), op, Box::new(right)))
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        let Some((tok, col)) = self.toks.get(self.pos).cloned() else {
            return Err(self.error("expected a value"));
        };
        self.pos += 1;
        Ok(match tok {
            Tok::Var(name) => Node::Var(name),
            Tok::Str(s) => Node::Str(s),
            Tok::Null => Node::Null,
            Tok::Regex(source) => {
                let regex = compile_regex(&source).map_err(|message| ExprError {
                    column: col + 1,
                    message,
                })?;
                Node::Regex(Pattern { source, regex })
            }
            Tok::Not | Tok::LParen if self.depth >= MAX_NESTING => {
                return Err(ExprError {
                    column: col + 1,
                    message: format!(
                        "parentheses and `!` are nested more than {MAX_NESTING} levels deep"
                    ),
                });
            }
            Tok::Not => {
                self.depth += 1;
                let inner = self.unary()?;
                self.depth -= 1;
                Node::Not(Box::new(inner))
            }
            Tok::LParen => {
                self.depth += 1;
                let inner = self.or()?;
                self.depth -= 1;
                if self.peek() != Some(&Tok::RParen) {
                    return Err(self.error("expected `)`"));
                }
                self.pos += 1;
                inner
            }
            _ => {
                self.pos -= 1;
                return Err(self.error("expected a value"));
            }
        })
    }
}

/// A value during evaluation.
#[derive(Debug)]
enum Val<'a> {
    Null,
    Str(std::borrow::Cow<'a, str>),
    Bool(bool),
    Regex(&'a Regex),
}

impl Val<'_> {
    fn present(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Str(s) => !s.is_empty(),
            Val::Bool(b) => *b,
            Val::Regex(_) => true,
        }
    }

    fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Val::Null => None,
            Val::Str(s) => Some(std::borrow::Cow::Borrowed(s)),
            Val::Bool(b) => Some(std::borrow::Cow::Owned(b.to_string())),
            Val::Regex(r) => Some(std::borrow::Cow::Borrowed(r.as_str())),
        }
    }
}

impl Expr {
    /// Parses an expression.
    pub fn parse(input: &str) -> Result<Self, ExprError> {
        let toks = lex(input)?;
        if toks.is_empty() {
            return Err(ExprError {
                column: 1,
                message: "empty expression".to_owned(),
            });
        }
        if toks.len() > MAX_TOKENS {
            return Err(ExprError {
                column: toks[MAX_TOKENS].1 + 1,
                message: format!("the expression has more than {MAX_TOKENS} tokens"),
            });
        }
        let mut state = ParseState {
            toks,
            pos: 0,
            len: input.chars().count(),
            depth: 0,
        };
        let root = state.or()?;
        if state.pos < state.toks.len() {
            return Err(state.error("unexpected token"));
        }
        Ok(Self { root })
    }

    /// Evaluates with `lookup` giving each variable's (already expanded) value.
    pub fn evaluate(&self, lookup: &dyn Fn(&str) -> Option<String>) -> bool {
        eval(&self.root, lookup).present()
    }
}

fn eval<'a>(node: &'a Node, lookup: &dyn Fn(&str) -> Option<String>) -> Val<'a> {
    match node {
        Node::Var(name) => match lookup(name) {
            Some(v) => Val::Str(std::borrow::Cow::Owned(v)),
            None => Val::Null,
        },
        Node::Str(s) => Val::Str(std::borrow::Cow::Borrowed(s)),
        Node::Null => Val::Null,
        Node::Regex(p) => Val::Regex(&p.regex),
        Node::Not(inner) => Val::Bool(!eval(inner, lookup).present()),
        Node::And(a, b) => {
            let left = eval(a, lookup);
            if left.present() {
                eval(b, lookup)
            } else {
                left
            }
        }
        Node::Or(a, b) => {
            let left = eval(a, lookup);
            if left.present() {
                left
            } else {
                eval(b, lookup)
            }
        }
        Node::Cmp(a, op, b) => {
            let left = eval(a, lookup);
            let right = eval(b, lookup);
            match op {
                CmpOp::Eq => Val::Bool(left.text() == right.text()),
                CmpOp::Ne => Val::Bool(left.text() != right.text()),
                CmpOp::Match | CmpOp::NoMatch => {
                    let regex = match right {
                        Val::Regex(r) => Some(std::borrow::Cow::Borrowed(r)),
                        Val::Str(s) => compile_regex(&s).ok().map(std::borrow::Cow::Owned),
                        _ => None,
                    };
                    let matched = match (left.text(), regex) {
                        (Some(text), Some(regex)) => regex.is_match(&text),
                        _ => false,
                    };
                    Val::Bool(if *op == CmpOp::Match {
                        matched
                    } else {
                        !matched
                    })
                }
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn show(node: &Node, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match node {
                Node::Var(n) => write!(f, "${n}"),
                Node::Str(s) => write!(f, "{s:?}"),
                Node::Null => f.write_str("null"),
                Node::Regex(p) => f.write_str(&p.source),
                Node::Not(n) => {
                    f.write_str("!")?;
                    show(n, f)
                }
                Node::Cmp(a, op, b) => {
                    f.write_str("(")?;
                    show(a, f)?;
                    let op = match op {
                        CmpOp::Eq => "==",
                        CmpOp::Ne => "!=",
                        CmpOp::Match => "=~",
                        CmpOp::NoMatch => "!~",
                    };
                    write!(f, " {op} ")?;
                    show(b, f)?;
                    f.write_str(")")
                }
                Node::And(a, b) | Node::Or(a, b) => {
                    f.write_str("(")?;
                    show(a, f)?;
                    f.write_str(if matches!(node, Node::And(..)) {
                        " && "
                    } else {
                        " || "
                    })?;
                    show(b, f)?;
                    f.write_str(")")
                }
            }
        }
        show(&self.root, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(expr: &str, vars: &[(&str, &str)]) -> bool {
        let parsed = Expr::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        parsed.evaluate(&|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn table() {
        let vars = [
            ("BRANCH", "main"),
            ("EMPTY", ""),
            ("TAG", "v1.2.3"),
            ("T", "t"),
            ("RE", "/^ma/"),
            ("RE_I", "/^MA/i"),
            ("COPY", "main"),
            ("MSG", "hello world"),
        ];
        let cases: &[(&str, bool)] = &[
            ("$BRANCH", true),
            ("$EMPTY", false),
            ("$NOPE", false),
            ("$BRANCH == \"main\"", true),
            ("$BRANCH == 'main'", true),
            ("$BRANCH != \"main\"", false),
            ("\"main\" == $BRANCH", true),
            ("$NOPE == null", true),
            ("$EMPTY == null", false),
            ("$EMPTY == \"\"", true),
            ("$NOPE == \"\"", false),
            ("$BRANCH != null", true),
            ("null == null", true),
            ("$TAG =~ /^v\\d+\\.\\d+/", true),
            ("$TAG !~ /^v\\d+\\.\\d+/", false),
            ("$BRANCH =~ /MAIN/", false),
            ("$BRANCH =~ /MAIN/i", true),
            ("$NOPE =~ /.*/", false),
            ("$NOPE !~ /.*/", true),
            ("$BRANCH =~ $RE", true),
            ("$TAG =~ $RE", false),
            // && binds tighter than ||
            ("$NOPE && $BRANCH == \"x\" || $T", true),
            ("$T || $BRANCH == \"x\" && $NOPE", true),
            ("$NOPE && ($BRANCH == \"x\" || $T)", false),
            (
                "($BRANCH == \"main\" || $BRANCH == \"dev\") && $TAG =~ /^v/",
                true,
            ),
            ("$BRANCH == \"main\" && $EMPTY", false),
            ("!$NOPE", true),
            ("!$BRANCH", false),
            ("${BRANCH} == \"main\"", true),
            // Variables on both sides, and patterns (with flags) held in variables.
            ("$BRANCH == $COPY", true),
            ("$BRANCH != $TAG", true),
            ("$BRANCH == $NOPE", false),
            ("$BRANCH =~ $RE_I", true),
            ("$TAG !~ $RE", true),
            // Unanchored patterns match anywhere; escaped dots are literal.
            ("$TAG =~ /2\\.3/", true),
            ("$TAG =~ /1\\.3/", false),
            // An unset variable is null, not "".
            ("$NOPE != \"\"", true),
            ("$EMPTY != null", true),
            // Spaces inside strings, chains and nesting.
            ("$MSG == \"hello world\"", true),
            ("$MSG == 'hello world' && $T", true),
            ("$NOPE || $EMPTY || $T", true),
            ("$NOPE || $EMPTY || $MISSING", false),
            ("((($T)))", true),
            ("($NOPE || ($T && ($BRANCH == \"main\")))", true),
        ];
        for (expr, want) in cases {
            assert_eq!(check(expr, &vars), *want, "{expr}");
        }
    }

    #[test]
    fn precedence_shows_in_display() {
        let e = Expr::parse("$A == \"1\" || $B && $C =~ /x/").expect("parse");
        assert_eq!(e.to_string(), "(($A == \"1\") || ($B && ($C =~ /x/)))");
    }

    #[test]
    fn multiline_anchors_like_ruby() {
        assert!(check("$M =~ /^two$/", &[("M", "one\ntwo\nthree")]));
        assert!(!check("$M =~ /one.two/", &[("M", "one\ntwo")]));
        assert!(check("$M =~ /one.two/m", &[("M", "one\ntwo")]));
    }

    #[test]
    fn syntax_errors_name_the_column() {
        let cases = [
            ("$A ==", "expected a value at character 6"),
            ("$A == \"x", "unterminated string at character 7"),
            ("($A", "expected `)` at character 4"),
            ("$A = \"x\"", "unexpected `=` at character 4"),
            (
                "$A =~ \"x\"",
                "the right side of `=~`/`!~` must be a /regex/ or a variable at character 7",
            ),
            ("$A =~ /x/q", "unsupported regex flag `q` at character 7"),
            ("$A $B", "unexpected token at character 4"),
            ("", "empty expression at character 1"),
        ];
        for (expr, want) in cases {
            let got = Expr::parse(expr).map(|_| ()).map_err(|e| e.to_string());
            assert_eq!(got, Err(want.to_owned()), "{expr}");
        }
    }
}
