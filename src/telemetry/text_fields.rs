//! Fields of text log lines, written so that no value can pass for another field or another line: control
//! characters and line separators are escaped everywhere (a newline in a request field cannot start a line of its own), and a
//! value holding whitespace, `=`, `"` or `\` is written quoted and escaped (a key named `a outcome=ok` cannot
//! add an `outcome` field). Plain values (ids, codes, numbers) stay unquoted and easy to read.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    field::RecordFields,
    fmt::{FormatFields, format::Writer},
};

/// The field formatter of usermeta's text logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = Visitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct Visitor<'writer> {
    writer: Writer<'writer>,
    result: fmt::Result,
    first: bool,
}

impl Visitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        self.result = match field.name() {
            "message" => write!(self.writer, "{separator}{}", Escaped(value)),
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                if is_plain(value) {
                    write!(self.writer, "{separator}{name}={value}")
                } else {
                    write!(self.writer, "{separator}{name}={}", Quoted(value))
                }
            }
        };
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Rendered first so it can be checked; this runs only for lines that are written.
        let mut rendered = String::new();
        if write!(rendered, "{value:?}").is_err() {
            self.result = Err(fmt::Error);
            return;
        }
        self.write(field, &rendered);
    }
}

fn is_plain(value: &str) -> bool {
    !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '=' | '"' | '\\'))
}

/// Control characters and line or paragraph separators other than the space: some viewers break lines on
/// U+2028 too.
fn needs_escape(c: char) -> bool {
    c.is_control() || (c.is_whitespace() && c != ' ')
}

/// Control characters as escapes (`\n`, `\u{1b}`), everything else as it is.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if needs_escape(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// In double quotes, with `"`, `\` and control characters escaped.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('"')?;
        for c in self.0.chars() {
            match c {
                '"' | '\\' => write!(f, "\\{c}")?,
                c if needs_escape(c) => write!(f, "{}", c.escape_default())?,
                c => f.write_char(c)?,
            }
        }
        f.write_char('"')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_values_stay_bare_and_others_are_quoted() {
        assert!(is_plain("170848145649959170"));
        assert!(is_plain("ZITADEL_UNREACHABLE"));
        assert!(!is_plain("a outcome=ok"));
        assert!(!is_plain("a\nb"));
        assert!(!is_plain(""));
        assert_eq!(
            Quoted("a \"b\" \\ c\n\u{1b}[31m").to_string(),
            r#""a \"b\" \\ c\n\u{1b}[31m""#
        );
        assert_eq!(
            Escaped("one\ntwo\r\u{0}\u{2028}").to_string(),
            "one\\ntwo\\r\\u{0}\\u{2028}"
        );
    }
}
