//! Bounded text without an allocator: formatting that cuts at a character
//! boundary instead of failing, and SHA-256 hex.

use core::fmt::{self, Write};

/// A string of at most `N` bytes that formatting fills until it is full
/// (the rest is dropped at a character boundary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Text<const N: usize>(pub heapless::String<N>);

impl<const N: usize> Text<N> {
    /// `args`, cut to `N` bytes.
    pub fn format(args: fmt::Arguments<'_>) -> Text<N> {
        let mut t = Text(heapless::String::new());
        let _ = t.write_fmt(args);
        t
    }

    /// `s`, cut to `N` bytes.
    pub fn from_str_cut(s: &str) -> Text<N> {
        let mut t = Text(heapless::String::new());
        let _ = t.write_str(s);
        t
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The text as a shorter bounded string (cut at a character boundary).
    pub fn cut<const M: usize>(&self) -> heapless::String<M> {
        Text::<M>::from_str_cut(self.as_str()).0
    }
}

impl<const N: usize> Write for Text<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = N - self.0.len();
        let mut end = s.len().min(room);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        // Cannot fail: `end` bytes fit.
        let _ = self.0.push_str(&s[..end]);
        if end < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

impl<const N: usize> fmt::Display for Text<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<const N: usize> From<heapless::String<N>> for Text<N> {
    fn from(s: heapless::String<N>) -> Text<N> {
        Text(s)
    }
}

impl<const N: usize> From<&str> for Text<N> {
    /// `s`, cut to `N` bytes.
    fn from(s: &str) -> Text<N> {
        Text::from_str_cut(s)
    }
}

/// A SHA-256 as lowercase hex, for the wire.
pub fn sha_hex(sha: &[u8; 32]) -> airlift_protocol::Sha256Hex {
    Text::<64>::format(format_args!("{}", Hex(sha))).0
}

/// Bytes shown as lowercase hex.
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The 32 bytes of a SHA-256 written as 64 hex digits (either case).
pub fn parse_sha_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Some(out)
}
