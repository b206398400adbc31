//! Values the store keeps as text: each is an enum (made with
//! `text_enum!`) whose `as_str` is the exact text in the database, written
//! with rusqlite's `ToSql` and read back with `FromSql`, which refuses text
//! the enum does not know ([`UnknownText`]). Event kinds are the exception
//! on reading: `events` reads them as a `StoredEventKind`, which keeps the
//! text of a kind a newer posd wrote.

/// Text read from the database that names no value of the enum it is read as.
#[derive(Debug, thiserror::Error)]
#[error("database holds an unknown {what} {text:?}")]
pub struct UnknownText {
    /// What the text should name ("refund status", "event kind", ...).
    pub what: &'static str,
    pub text: String,
}

/// An enum kept as text: `as_str` (the stored text), `parse`, `ALL`,
/// `Display`, and rusqlite's `ToSql` and `FromSql`.
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in the order declared.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The text the database holds for it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// The value stored as `text`; `None` for text it does not know.
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl rusqlite::types::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
                let text = value.as_str()?;
                Self::parse(text).ok_or_else(|| {
                    rusqlite::types::FromSqlError::other($crate::store::UnknownText {
                        what: $what,
                        text: text.to_string(),
                    })
                })
            }
        }
    };
}
