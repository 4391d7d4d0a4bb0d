//! The signed update manifest: canonical encoding, signatures, key files.
#![allow(clippy::unwrap_used)]

use airlift_format::manifest::{
    FIXED_LEN, Field, KeyFileError, MAX_ENCODED_LEN, MAX_SIGNED_LEN, Manifest, ManifestError,
    SignedManifest, SigningKey, base64_decode, base64_encode, format_public_key_file,
    format_secret_key_file, key_id, parse_public_key_file, parse_secret_key_file,
    public_key_from_seed, sign,
};

fn sample() -> Manifest<'static> {
    Manifest {
        chip_id: 5,
        security_version: 7,
        image_size: 0x0001_2345,
        image_sha256: [0xab; 32],
        delta_base_sha256: None,
        key_id: [1, 2, 3, 4, 5, 6, 7, 8],
        product: "thermostat",
        version: "1.2.3",
    }
}

fn encode(m: &Manifest<'_>) -> Vec<u8> {
    let mut buf = [0u8; MAX_ENCODED_LEN];
    let n = m.encode(&mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn encoding_matches_the_documented_layout() {
    let bytes = encode(&sample());
    let mut expected = Vec::new();
    expected.extend_from_slice(b"ALM1");
    expected.extend_from_slice(&1u16.to_le_bytes());
    expected.extend_from_slice(&5u16.to_le_bytes());
    expected.extend_from_slice(&7u32.to_le_bytes());
    expected.extend_from_slice(&0x0001_2345u32.to_le_bytes());
    expected.extend_from_slice(&[0xab; 32]);
    expected.push(0);
    expected.extend_from_slice(&[0; 32]);
    expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    expected.push(10);
    expected.extend_from_slice(b"thermostat");
    expected.push(5);
    expected.extend_from_slice(b"1.2.3");
    assert_eq!(bytes, expected);
    assert_eq!(bytes.len(), sample().encoded_len());
}

#[test]
fn decode_of_encode_is_identity_and_reports_length() {
    let delta = Manifest {
        delta_base_sha256: Some([0x5a; 32]),
        product: "",
        version: "a-version-string-of-32-bytes-xyz",
        ..sample()
    };
    for m in [sample(), delta] {
        let mut bytes = encode(&m);
        let len = bytes.len();
        bytes.extend_from_slice(&[0xee; 9]);
        assert_eq!(Manifest::decode(&bytes).unwrap(), (m, len));
    }
}

#[test]
fn longest_manifest_fits_the_stated_maximum() {
    let m = Manifest {
        product: "p".repeat(32).leak(),
        version: "v".repeat(32).leak(),
        delta_base_sha256: Some([1; 32]),
        ..sample()
    };
    assert_eq!(encode(&m).len(), MAX_ENCODED_LEN);
    assert_eq!(MAX_SIGNED_LEN, MAX_ENCODED_LEN + 64);
}

fn check_decode_error(mutate: impl Fn(&mut Vec<u8>), expected: ManifestError) {
    let mut bytes = encode(&sample());
    mutate(&mut bytes);
    assert_eq!(Manifest::decode(&bytes).unwrap_err(), expected);
}

#[test]
fn malformed_manifests_are_refused_with_distinct_errors() {
    check_decode_error(|b| b[0] = b'X', ManifestError::BadMagic(*b"XLM1"));
    check_decode_error(|b| b[4] = 2, ManifestError::UnsupportedVersion(2));
    check_decode_error(|b| b[48] = 0x82, ManifestError::ReservedFlags(0x82));
    check_decode_error(|b| b[60] = 1, ManifestError::StrayDeltaBase);
    check_decode_error(
        |b| b[FIXED_LEN] = 33,
        ManifestError::StringTooLong {
            field: Field::Product,
            len: 33,
        },
    );
    check_decode_error(
        |b| b[FIXED_LEN + 1] = 0xff,
        ManifestError::NotUtf8(Field::Product),
    );
    check_decode_error(
        |b| b.truncate(b.len() - 1),
        ManifestError::Truncated {
            needed: sample().encoded_len(),
            got: sample().encoded_len() - 1,
        },
    );
    check_decode_error(
        |b| b.truncate(10),
        ManifestError::Truncated {
            needed: FIXED_LEN + 2,
            got: 10,
        },
    );
}

#[test]
fn every_prefix_and_every_flipped_byte_decodes_or_errors_without_panic() {
    let bytes = encode(&sample());
    for len in 0..bytes.len() {
        assert!(Manifest::decode(&bytes[..len]).is_err(), "prefix {len}");
    }
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            let _ = Manifest::decode(&b);
        }
    }
}

#[test]
fn encode_refuses_long_strings_and_small_buffers() {
    let long = Manifest {
        version: "0123456789012345678901234567890123",
        ..sample()
    };
    let mut buf = [0u8; MAX_ENCODED_LEN];
    assert_eq!(
        long.encode(&mut buf).unwrap_err(),
        ManifestError::StringTooLong {
            field: Field::Version,
            len: 34
        }
    );
    let mut small = [0u8; 20];
    assert_eq!(
        sample().encode(&mut small).unwrap_err(),
        ManifestError::BufferTooSmall {
            needed: sample().encoded_len(),
            got: 20
        }
    );
}

fn key(n: u8) -> (SigningKey, [u8; 32]) {
    let seed = [n; 32];
    (SigningKey::from_bytes(&seed), public_key_from_seed(&seed))
}

