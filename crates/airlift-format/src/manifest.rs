//! Airlift's signed update manifest: canonical encoding and Ed25519 signature.
//!
//! A manifest says which image a device may install: its size and SHA-256,
//! the chip it is built for, its security version, who signed it. The
//! encoding is fixed and canonical (one manifest has exactly one encoding),
//! so the signature covers bytes, not a re-serialisation of a parsed value.
//!
//! # Encoding (little endian)
//!
//! ```text
//! off  len   field
//! 0    4     magic b"ALM1" (domain separation for the signature)
//! 4    2     format_version = 1
//! 6    2     chip_id (ESP image header chip id)
//! 8    4     security_version
//! 12   4     image_size (bytes of the .bin as downloaded)
//! 16   32    image_sha256 (SHA-256 of the whole .bin as downloaded)
//! 48   1     flags (bit 0: delta base present; other bits must be 0)
//! 49   32    delta_base_sha256 (all zeros when absent)
//! 81   8     key_id (first 8 bytes of SHA-256 of the Ed25519 public key)
//! 89   1+n   product (n <= 32, UTF-8)
//! ..   1+m   version (m <= 32, UTF-8)
//! ```
//!
//! A signed manifest ("blob") is the encoded bytes followed by the 64-byte
//! Ed25519 signature over exactly the encoded bytes. On the wire (JSON) a
//! blob travels as standard base64.
//!
//! # Key files
//!
//! Text, one line: `airlift-ed25519-public <base64 of 32 bytes>` for a public
//! key and `airlift-ed25519-secret <base64 of the 32-byte seed>` for a secret
//! key. Parsing needs no allocation; formatting is behind `std`.

use core::fmt;

use sha2::{Digest, Sha256};

/// The first four bytes of every encoded manifest.
pub const MAGIC: [u8; 4] = *b"ALM1";
/// The only manifest format version this crate reads and writes.
pub const FORMAT_VERSION: u16 = 1;
/// Longest product and version strings, in bytes.
pub const MAX_STRING_LEN: usize = 32;
/// Length of the fixed part before the two strings.
pub const FIXED_LEN: usize = 89;
/// Longest possible encoded manifest.
pub const MAX_ENCODED_LEN: usize = FIXED_LEN + 2 * (1 + MAX_STRING_LEN);
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Longest possible signed manifest (encoded bytes + signature).
pub const MAX_SIGNED_LEN: usize = MAX_ENCODED_LEN + SIGNATURE_LEN;
/// Prefix of a public key file line.
pub const PUBLIC_KEY_PREFIX: &str = "airlift-ed25519-public";
/// Prefix of a secret key file line.
pub const SECRET_KEY_PREFIX: &str = "airlift-ed25519-secret";

const FLAG_DELTA_BASE: u8 = 0x01;

/// Ed25519 secret key type used by [`sign`], re-exported so callers need no
/// direct dependency on `ed25519-dalek`. Build one from a 32-byte seed with
/// `SigningKey::from_bytes(&seed)`.
#[cfg(feature = "ed25519")]
pub use ed25519_dalek::SigningKey;

/// The 32-byte Ed25519 public key of a 32-byte secret seed.
#[cfg(feature = "ed25519")]
pub fn public_key_from_seed(seed: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(seed).verifying_key().to_bytes()
}

/// An update manifest, borrowing its strings from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest<'a> {
    /// ESP image header chip id the image is built for (0 = ESP32).
    pub chip_id: u16,
    /// Anti-rollback level: devices refuse images below their stored minimum.
    pub security_version: u32,
    /// Size in bytes of the `.bin` as downloaded.
    pub image_size: u32,
    /// SHA-256 of the whole `.bin` as downloaded.
    pub image_sha256: [u8; 32],
    /// For a delta update: SHA-256 of the image the patch applies to.
    pub delta_base_sha256: Option<[u8; 32]>,
    /// Which key signed this manifest: see [`key_id`].
    pub key_id: [u8; 8],
    /// Product name (at most 32 bytes of UTF-8).
    pub product: &'a str,
    /// Version string (at most 32 bytes of UTF-8).
    pub version: &'a str,
}

/// Which string field of a manifest an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The product name.
    Product,
    /// The version string.
    Version,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Product => "product",
            Field::Version => "version",
        })
    }
}

