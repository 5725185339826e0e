//! The fields of a text log line, written as `tracing-subscriber`'s default writes them, byte for
//! byte, at less cost.
//!
//! The default escapes the message one character at a time, so that escape sequences in it cannot
//! reach an operator's terminal, and writes each field's name through a style even when the line
//! has none. With four transition lines per synthetic submit, those two were two fifths of the
//! transition log's thread at 64 connections (docs/BENCHMARKS.md, "The transition log's fields and
//! time"). Here a piece of the message that holds nothing to escape is written whole, and names are
//! written as they are. Lines with colours (a terminal), and error fields, are left to the default
//! itself.

use std::fmt::{self, Write};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};

/// The text format's fields: [`DefaultFields`]' output, written faster.
#[derive(Debug, Default)]
pub struct Fields;

impl<'a> MakeVisitor<Writer<'a>> for Fields {
    type Visitor = FieldsVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        if target.has_ansi_escapes() {
            FieldsVisitor::Styled(DefaultFields::new().make_visitor(target))
        } else {
            FieldsVisitor::Plain(Plain {
                writer: target,
                is_empty: true,
                result: Ok(()),
            })
        }
    }
}

/// Lines with styles are the default's; plain lines are written here.
pub enum FieldsVisitor<'a> {
    Styled(DefaultVisitor<'a>),
    Plain(Plain<'a>),
}

pub struct Plain<'a> {
    writer: Writer<'a>,
    /// No field written yet: the next is not preceded by a space.
    is_empty: bool,
    result: fmt::Result,
}

impl Plain<'_> {
    fn pad(&mut self) {
        if self.is_empty {
            self.is_empty = false;
        } else {
            self.result = self.writer.write_char(' ');
        }
    }
}

impl Visit for FieldsVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match self {
            FieldsVisitor::Styled(v) => v.record_str(field, value),
            FieldsVisitor::Plain(_) if field.name() == "message" => {
                self.record_debug(field, &format_args!("{value}"))
            }
            FieldsVisitor::Plain(_) => self.record_debug(field, &value),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        match self {
            FieldsVisitor::Styled(v) => v.record_error(field, value),
            FieldsVisitor::Plain(p) => {
                if p.result.is_err() {
                    return;
                }
                // Rare, and with a list of sources of its own: the default writes it.
                let mut v = DefaultVisitor::new(p.writer.by_ref(), p.is_empty);
                v.record_error(field, value);
                p.result = v.finish();
                p.is_empty &= skipped(field.name());
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let p = match self {
            FieldsVisitor::Styled(v) => return v.record_debug(field, value),
            FieldsVisitor::Plain(p) => p,
        };
        if p.result.is_err() || skipped(field.name()) {
            return;
        }
        p.pad();
        if p.result.is_err() {
            return;
        }
        p.result = match field.name() {
            "message" if p.writer.sanitizes_ansi_escapes() => {
                write!(Escaping(&mut p.writer), "{value:?}")
            }
            "message" => write!(p.writer, "{value:?}"),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                write!(p.writer, "{name}={value:?}")
            }
        };
    }
}

/// Fields the default leaves out: the metadata of records bridged from the `log` crate, which the
/// line already shows.
fn skipped(name: &str) -> bool {
    name.starts_with("log.")
}

impl VisitOutput<fmt::Result> for FieldsVisitor<'_> {
    fn finish(self) -> fmt::Result {
        match self {
            FieldsVisitor::Styled(v) => v.finish(),
            FieldsVisitor::Plain(p) => p.result,
        }
    }
}

impl VisitFmt for FieldsVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        match self {
            FieldsVisitor::Styled(v) => v.writer(),
            FieldsVisitor::Plain(p) => &mut p.writer,
        }
    }
}

/// Writes what it is given with the characters a terminal could act on escaped, as the default's
/// message is: ESC, BEL, BS, FF and DEL as `\x1b` and so on, and the C1 controls (U+0080–U+009F)
/// as `\u{9b}` and so on.
struct Escaping<'w, 'a>(&'w mut Writer<'a>);

