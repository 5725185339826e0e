//! The fields of a text log line, written as `tracing-subscriber`'s default writes them, at less
//! cost, and with every field's value escaped as the default escapes only the message.
//!
//! The default escapes the message one character at a time, so that escape sequences in it cannot
//! reach an operator's terminal, and writes each field's name through a style even when the line
//! has none. With four transition lines per synthetic submit, those two were two fifths of the
//! transition log's thread at 64 connections (docs/BENCHMARKS.md, "The transition log's fields and
//! time"). Here a piece of text that holds nothing to escape is written whole, and names are
//! written with the default's styles only when the line has colours.
//!
//! The default writes a `%` field's value as it is: an agent's error or an operator's reason
//! holding an escape sequence would reach the terminal of whoever reads the log. Here values are
//! escaped like the message; a line with nothing to escape is the default's, byte for byte.

use std::fmt::{self, Write};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// The text format's fields.
#[derive(Debug, Default)]
pub struct Fields;

impl<'a> MakeVisitor<Writer<'a>> for Fields {
    type Visitor = FieldsVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        FieldsVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

pub struct FieldsVisitor<'a> {
    writer: Writer<'a>,
    /// No field written yet: the next is not preceded by a space.
    is_empty: bool,
    result: fmt::Result,
}

/// A field's name in a line with colours, as the default styles it: italic, then a dimmed `=`.
const ITALIC: &str = "\x1b[3m";
const DIMMED_EQUALS: &str = "\x1b[2m=\x1b[0m";
const RESET: &str = "\x1b[0m";

impl FieldsVisitor<'_> {
    fn pad(&mut self) {
        if self.is_empty {
            self.is_empty = false;
        } else {
            self.result = self.writer.write_char(' ');
        }
    }

    /// `value`'s `Debug`, escaped when the writer sanitizes (it does unless told otherwise).
    fn value(&mut self, value: &dyn fmt::Debug) -> fmt::Result {
        if self.writer.sanitizes_ansi_escapes() {
            write!(Escaping(&mut self.writer), "{value:?}")
        } else {
            write!(self.writer, "{value:?}")
        }
    }
}

impl Visit for FieldsVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"))
        } else {
            self.record_debug(field, &value)
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.result.is_err() {
            return;
        }
        // Rare, and with a list of sources of its own: the default writes it (escaped).
        let mut v = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        v.record_error(field, value);
        self.result = v.finish();
        self.is_empty &= skipped(field.name());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || skipped(field.name()) {
            return;
        }
        self.pad();
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        self.result = if name == "message" {
            self.value(value)
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            let named = if self.writer.has_ansi_escapes() {
                write!(self.writer, "{ITALIC}{name}{RESET}{DIMMED_EQUALS}")
            } else {
                write!(self.writer, "{name}=")
            };
            named.and_then(|()| self.value(value))
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
        self.result
    }
}

impl VisitFmt for FieldsVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
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
    use tracing_subscriber::fmt::format::DefaultFields;

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

    /// What `events` log through a text subscriber with `fields` (with or without colours).
    fn logged<N>(fields: N, ansi: bool, events: fn()) -> String
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
        tracing::subscriber::with_default(subscriber, events);
        let bytes = buffer.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// A terminal's controls and C1 characters, among text that needs no escaping.
    const HOSTILE: &str =
        "a\x1b[31mred\x07bell\x08bs\x0cff\x7fdel\u{9b}csi\u{85}nel\u{a0}nbsp é 🙂";
    /// [`HOSTILE`] as the default escapes a message.
    const ESCAPED: &str =
        "a\\x1b[31mred\\x07bell\\x08bs\\x0cff\\x7fdel\\u{9b}csi\\u{85}nel\u{a0}nbsp é 🙂";

    /// Lines of many shapes with nothing to escape in their fields' values.
    fn ordinary() {
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
        // `?` and plain string fields are escaped by `Debug` already; the message by the writer.
        tracing::warn!(debug = ?HOSTILE, plain = HOSTILE, "goal {HOSTILE} refused");
        tracing::warn!("{}", HOSTILE);
        tracing::info!(
            count = 3_i64,
            big = 18_446_744_073_709_551_615_u64,
            yes = true,
            ratio = 0.5,
            r#type = "t",
            unicode = %"é → 🙂\u{a0}",
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
    }

    /// A line whose `%` fields hold a terminal's controls.
    fn hostile() {
        tracing::warn!(reason = %HOSTILE, by = %"root", "gate override recorded");
    }

    /// Whatever a line holds, plain or coloured, when its fields' values have nothing to escape it
    /// is the default's line to the byte: the message's terminal controls escaped, fields and
    /// errors as the default writes them.
    #[test]
    fn lines_with_nothing_to_escape_in_their_values_are_the_defaults_byte_for_byte() {
        for ansi in [false, true] {
            let ours = logged(Fields, ansi, ordinary);
            let theirs = logged(DefaultFields::new(), ansi, ordinary);
            assert_eq!(ours, theirs, "ansi: {ansi}");
            assert_eq!(ours.lines().count(), 10, "{ours}");
        }
        let plain = logged(Fields, false, ordinary);
        assert!(
            plain.contains(
                "task 01M94NFRRS4G4PAADE9C33KWZP route: queued → assigned by dispatcher \
                 TASK_ID=01M94NFRRS4G4PAADE9C33KWZP ACTION=route FROM=\"queued\" TO=assigned \
                 ACTOR=dispatcher MODE=synthetic\n"
            ),
            "{plain}"
        );
        assert!(
            plain.contains(&format!("goal {ESCAPED} refused")),
            "{plain}"
        );
        assert!(!plain.contains('\x1b'), "{plain}");
    }

    /// A `%` field's terminal controls are escaped as the message's are, where the default writes
    /// them as they are; the rest of the line is the default's.
    #[test]
    fn a_display_fields_terminal_controls_are_escaped() {
        for ansi in [false, true] {
            let ours = logged(Fields, ansi, hostile);
            let theirs = logged(DefaultFields::new(), ansi, hostile);
            assert!(theirs.contains(HOSTILE), "{theirs}");
            assert_eq!(ours, theirs.replace(HOSTILE, ESCAPED), "ansi: {ansi}");
        }
        let plain = logged(Fields, false, hostile);
        assert!(
            plain.ends_with(&format!(
                "gate override recorded reason={ESCAPED} by=root\n"
            )),
            "{plain}"
        );
    }
}
