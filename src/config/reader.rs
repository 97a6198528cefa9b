//! Span-aware reading of a parsed TOML document: typed getters that record an error (with
//! file, line, column and field path) instead of failing, and that reject unknown fields.
//! Runs on the main thread while a config is loaded; a `Sink` owns the errors of one load.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{ArrayOfTables, InlineTable, Item, Table, Value};

use super::units::{parse_duration, parse_size};
use super::ConfigError;

/// Collects every error of one load, translating byte offsets into lines and columns.
pub(crate) struct Sink<'t> {
    file: PathBuf,
    text: &'t str,
    line_starts: Vec<usize>,
    pub(crate) errors: Vec<ConfigError>,
}

impl<'t> Sink<'t> {
    pub(crate) fn new(file: &Path, text: &'t str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Sink {
            file: file.to_path_buf(),
            text,
            line_starts,
            errors: Vec::new(),
        }
    }

    /// 1-based line and column (in characters) of byte offset `at`.
    fn position(&self, at: usize) -> (usize, usize) {
        let at = at.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= at).max(1);
        let start = self.line_starts.get(line - 1).copied().unwrap_or(0);
        let column = self
            .text
            .get(start..at)
            .map_or(at - start, |s| s.chars().count())
            + 1;
        (line, column)
    }

    /// 1-based line of byte offset `at`.
    pub(crate) fn line_of(&self, at: usize) -> usize {
        self.position(at).0
    }

    /// Records `message` at byte offset `at`.
    pub(crate) fn error(&mut self, at: usize, message: impl Into<String>) {
        let (line, column) = self.position(at);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            message: message.into(),
        });
    }
}

/// One TOML node, whichever way it was written.
#[derive(Clone, Copy)]
pub(crate) enum Node<'a> {
    Value(&'a Value),
    Table(&'a Table),
    Tables(&'a ArrayOfTables),
}

impl<'a> Node<'a> {
    fn from_item(item: &'a Item) -> Option<Node<'a>> {
        match item {
            Item::None => None,
            Item::Value(v) => Some(Node::Value(v)),
            Item::Table(t) => Some(Node::Table(t)),
            Item::ArrayOfTables(a) => Some(Node::Tables(a)),
        }
    }

    fn start(&self) -> Option<usize> {
        let span = match self {
            Node::Value(v) => v.span(),
            Node::Table(t) => t.span(),
            Node::Tables(a) => a.span(),
        };
        span.map(|s| s.start)
    }

    /// "a string", "an integer", ... for "expected X, found Y" messages.
    fn kind(&self) -> &'static str {
        match self {
            Node::Value(Value::String(_)) => "a string",
            Node::Value(Value::Integer(_)) => "an integer",
            Node::Value(Value::Float(_)) => "a float",
            Node::Value(Value::Boolean(_)) => "a boolean",
            Node::Value(Value::Datetime(_)) => "a datetime",
            Node::Value(Value::Array(_)) => "an array",
            Node::Value(Value::InlineTable(_)) | Node::Table(_) => "a table",
            Node::Tables(_) => "an array of tables",
        }
    }
}

/// Whether a getter records an error when its field is absent.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Required,
    Optional,
}
pub(crate) use Need::{Optional as OPT, Required as REQ};

struct Field<'a> {
    key: &'a str,
    key_at: Option<usize>,
    node: Node<'a>,
    taken: bool,
}