/// Why a manifest could not be encoded, decoded or verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestError {
    /// The input ends before the manifest does.
    Truncated {
        /// Bytes needed to go on.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// The first four bytes are not `ALM1`.
    BadMagic([u8; 4]),
    /// A format version this crate does not know.
    UnsupportedVersion(u16),
    /// Flag bits other than bit 0 are set.
    ReservedFlags(u8),
    /// The delta base hash is not zero although the delta flag is clear.
    StrayDeltaBase,
    /// A string is longer than 32 bytes.
    StringTooLong {
        /// Which string.
        field: Field,
        /// Its length in bytes.
        len: usize,
    },
    /// A string is not valid UTF-8.
    NotUtf8(Field),
    /// The output buffer is too small for the encoding.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// A signed manifest does not end with exactly one 64-byte signature.
    BadSignatureLength {
        /// Bytes found after the encoded manifest.
        got: usize,
    },
    /// No trusted key has the manifest's key id.
    UnknownKey([u8; 8]),
    /// A trusted key with this key id is not a valid Ed25519 point.
    InvalidTrustedKey([u8; 8]),
    /// The signature does not verify with the named key.
    BadSignature,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestError::Truncated { needed, got } => write!(
                f,
                "manifest truncated: needs {needed} bytes, only {got} present"
            ),
            ManifestError::BadMagic(m) => write!(
                f,
                "not an airlift manifest: magic is {:02x}{:02x}{:02x}{:02x}, expected 414c4d31 (\"ALM1\")",
                m[0], m[1], m[2], m[3]
            ),
            ManifestError::UnsupportedVersion(v) => write!(
                f,
                "unsupported manifest format version {v}, expected {FORMAT_VERSION}"
            ),
            ManifestError::ReservedFlags(b) => write!(
                f,
                "manifest flags are {b:#04x}: only bit 0 (delta base) may be set"
            ),
            ManifestError::StrayDeltaBase => f.write_str(
                "manifest has a delta base hash but the delta flag is clear: expected all zeros",
            ),
            ManifestError::StringTooLong { field, len } => write!(
                f,
                "manifest {field} is {len} bytes, at most {MAX_STRING_LEN} allowed"
            ),
            ManifestError::NotUtf8(field) => write!(f, "manifest {field} is not valid UTF-8"),
            ManifestError::BufferTooSmall { needed, got } => write!(
                f,
                "output buffer holds {got} bytes but the manifest needs {needed}"
            ),
            ManifestError::BadSignatureLength { got } => write!(
                f,
                "signed manifest has {got} bytes after the manifest, expected a {SIGNATURE_LEN}-byte signature"
            ),
            ManifestError::UnknownKey(id) => {
                f.write_str("manifest signed by unknown key ")?;
                write_hex(f, id)?;
                f.write_str(": not among the device's trusted keys")
            }
            ManifestError::InvalidTrustedKey(id) => {
                f.write_str("trusted key ")?;
                write_hex(f, id)?;
                f.write_str(" is not a valid ed25519 public key")
            }
            ManifestError::BadSignature => {
                f.write_str("manifest signature does not verify with the named key")
            }
        }
    }
}

