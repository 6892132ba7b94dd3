//! Lossless edits of YAML text: the value of one scalar is replaced where it
//! stands, or one `key: value` line is added to or removed from a block
//! mapping, and every other character of the file (comments, order, quoting,
//! indentation, blank lines, `---` separators, block scalars) is left as it
//! was. The diff of an edit is the changed value only.
//!
//! The text is parsed once into a small tree of nodes that keep their
//! character positions; edits are splices at those positions, applied from
//! the end of the text backwards, and the result is parsed again so that an
//! edit which would not read back as intended is refused, never written.

use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle};

/// A YAML node with the character positions of its text.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// A scalar; `start..end` covers its token, quotes included.
    Scalar {
        /// The value as YAML reads it.
        value: String,
        /// How it is written.
        style: ScalarStyle,
        /// First character of its token.
        start: usize,
        /// One past the last character of its token.
        end: usize,
        /// Its column (for a key: the mapping's indentation).
        col: usize,
    },
    /// A mapping, in the order written.
    Map {
        /// `key: value` pairs.
        entries: Vec<(Node, Node)>,
        /// Written `{...}` rather than as indented lines.
        flow: bool,
    },
    /// A sequence.
    Seq {
        /// Its items.
        items: Vec<Node>,
    },
    /// An alias, or anything freshen does not edit through.
    Other,
}

impl Node {
    /// The value under `key`, when this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map { entries, .. } => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value of a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// The value at a dotted path of mapping keys.
    pub fn at(&self, path: &[String]) -> Option<&Node> {
        path.iter().try_fold(self, |node, key| node.get(key))
    }
}

/// Why a YAML edit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YamlError {
    /// The text is not YAML.
    Syntax(String),
    /// The value is written in a form freshen does not rewrite.
    Unsupported(String),
    /// The edited text would not read back as intended.
    Verify(String),
}

impl fmt::Display for YamlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(e) => write!(f, "not valid YAML: {e}"),
            Self::Unsupported(e) => write!(f, "{e}"),
            Self::Verify(e) => write!(f, "the edit would not read back: {e}"),
        }
    }
}

impl std::error::Error for YamlError {}

/// Parses every document of `text`.
pub fn documents(text: &str) -> Result<Vec<Node>, YamlError> {
    let chars: Vec<char> = text.chars().collect();
    let mut docs = Vec::new();
    // Open containers: a mapping's entries are pushed as flat nodes and
    // paired when it closes.
    let mut stack: Vec<(bool, Vec<Node>, bool)> = Vec::new();
    let mut finished: Option<Node> = None;
    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| YamlError::Syntax(e.to_string()))?;
        let node = match event {
            Event::MappingStart(..) => {
                let flow = chars.get(span.start.index()) == Some(&'{');
                stack.push((true, Vec::new(), flow));
                continue;
            }
            Event::SequenceStart(..) => {
                stack.push((false, Vec::new(), false));
                continue;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let Some((is_map, nodes, flow)) = stack.pop() else {
                    return Err(YamlError::Syntax("unbalanced collection".into()));
                };
                if is_map {
                    let mut entries = Vec::with_capacity(nodes.len() / 2);
                    let mut it = nodes.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        entries.push((k, v));
                    }
                    Node::Map { entries, flow }
                } else {
                    Node::Seq { items: nodes }
                }
            }
            Event::Scalar(value, style, ..) => {
                let start = span.start.index();
                let end = token_end(&chars, start, span.end.index(), style);
                Node::Scalar {
                    value: value.into_owned(),
                    style,
                    start,
                    end,
                    col: span.start.col(),
                }
            }
            Event::Alias(_) => Node::Other,
            Event::DocumentEnd => {
                docs.push(finished.take().unwrap_or(Node::Other));
                continue;
            }
            _ => continue,
        };
        match stack.last_mut() {
            Some((_, nodes, _)) => nodes.push(node),
            None => finished = Some(node),
        }
    }
    Ok(docs)
}