impl Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Every character escaped below has one of these bytes (the C1 controls are 0xC2 0x80–0x9F
        // in UTF-8).
        if !s
            .bytes()
            .any(|b| matches!(b, 0x07 | 0x08 | 0x0c | 0x1b | 0x7f | 0xc2))
        {
            return self.0.write_str(s);
        }
        for ch in s.chars() {
            match ch {
                '\x1b' => self.0.write_str("\\x1b")?,
                '\x07' => self.0.write_str("\\x07")?,
                '\x08' => self.0.write_str("\\x08")?,
                '\x0c' => self.0.write_str("\\x0c")?,
                '\x7f' => self.0.write_str("\\x7f")?,
                '\u{80}'..='\u{9f}' => write!(self.0, "\\u{{{:x}}}", ch as u32)?,
                _ => self.0.write_char(ch)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[derive(Debug)]
    struct Failure(&'static str, Option<Box<Failure>>);

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Failure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    /// Lines of many shapes, as logged through a text subscriber with `fields` (with or without
    /// colours).
    fn lines<N>(fields: N, ansi: bool) -> String
    where
        N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static,
    {
        let buffer = Buffer::default();
        let out = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .without_time()
            .with_writer(move || out.clone())
            .fmt_fields(fields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let (id, action, from, to, actor) = (
                "01M94NFRRS4G4PAADE9C33KWZP",
                "route",
                Some("queued"),
                "assigned",
                "dispatcher",
            );
            tracing::info!(
                TASK_ID = %id,
                ACTION = %action,
                FROM = from,
                TO = %to,
                ACTOR = %actor,
                MODE = %"synthetic",
                "task {} {}: {} → {} by {}",
                id,
                action,
                from.unwrap_or("(new)"),
                to,
                actor,
            );
            let none: Option<&str> = None;
            tracing::info!(FROM = none, TO = %to, "task {id} submit: (new) → {to}");
            let hostile =
                "a\x1b[31mred\x07bell\x08bs\x0cff\x7fdel\u{9b}csi\u{85}nel\u{a0}nbsp é 🙂";
            tracing::warn!(goal = %hostile, debug = ?hostile, plain = hostile, "goal {hostile} refused");
            tracing::warn!("{}", hostile);
            tracing::info!(
                count = 3_i64,
                big = 18_446_744_073_709_551_615_u64,
                yes = true,
                ratio = 0.5,
                r#type = "t",
                "counted"
            );
            tracing::info!(only = "fields", n = -1_i64);
            let err = Failure(
                "outer \x1b[2J",
                Some(Box::new(Failure("inner\u{9b}", None))),
            );
            tracing::error!(error = &err as &(dyn std::error::Error + 'static), "failed");
            tracing::error!(
                before = 1_i64,
                error = &Failure("alone", None) as &(dyn std::error::Error + 'static),
                "failed again"
            );
            tracing::info!(message = "a message given as a field\x1b", after = %"x");
            tracing::info!("");
        });
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// Whatever a line holds, plain or coloured, it is the default's line to the byte: the
    /// message's terminal controls escaped, fields and errors as the default writes them.
    #[test]
    fn lines_are_the_defaults_byte_for_byte() {
        for ansi in [false, true] {
            let ours = lines(Fields, ansi);
            let theirs = lines(DefaultFields::new(), ansi);
            assert_eq!(ours, theirs, "ansi: {ansi}");
            assert_eq!(ours.lines().count(), 10, "{ours}");
        }
        let plain = lines(Fields, false);
        assert!(
            plain.contains(
                "task 01M94NFRRS4G4PAADE9C33KWZP route: queued → assigned by dispatcher \
                 TASK_ID=01M94NFRRS4G4PAADE9C33KWZP ACTION=route FROM=\"queued\" TO=assigned \
                 ACTOR=dispatcher MODE=synthetic\n"
            ),
            "{plain}"
        );
        assert!(
            plain.contains(
                "goal a\\x1b[31mred\\x07bell\\x08bs\\x0cff\\x7fdel\\u{9b}csi\\u{85}nel\u{a0}nbsp é 🙂 refused"
            ),
            "{plain}"
        );
        assert!(!plain.contains("goal a\x1b"), "{plain}");
    }
}