impl core::error::Error for ManifestError {}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// Key id of an Ed25519 public key: the first 8 bytes of its SHA-256.
pub fn key_id(public_key: &[u8; 32]) -> [u8; 8] {
    let digest = Sha256::digest(public_key);
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

fn check_string(field: Field, s: &str) -> Result<(), ManifestError> {
    if s.len() > MAX_STRING_LEN {
        return Err(ManifestError::StringTooLong {
            field,
            len: s.len(),
        });
    }
    Ok(())
}

impl<'a> Manifest<'a> {
    /// Length of this manifest's encoding.
    pub fn encoded_len(&self) -> usize {
        FIXED_LEN + 1 + self.product.len() + 1 + self.version.len()
    }

    /// Writes the canonical encoding into `out`; returns the number of bytes written.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ManifestError> {
        check_string(Field::Product, self.product)?;
        check_string(Field::Version, self.version)?;
        let len = self.encoded_len();
        if out.len() < len {
            return Err(ManifestError::BufferTooSmall {
                needed: len,
                got: out.len(),
            });
        }
        let out = &mut out[..len];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[6..8].copy_from_slice(&self.chip_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.security_version.to_le_bytes());
        out[12..16].copy_from_slice(&self.image_size.to_le_bytes());
        out[16..48].copy_from_slice(&self.image_sha256);
        match &self.delta_base_sha256 {
            Some(base) => {
                out[48] = FLAG_DELTA_BASE;
                out[49..81].copy_from_slice(base);
            }
            None => {
                out[48] = 0;
                out[49..81].fill(0);
            }
        }
        out[81..89].copy_from_slice(&self.key_id);
        let mut at = FIXED_LEN;
        for s in [self.product, self.version] {
            // Lengths were checked against MAX_STRING_LEN (32) above.
            out[at] = s.len() as u8;
            out[at + 1..at + 1 + s.len()].copy_from_slice(s.as_bytes());
            at += 1 + s.len();
        }
        Ok(len)
    }

    /// Decodes a manifest from the start of `bytes`; returns it and the number
    /// of bytes it occupies (trailing bytes, such as a signature, are left alone).
    pub fn decode(bytes: &'a [u8]) -> Result<(Manifest<'a>, usize), ManifestError> {
        if bytes.len() >= 4 && bytes[0..4] != MAGIC {
            let mut m = [0u8; 4];
            m.copy_from_slice(&bytes[0..4]);
            return Err(ManifestError::BadMagic(m));
        }
        if bytes.len() < FIXED_LEN + 2 {
            return Err(ManifestError::Truncated {
                needed: FIXED_LEN + 2,
                got: bytes.len(),
            });
        }
        let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
        let u32_at =
            |o: usize| u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let version = u16_at(4);
        if version != FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion(version));
        }
        let flags = bytes[48];
        if flags & !FLAG_DELTA_BASE != 0 {
            return Err(ManifestError::ReservedFlags(flags));
        }
        let mut image_sha256 = [0u8; 32];
        image_sha256.copy_from_slice(&bytes[16..48]);
        let mut base = [0u8; 32];
        base.copy_from_slice(&bytes[49..81]);
        let delta_base_sha256 = if flags & FLAG_DELTA_BASE != 0 {
            Some(base)
        } else if base != [0u8; 32] {
            return Err(ManifestError::StrayDeltaBase);
        } else {
            None
        };
        let mut key_id = [0u8; 8];
        key_id.copy_from_slice(&bytes[81..89]);
        let (product, at) = read_string(bytes, FIXED_LEN, Field::Product)?;
        let (version_str, end) = read_string(bytes, at, Field::Version)?;
        Ok((
            Manifest {
                chip_id: u16_at(6),
                security_version: u32_at(8),
                image_size: u32_at(12),
                image_sha256,
                delta_base_sha256,
                key_id,
                product,
                version: version_str,
            },
            end,
        ))
    }
}

fn read_string(bytes: &[u8], at: usize, field: Field) -> Result<(&str, usize), ManifestError> {
    let Some(&len) = bytes.get(at) else {
        return Err(ManifestError::Truncated {
            needed: at + 1,
            got: bytes.len(),
        });
    };
    let len = usize::from(len);
    if len > MAX_STRING_LEN {
        return Err(ManifestError::StringTooLong { field, len });
    }
    let end = at + 1 + len;
    let Some(raw) = bytes.get(at + 1..end) else {
        return Err(ManifestError::Truncated {
            needed: end,
            got: bytes.len(),
        });
    };
    let s = core::str::from_utf8(raw).map_err(|_| ManifestError::NotUtf8(field))?;
    Ok((s, end))
}

/// A manifest with its Ed25519 signature, parsed from a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedManifest<'a> {
    /// The decoded manifest.
    pub manifest: Manifest<'a>,
    /// The exact encoded bytes the signature covers.
    pub signed_bytes: &'a [u8],
    /// The Ed25519 signature.
    pub signature: [u8; SIGNATURE_LEN],
}