/// Where a scalar's token really ends: the parser's span of a quoted scalar
/// runs on over trailing blanks and comments.
fn token_end(chars: &[char], start: usize, end: usize, style: ScalarStyle) -> usize {
    let quote = match style {
        ScalarStyle::SingleQuoted => '\'',
        ScalarStyle::DoubleQuoted => '"',
        _ => {
            let mut e = end.min(chars.len());
            while e > start && chars[e - 1].is_whitespace() {
                e -= 1;
            }
            return e;
        }
    };
    let mut i = start + 1;
    while i < chars.len() {
        match chars[i] {
            '\\' if quote == '"' => i += 2,
            '\'' if quote == '\'' && chars.get(i + 1) == Some(&'\'') => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    end
}

/// One change to the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Splice {
    /// Replace the token of a scalar with a new value, in its own style.
    Set {
        /// The scalar node (a [`Node::Scalar`]).
        start: usize,
        /// One past its token.
        end: usize,
        /// How it is written, kept.
        style: ScalarStyleKind,
        /// The new value.
        value: String,
    },
    /// Add `key: value` to a block mapping, after its last entry and at the
    /// indentation of its keys.
    Insert {
        /// One past the last character of the mapping's last value.
        after: usize,
        /// The keys' column.
        col: usize,
        /// The key.
        key: String,
        /// The value (written plain).
        value: String,
    },
    /// Remove the line that holds a block mapping's `key: value`.
    RemoveLine {
        /// Any character on that line (its key's first).
        at: usize,
    },
}

/// A scalar's style, as this module writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarStyleKind {
    /// `value`
    Plain,
    /// `'value'`
    Single,
    /// `"value"`
    Double,
}

impl Splice {
    /// The splice that sets the scalar `node` to `value`, keeping its style.
    pub fn set(node: &Node, value: &str) -> Result<Self, YamlError> {
        let Node::Scalar {
            style, start, end, ..
        } = node
        else {
            return Err(YamlError::Unsupported(
                "the value to change is not a single scalar".into(),
            ));
        };
        let style = match style {
            ScalarStyle::Plain => ScalarStyleKind::Plain,
            ScalarStyle::SingleQuoted => ScalarStyleKind::Single,
            ScalarStyle::DoubleQuoted => ScalarStyleKind::Double,
            _ => {
                return Err(YamlError::Unsupported(
                    "the value is a block scalar (| or >); write it on one line".into(),
                ));
            }
        };
        Ok(Self::Set {
            start: *start,
            end: *end,
            style,
            value: value.to_owned(),
        })
    }

    fn at(&self) -> usize {
        match self {
            Self::Set { start, .. } => *start,
            Self::Insert { after, .. } => *after,
            Self::RemoveLine { at } => *at,
        }
    }
}

/// The text of a scalar in `style`; refuses values that would need another
/// style (only image references and digests are written here).
fn written(style: ScalarStyleKind, value: &str) -> Result<String, YamlError> {
    let safe = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@+".contains(c));
    if !safe {
        return Err(YamlError::Unsupported(format!(
            "{value:?} is not an image reference, tag or digest"
        )));
    }
    Ok(match style {
        ScalarStyleKind::Plain => value.to_owned(),
        ScalarStyleKind::Single => format!("'{value}'"),
        ScalarStyleKind::Double => format!("\"{value}\""),
    })
}

/// Applies `splices` to `text`; each is placed by the positions `documents`
/// gave, so all come from one parse of `text`.
pub fn apply(text: &str, mut splices: Vec<Splice>) -> Result<String, YamlError> {
    // Character positions to byte offsets.
    let offsets: Vec<usize> = text
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect();
    let byte = |c: usize| offsets.get(c).copied().unwrap_or(text.len());
    splices.sort_by_key(|s| std::cmp::Reverse(s.at()));
    let mut out = text.to_owned();
    for s in splices {
        match s {
            Splice::Set {
                start,
                end,
                style,
                value,
            } => out.replace_range(byte(start)..byte(end), &written(style, &value)?),
            Splice::Insert {
                after,
                col,
                key,
                value,
            } => {
                let from = byte(after);
                let eol = out[from..].find('\n').map_or(out.len(), |i| from + i);
                let line = format!(
                    "\n{}{key}: {}",
                    " ".repeat(col),
                    written(ScalarStyleKind::Plain, &value)?
                );
                out.insert_str(eol, &line);
            }
            Splice::RemoveLine { at } => {
                let at = byte(at);
                let bol = out[..at].rfind('\n').map_or(0, |i| i + 1);
                let eol = out[at..].find('\n').map_or(out.len(), |i| at + i + 1);
                out.replace_range(bol..eol, "");
            }
        }
    }
    documents(&out)?;
    Ok(out)
}