#[test]
fn signed_manifest_verifies_with_its_key_and_names_it() {
    let (sk, pk) = key(1);
    let (_, other) = key(2);
    let blob = sign(&sample(), &sk).unwrap();
    let signed = SignedManifest::parse(&blob).unwrap();
    assert_eq!(signed.manifest.key_id, key_id(&pk));
    assert_eq!(signed.manifest.product, "thermostat");
    signed.verify(&[other, pk]).unwrap();
}

#[test]
fn signature_from_an_unknown_key_is_refused_as_unknown_key() {
    let (sk, pk) = key(1);
    let (_, other) = key(2);
    let blob = sign(&sample(), &sk).unwrap();
    let signed = SignedManifest::parse(&blob).unwrap();
    assert_eq!(
        signed.verify(&[other]).unwrap_err(),
        ManifestError::UnknownKey(key_id(&pk))
    );
    assert_eq!(
        signed.verify(&[]).unwrap_err(),
        ManifestError::UnknownKey(key_id(&pk))
    );
}

#[test]
fn any_flipped_bit_in_a_signed_manifest_is_refused() {
    let (sk, pk) = key(3);
    let blob = sign(&sample(), &sk).unwrap();
    for i in 0..blob.len() {
        let mut b = blob.clone();
        b[i] ^= 0x10;
        if let Ok(signed) = SignedManifest::parse(&b) {
            assert!(signed.verify(&[pk]).is_err(), "flip at byte {i} accepted");
        }
    }
    // A flip in the signature itself is a bad signature, not an unknown key.
    let mut b = blob.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    let signed = SignedManifest::parse(&b).unwrap();
    assert_eq!(
        signed.verify(&[pk]).unwrap_err(),
        ManifestError::BadSignature
    );
}

#[test]
fn blob_needs_exactly_one_signature() {
    let (sk, _) = key(1);
    let mut blob = sign(&sample(), &sk).unwrap();
    blob.push(0);
    assert_eq!(
        SignedManifest::parse(&blob).unwrap_err(),
        ManifestError::BadSignatureLength { got: 65 }
    );
    blob.truncate(blob.len() - 2);
    assert_eq!(
        SignedManifest::parse(&blob).unwrap_err(),
        ManifestError::BadSignatureLength { got: 63 }
    );
}

#[test]
fn key_id_is_the_sha256_prefix_of_the_public_key() {
    // SHA-256 of 32 zero bytes starts with 66687aadf862bd77.
    assert_eq!(
        key_id(&[0; 32]),
        [0x66, 0x68, 0x7a, 0xad, 0xf8, 0x62, 0xbd, 0x77]
    );
}

#[test]
fn ed25519_matches_the_rfc8032_test_vector() {
    // RFC 8032 section 7.1, TEST 1.
    let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let public = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
    assert_eq!(public_key_from_seed(&seed), public);
}

fn hex(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

#[test]
fn key_files_round_trip() {
    let seed = [7u8; 32];
    let pk = public_key_from_seed(&seed);
    let public = format_public_key_file(&pk);
    let secret = format_secret_key_file(&seed);
    assert!(public.starts_with("airlift-ed25519-public ") && public.ends_with('\n'));
    assert!(secret.starts_with("airlift-ed25519-secret ") && secret.ends_with('\n'));
    assert_eq!(parse_public_key_file(&public).unwrap(), pk);
    assert_eq!(parse_secret_key_file(&secret).unwrap(), seed);
}

#[test]
fn key_files_of_the_wrong_kind_or_shape_are_refused() {
    let seed = [7u8; 32];
    let secret = format_secret_key_file(&seed);
    let check = |text: &str, expected: KeyFileError| {
        assert_eq!(
            parse_public_key_file(text).unwrap_err(),
            expected,
            "{text:?}"
        );
    };
    let wrong_prefix = KeyFileError::WrongPrefix {
        expected: "airlift-ed25519-public",
    };
    check(&secret, wrong_prefix);
    check("", wrong_prefix);
    check("airlift-ed25519-publicAAAA", wrong_prefix);
    check("airlift-ed25519-public AAA", KeyFileError::BadBase64);
    check("airlift-ed25519-public AA*A", KeyFileError::BadBase64);
    check(
        "airlift-ed25519-public AAAA",
        KeyFileError::WrongLength { got: 3 },
    );
    check(
        &format!("airlift-ed25519-public {}", base64_encode(&[1u8; 33])),
        KeyFileError::WrongLength { got: 33 },
    );
}

#[test]
fn base64_matches_rfc4648_vectors() {
    let cases: [(&[u8], &str); 7] = [
        (b"", ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"fooba", "Zm9vYmE="),
        (b"foobar", "Zm9vYmFy"),
    ];
    for (raw, text) in cases {
        assert_eq!(base64_encode(raw), text);
        let mut out = [0u8; 8];
        let n = base64_decode(text.as_bytes(), &mut out).unwrap();
        assert_eq!(&out[..n], raw);
    }
    let mut out = [0u8; 8];
    assert_eq!(
        base64_decode(b"Zh==", &mut out).unwrap_err(),
        KeyFileError::BadBase64
    );
    assert_eq!(
        base64_decode(b"Zg==Zg==", &mut out).unwrap_err(),
        KeyFileError::BadBase64
    );
}
