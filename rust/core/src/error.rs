//! The one error type of the core. Every fallible function returns [`Result`]; nothing parsed
//! from a file is `unwrap`ped. The Python glue maps each variant to one Python exception class
//! (see `rust/py/src/errors.rs`), so the variant is part of the public contract:
//!
//! | variant            | Python exception                                   |
//! |--------------------|----------------------------------------------------|
//! | `Io`               | `FileNotFoundError` / `PermissionError` / `OSError` |
//! | `Format`           | `ferrolm.FormatError` (a `ValueError`)             |
//! | `Unsupported`      | `ferrolm.FormatError` (a `ValueError`)             |
//! | `InvalidArgument`  | `ValueError`                                       |
//! | `Type`             | `TypeError`                                        |
//! | `OutOfRange`       | `IndexError`                                       |
//! | `Internal`         | `ferrolm.InternalError` (a `RuntimeError`)         |

use std::fmt;
use std::path::{Path, PathBuf};

/// `std::result::Result` with the core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused a file operation; `path` names the file when known.
    #[error("{}{source}", PathPrefix(.path.as_deref()))]
    Io {
        path: Option<PathBuf>,
        #[source]
        source: std::io::Error,
    },
    /// A file (or a part of one: a JSON section, a tensor header) is malformed.
    /// `what` names the file or component, `message` says what is wrong with it.
    #[error("{what}: {message}")]
    Format { what: String, message: String },
    /// The input is well-formed but uses something ferrolm does not implement
    /// (a tokenizer component, a tensor type, an architecture). Names it.
    #[error("unsupported {0}")]
    Unsupported(String),
    /// A caller passed a value outside what the function accepts.
    #[error("{0}")]
    InvalidArgument(String),
    /// A caller passed a value of the wrong kind.
    #[error("{0}")]
    Type(String),
    /// An index (token id, position, layer) beyond the end of what it indexes.
    #[error("{0}")]
    OutOfRange(String),
    /// A buffer the request needs is larger than the memory the process can still get (checked
    /// before allocating); says how much it needs and how much there is.
    #[error("{0}")]
    OutOfMemory(String),
    /// The caller asked the work to stop (a cancellation flag, Ctrl-C from Python).
    #[error("cancelled")]
    Cancelled,
    /// A bug in ferrolm: a broken invariant or a caught panic. Never the caller's fault.
    #[error("internal error (please report it): {0}")]
    Internal(String),
}

struct PathPrefix<'a>(Option<&'a Path>);

impl fmt::Display for PathPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{}: ", p.display()),
            None => Ok(()),
        }
    }
}

impl Error {
    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: Some(path.into()),
            source,
        }
    }

    /// A malformed-input error: `what` names the file or component.
    pub fn format(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Format {
            what: what.into(),
            message: message.into(),
        }
    }

    /// A caller error: the argument's value is not accepted.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// Turns a caught panic payload into [`Error::Internal`], keeping its message.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let msg = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic with a non-string payload".to_owned()
        };
        Error::Internal(format!("panic: {msg}"))
    }
}

impl From<std::io::Error> for Error {
    fn from(source: std::io::Error) -> Self {
        Error::Io { path: None, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_names_the_path() {
        let e = Error::io(
            "/nope/x.json",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        let s = e.to_string();
        assert!(s.starts_with("/nope/x.json: "), "{s}");
        let bare = Error::from(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!bare.to_string().starts_with(':'));
    }

    #[test]
    fn format_and_unsupported_messages_name_the_thing() {
        assert_eq!(
            Error::format("tokenizer.json", "missing field `model`").to_string(),
            "tokenizer.json: missing field `model`"
        );
        assert_eq!(
            Error::Unsupported("normalizer `Precompiled`".into()).to_string(),
            "unsupported normalizer `Precompiled`"
        );
    }

    #[test]
    fn panic_payloads_become_internal_errors() {
        let static_str = std::panic::catch_unwind(|| panic!("boom")).unwrap_err();
        assert_eq!(
            Error::from_panic(static_str.as_ref()).to_string(),
            "internal error (please report it): panic: boom"
        );
        let n = 7;
        let owned = std::panic::catch_unwind(|| panic!("boom {n}")).unwrap_err();
        assert!(
            matches!(Error::from_panic(owned.as_ref()), Error::Internal(m) if m == "panic: boom 7")
        );
        let other = std::panic::catch_unwind(|| std::panic::panic_any(42_u8)).unwrap_err();
        assert!(matches!(
            Error::from_panic(other.as_ref()),
            Error::Internal(_)
        ));
    }
}