impl<'a> SignedManifest<'a> {
    /// Splits a blob into the manifest and its signature. Does not verify the
    /// signature: see [`SignedManifest::verify`].
    pub fn parse(blob: &'a [u8]) -> Result<SignedManifest<'a>, ManifestError> {
        let (manifest, len) = Manifest::decode(blob)?;
        let rest = &blob[len..];
        if rest.len() != SIGNATURE_LEN {
            return Err(ManifestError::BadSignatureLength { got: rest.len() });
        }
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(rest);
        Ok(SignedManifest {
            manifest,
            signed_bytes: &blob[..len],
            signature,
        })
    }

    /// Verifies the signature with the trusted key whose [`key_id`] the
    /// manifest names. Distinct errors for an unknown key and a bad signature.
    #[cfg(feature = "ed25519")]
    pub fn verify(&self, trusted: &[[u8; 32]]) -> Result<(), ManifestError> {
        let id = self.manifest.key_id;
        let Some(key) = trusted.iter().find(|k| key_id(k) == id) else {
            return Err(ManifestError::UnknownKey(id));
        };
        let key = ed25519_dalek::VerifyingKey::from_bytes(key)
            .map_err(|_| ManifestError::InvalidTrustedKey(id))?;
        let signature = ed25519_dalek::Signature::from_bytes(&self.signature);
        key.verify_strict(self.signed_bytes, &signature)
            .map_err(|_| ManifestError::BadSignature)
    }
}

/// Signs a manifest: returns the blob (encoded bytes + signature). The
/// manifest's `key_id` is replaced by the id of `key`'s public key, so a blob
/// always names the key that signed it.
#[cfg(all(feature = "ed25519", feature = "std"))]
pub fn sign(manifest: &Manifest<'_>, key: &SigningKey) -> Result<std::vec::Vec<u8>, ManifestError> {
    use ed25519_dalek::Signer;

    let mut named = *manifest;
    named.key_id = key_id(&key.verifying_key().to_bytes());
    let mut buf = [0u8; MAX_ENCODED_LEN];
    let len = named.encode(&mut buf)?;
    let signature = key.sign(&buf[..len]);
    let mut blob = std::vec::Vec::with_capacity(len + SIGNATURE_LEN);
    blob.extend_from_slice(&buf[..len]);
    blob.extend_from_slice(&signature.to_bytes());
    Ok(blob)
}

/// Why a key file could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFileError {
    /// The file does not start with the expected prefix.
    WrongPrefix {
        /// The prefix that was expected.
        expected: &'static str,
    },
    /// The key is not valid standard base64.
    BadBase64,
    /// The key decodes to the wrong number of bytes.
    WrongLength {
        /// Bytes decoded.
        got: usize,
    },
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFileError::WrongPrefix { expected } => write!(
                f,
                "not an airlift key file: expected a line starting with \"{expected} \""
            ),
            KeyFileError::BadBase64 => f.write_str("key is not valid standard base64"),
            KeyFileError::WrongLength { got } => {
                write!(f, "key decodes to {got} bytes, expected 32")
            }
        }
    }
}

impl core::error::Error for KeyFileError {}

/// Parses a public key file (`airlift-ed25519-public <base64>`).
pub fn parse_public_key_file(text: &str) -> Result<[u8; 32], KeyFileError> {
    parse_key_file(text, PUBLIC_KEY_PREFIX)
}

/// Parses a secret key file (`airlift-ed25519-secret <base64 seed>`).
pub fn parse_secret_key_file(text: &str) -> Result<[u8; 32], KeyFileError> {
    parse_key_file(text, SECRET_KEY_PREFIX)
}

fn parse_key_file(text: &str, prefix: &'static str) -> Result<[u8; 32], KeyFileError> {
    let wrong = KeyFileError::WrongPrefix { expected: prefix };
    let rest = text.trim().strip_prefix(prefix).ok_or(wrong)?;
    if !rest.starts_with([' ', '\t']) {
        return Err(wrong);
    }
    let mut out = [0u8; 32];
    let n = base64_decode(rest.trim().as_bytes(), &mut out)?;
    if n != 32 {
        return Err(KeyFileError::WrongLength { got: n });
    }
    Ok(out)
}

/// Formats a public key file line (with the trailing newline).
#[cfg(feature = "std")]
pub fn format_public_key_file(key: &[u8; 32]) -> std::string::String {
    std::format!("{PUBLIC_KEY_PREFIX} {}\n", base64_encode(key))
}

/// Formats a secret key file line (with the trailing newline).
#[cfg(feature = "std")]
pub fn format_secret_key_file(seed: &[u8; 32]) -> std::string::String {
    std::format!("{SECRET_KEY_PREFIX} {}\n", base64_encode(seed))
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (with padding) of `bytes`.
#[cfg(feature = "std")]
pub fn base64_encode(bytes: &[u8]) -> std::string::String {
    let mut s = std::string::String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Decodes standard base64 (padding required) into `out`; returns the
/// number of bytes written. Never allocates.
pub fn base64_decode(text: &[u8], out: &mut [u8]) -> Result<usize, KeyFileError> {
    if !text.len().is_multiple_of(4) {
        return Err(KeyFileError::BadBase64);
    }
    let value = |c: u8| B64.iter().position(|&x| x == c).map(|v| v as u32);
    let mut written = 0;
    let quads = text.len() / 4;
    for (qi, quad) in text.chunks(4).enumerate() {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && qi + 1 != quads) {
            return Err(KeyFileError::BadBase64);
        }
        let mut n = 0u32;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | value(c).ok_or(KeyFileError::BadBase64)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let take = 3 - pad;
        // Non-canonical encodings (stray bits in the last character) are refused.
        if bytes[take..].iter().any(|&b| b != 0) {
            return Err(KeyFileError::BadBase64);
        }
        if written + take > out.len() {
            let total_pad = text.iter().rev().take_while(|&&c| c == b'=').count();
            return Err(KeyFileError::WrongLength {
                got: quads * 3 - total_pad.min(2),
            });
        }
        out[written..written + take].copy_from_slice(&bytes[..take]);
        written += take;
    }
    Ok(written)
}