/// A table being read: its fields, which of them were read, and the prefix its messages
/// carry ("listener 'web'"). `finish` reports the fields nobody asked for.
pub(crate) struct Obj<'a> {
    pub(crate) ctx: String,
    pub(crate) at: usize,
    fields: Vec<Field<'a>>,
    asked: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    pub(crate) fn from_table(t: &'a Table, ctx: String, fallback_at: usize) -> Obj<'a> {
        let fields = t
            .iter()
            .filter_map(|(k, item)| {
                let key_at = t
                    .get_key_value(k)
                    .and_then(|(key, _)| key.span())
                    .map(|s| s.start);
                Some(Field {
                    key: k,
                    key_at,
                    node: Node::from_item(item)?,
                    taken: false,
                })
            })
            .collect();
        let at = t.span().map_or(fallback_at, |s| s.start);
        Obj {
            ctx,
            at,
            fields,
            asked: Vec::new(),
        }
    }

    fn from_inline(t: &'a InlineTable, ctx: String, fallback_at: usize) -> Obj<'a> {
        let fields = t
            .iter()
            .map(|(k, v)| Field {
                key: k,
                key_at: t
                    .get_key_value(k)
                    .and_then(|(key, _)| key.span())
                    .map(|s| s.start),
                node: Node::Value(v),
                taken: false,
            })
            .collect();
        let at = t.span().map_or(fallback_at, |s| s.start);
        Obj {
            ctx,
            at,
            fields,
            asked: Vec::new(),
        }
    }

    /// Reads `node` as a table (standard or inline), or records "expected a table".
    pub(crate) fn from_node(
        s: &mut Sink,
        node: Node<'a>,
        ctx: String,
        at: usize,
    ) -> Option<Obj<'a>> {
        match node {
            Node::Table(t) => Some(Obj::from_table(t, ctx, at)),
            Node::Value(Value::InlineTable(t)) => Some(Obj::from_inline(t, ctx, at)),
            other => {
                s.error(
                    at,
                    format!("{ctx}: expected a table, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// Records an error about field `key` at `at`: "{ctx}: {key}: {msg}".
    pub(crate) fn err(&self, s: &mut Sink, at: usize, key: &str, msg: impl std::fmt::Display) {
        s.error(at, format!("{}: {msg}", self.child(key)));
    }

    /// Records an error about the whole table, at its start.
    pub(crate) fn err_here(&self, s: &mut Sink, msg: impl std::fmt::Display) {
        s.error(self.at, format!("{}{msg}", self.prefix()));
    }

    /// The context of field `key`: "listener 'web': limits", or just "runtime" at the root.
    pub(crate) fn child(&self, key: &str) -> String {
        format!("{}{key}", self.prefix())
    }

    /// "ctx: ", or nothing at the root (whose ctx is empty).
    fn prefix(&self) -> String {
        if self.ctx.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.ctx)
        }
    }

    /// Where field `key` is, when present (does not mark it read).
    pub(crate) fn key_at(&self, key: &str) -> Option<usize> {
        let f = self.fields.iter().find(|f| f.key == key)?;
        Some(f.key_at.or(f.node.start()).unwrap_or(self.at))
    }

    /// True when `key` is present (does not mark it read).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.fields.iter().any(|f| f.key == key)
    }

    /// Takes field `key`, returning its node and the offset of its value.
    pub(crate) fn take(
        &mut self,
        s: &mut Sink,
        key: &'static str,
        need: Need,
    ) -> Option<(Node<'a>, usize)> {
        self.asked.push(key);
        let table_at = self.at;
        match self.fields.iter_mut().find(|f| f.key == key) {
            Some(f) => {
                f.taken = true;
                let at = f.node.start().or(f.key_at).unwrap_or(table_at);
                Some((f.node, at))
            }
            None => {
                if need == REQ {
                    s.error(
                        self.at,
                        format!("{}missing required field `{key}`", self.prefix()),
                    );
                }
                None
            }
        }
    }

    fn wrong(&self, s: &mut Sink, at: usize, key: &str, expected: &str, node: Node) {
        self.err(
            s,
            at,
            key,
            format!("expected {expected}, found {}", node.kind()),
        );
    }

    pub(crate) fn string(
        &mut self,
        s: &mut Sink,
        key: &'static str,
        need: Need,
    ) -> Option<(String, usize)> {
        let (node, at) = self.take(s, key, need)?;
        match node {
            Node::Value(Value::String(v)) => Some((v.value().clone(), at)),
            other => {
                self.wrong(s, at, key, "a string", other);
                None
            }
        }
    }

    /// A string that must not be empty.
    pub(crate) fn text(
        &mut self,
        s: &mut Sink,
        key: &'static str,
        need: Need,
    ) -> Option<(String, usize)> {
        let (v, at) = self.string(s, key, need)?;
        if v.trim().is_empty() {
            self.err(s, at, key, "must not be empty");
            return None;
        }
        Some((v, at))
    }

    pub(crate) fn bool(&mut self, s: &mut Sink, key: &'static str, need: Need) -> Option<bool> {
        let (node, at) = self.take(s, key, need)?;
        match node {
            Node::Value(Value::Boolean(v)) => Some(*v.value()),
            other => {
                self.wrong(s, at, key, "true or false", other);
                None
            }
        }
    }

    /// An integer within `range`, converted to `T`.
    pub(crate) fn int<T: TryFrom<i64>>(
        &mut self,
        s: &mut Sink,
        key: &'static str,
        need: Need,
        range: RangeInclusive<i64>,
    ) -> Option<(T, usize)> {
        let (node, at) = self.take(s, key, need)?;
        let Node::Value(Value::Integer(v)) = node else {
            self.wrong(s, at, key, "an integer", node);
            return None;
        };
        let n = *v.value();
        if !range.contains(&n) {
            let msg = format!("{n} is out of range {}..={}", range.start(), range.end());
            self.err(s, at, key, msg);
            return None;
        }
        match T::try_from(n) {
            Ok(t) => Some((t, at)),
            Err(_) => {
                self.err(s, at, key, format!("{n} is out of range"));
                None
            }
        }
    }

    /// A duration string ("5s"); zero is refused unless `allow_zero`.
    pub(crate) fn duration(
        &mut self,
        s: &mut Sink,
        key: &'static str,
        need: Need,
        allow_zero: bool,
    ) -> Option<(Duration, usize)> {
        let (node, at) = self.take(s, key, need)?;
        let Node::Value(Value::String(v)) = node else {
            let msg = format!(
                "expected a duration string like \"5s\" or \"250ms\", found {}",
                node.kind()
            );
            self.err(s, at, key, msg);
            return None;
        };
        match parse_duration(v.value().trim()) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.err(s, at, key, "must be greater than zero");
                None
            }
            Ok(d) => Some((d, at)),
            Err(e) => {
                self.err(s, at, key, e);
                None
            }
        }
    }

    /// A size: a bare integer of bytes or a string like "16KiB", within `range`.
    pub(crate) fn size(
        &mut self,
        s: &mut Sink,
        key: &'static str,
        need: Need,
        range: RangeInclusive<u64>,
    ) -> Option<(u64, usize)> {
        let (node, at) = self.take(s, key, need)?;
        let n = match node {
            Node::Value(Value::String(v)) => parse_size(v.value().trim()),
            Node::Value(Value::Integer(v)) => u64::try_from(*v.value())
                .map_err(|_| format!("size {} must not be negative", v.value())),
            other => Err(format!(
                "expected a size like \"16KiB\" or a number of bytes, found {}",
                other.kind()
            )),
        };
        match n {
            Ok(n) if range.contains(&n) => Some((n, at)),
            Ok(n) => {
                let msg = format!(
                    "{n} bytes is out of range {}..={} bytes",
                    range.start(),
                    range.end()
                );
                self.err(s, at, key, msg);
                None
            }
            Err(e) => {
                self.err(s, at, key, e);
                None
            }
        }
    }

    /// A string naming one of `choices`.
    pub(crate) fn choice<T: Copy>(
        &mut self,
        s: &mut Sink,
        key: &'static str,
        need: Need,
        choices: &[(&str, T)],
    ) -> Option<(T, usize)> {
        let (v, at) = self.string(s, key, need)?;
        if let Some(&(_, t)) = choices.iter().find(|(name, _)| *name == v) {
            return Some((t, at));
        }
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        let msg = format!("expected one of {}, found \"{v}\"", names.join(", "));
        self.err(s, at, key, msg);
        None
    }

    /// An array's elements with their offsets, and the array's own offset.
    pub(crate) fn array(
        &mut self,
        s: &mut Sink,
        key: &'static str,
        need: Need,
    ) -> Option<(Vec<(&'a Value, usize)>, usize)> {
        let (node, at) = self.take(s, key, need)?;
        let Node::Value(Value::Array(a)) = node else {
            self.wrong(s, at, key, "an array", node);
            return None;
        };
        let items = a
            .iter()
            .map(|v| (v, v.span().map_or(at, |r| r.start)))
            .collect();
        Some((items, at))
    }

    /// An array of strings; elements of another type are reported and skipped.
    pub(crate) fn strings(
        &mut self,
        s: &mut Sink,
        key: &'static str,
        need: Need,
    ) -> Option<Vec<(String, usize)>> {
        let (items, _) = self.array(s, key, need)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, (v, at)) in items.into_iter().enumerate() {
            match v {
                Value::String(sv) => out.push((sv.value().clone(), at)),
                other => {
                    let msg = format!("expected a string, found {}", Node::Value(other).kind());
                    self.err(s, at, &format!("{key}[{i}]"), msg);
                }
            }
        }
        Some(out)
    }

    /// An inline table of string values: `{ name = "value" }`, as (key, value, offset).
    pub(crate) fn string_map(
        &mut self,
        s: &mut Sink,
        key: &'static str,
        need: Need,
    ) -> Option<Vec<(String, String, usize)>> {
        let (node, at) = self.take(s, key, need)?;
        let ctx = self.child(key);
        let mut obj = Obj::from_node(s, node, ctx, at)?;
        let mut out = Vec::new();
        for f in &mut obj.fields {
            f.taken = true;
            let at = f.node.start().or(f.key_at).unwrap_or(at);
            match f.node {
                Node::Value(Value::String(v)) => {
                    out.push((f.key.to_string(), v.value().clone(), at))
                }
                other => s.error(
                    at,
                    format!(
                        "{}: {}: expected a string, found {}",
                        obj.ctx,
                        f.key,
                        other.kind()
                    ),
                ),
            }
        }
        Some(out)
    }

    /// A sub-table (standard `[a.b]` or inline `b = { .. }`).
    pub(crate) fn sub(&mut self, s: &mut Sink, key: &'static str, need: Need) -> Option<Obj<'a>> {
        let (node, at) = self.take(s, key, need)?;
        let ctx = self.child(key);
        Obj::from_node(s, node, ctx, at)
    }

    /// Reports every field that no getter asked for, with the list of known ones.
    pub(crate) fn finish(&self, s: &mut Sink) {
        for f in self.fields.iter().filter(|f| !f.taken) {
            let at = f.key_at.or(f.node.start()).unwrap_or(self.at);
            let mut known: Vec<&str> = Vec::new();
            for k in &self.asked {
                if !known.contains(k) {
                    known.push(k);
                }
            }
            let msg = if known.is_empty() {
                format!("{}unknown field `{}`", self.prefix(), f.key)
            } else {
                format!(
                    "{}unknown field `{}`; expected one of: {}",
                    self.prefix(),
                    f.key,
                    known.join(", ")
                )
            };
            s.error(at, msg);
        }
    }
}

/// The tables of an array of tables (`[[x]]`) or of an inline array of inline tables, each
/// with its offset; anything else is reported.
pub(crate) fn table_list<'a>(
    s: &mut Sink,
    node: Node<'a>,
    name: &str,
    at: usize,
) -> Vec<(Node<'a>, usize)> {
    match node {
        Node::Tables(a) => a
            .iter()
            .map(|t| (Node::Table(t), t.span().map_or(at, |r| r.start)))
            .collect(),
        Node::Value(Value::Array(a)) => a
            .iter()
            .map(|v| (Node::Value(v), v.span().map_or(at, |r| r.start)))
            .collect(),
        other => {
            s.error(
                at,
                format!(
                    "{name}: expected an array of tables (write [[{name}]] before each one), found {}",
                    other.kind()
                ),
            );
            Vec::new()
        }
    }
}