/// The end of a mapping's last value (where a new entry goes after), and
/// its keys' column; `None` for a flow or empty mapping.
pub fn append_point(map: &Node) -> Option<(usize, usize)> {
    let Node::Map {
        entries,
        flow: false,
    } = map
    else {
        return None;
    };
    let (Node::Scalar { col, .. }, _) = entries.first()? else {
        return None;
    };
    let last = last_position(&entries.last()?.1).or_else(|| match &entries.last()?.0 {
        Node::Scalar { end, .. } => Some(*end),
        _ => None,
    })?;
    Some((last, *col))
}

/// One past the last character of any scalar inside `node`.
fn last_position(node: &Node) -> Option<usize> {
    match node {
        Node::Scalar { end, .. } => Some(*end),
        Node::Map { entries, .. } => entries
            .iter()
            .filter_map(|(k, v)| last_position(v).or_else(|| last_position(k)))
            .max(),
        Node::Seq { items } => items.iter().filter_map(last_position).max(),
        Node::Other => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar<'a>(doc: &'a Node, path: &[&str]) -> &'a Node {
        let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
        doc.at(&path).unwrap_or(&Node::Other)
    }

    #[test]
    fn quoted_scalars_end_at_their_closing_quote() {
        let text = "a: 'it''s'  # c\nb: \"x\\\"y\" # d\nc: plain   # e\n";
        let docs = documents(text).unwrap_or_default();
        for (key, token) in [("a", "'it''s'"), ("b", "\"x\\\"y\""), ("c", "plain")] {
            let Node::Scalar { start, end, .. } = scalar(&docs[0], &[key]) else {
                panic!("{key} is not a scalar");
            };
            let got: String = text.chars().skip(*start).take(end - start).collect();
            assert_eq!(got, token);
        }
    }

    #[test]
    fn a_set_keeps_the_style_and_everything_around_it() {
        let text = "# head\na:\n  b: 'old'   # why\n\n  c: keep\n---\nx: y\n";
        let docs = documents(text).unwrap_or_default();
        assert_eq!(docs.len(), 2);
        let splice = Splice::set(scalar(&docs[0], &["a", "b"]), "new:1")
            .unwrap_or(Splice::RemoveLine { at: 0 });
        let out = apply(text, vec![splice]).unwrap_or_default();
        assert_eq!(
            out,
            "# head\na:\n  b: 'new:1'   # why\n\n  c: keep\n---\nx: y\n"
        );
    }

    #[test]
    fn an_insert_lands_after_the_last_entry_at_its_indentation() {
        let text = "images:\n  - name: app # the app\n    newTag: v1\nother: 1\n";
        let docs = documents(text).unwrap_or_default();
        let Some(Node::Seq { items }) = docs[0].get("images") else {
            panic!("no images");
        };
        let (after, col) = append_point(&items[0]).unwrap_or_default();
        let out = apply(
            text,
            vec![Splice::Insert {
                after,
                col,
                key: "digest".into(),
                value: "sha256:ab".into(),
            }],
        )
        .unwrap_or_default();
        assert_eq!(
            out,
            "images:\n  - name: app # the app\n    newTag: v1\n    digest: sha256:ab\nother: 1\n"
        );
    }

    #[test]
    fn block_scalars_flow_maps_and_odd_values_are_refused() {
        let docs = documents("a: |\n  x\nb: {c: d}\n").unwrap_or_default();
        assert!(matches!(
            Splice::set(scalar(&docs[0], &["a"]), "v"),
            Err(YamlError::Unsupported(_))
        ));
        assert_eq!(append_point(docs[0].get("b").unwrap_or(&Node::Other)), None);
        let splice = Splice::set(scalar(&docs[0], &["b", "c"]), "x: y")
            .unwrap_or(Splice::RemoveLine { at: 0 });
        assert!(apply("a: |\n  x\nb: {c: d}\n", vec![splice]).is_err());
        assert!(matches!(documents("a: [\n"), Err(YamlError::Syntax(_))));
    }
}
