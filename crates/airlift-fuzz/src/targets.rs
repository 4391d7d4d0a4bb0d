//! The targets and the properties they check.

use std::sync::OnceLock;

use airlift_engine::sim::{self, SimFlash};
use airlift_engine::{AppSlot, Config, Device, Layout};
use airlift_format::image::{self, ImageVerifier};
use airlift_format::manifest::{
    self, Manifest, SignedManifest, SigningKey, base64_decode, base64_encode,
};
use airlift_format::otadata::{
    self, ENTRY_LEN, OtaSelectEntry, OtaState, active_entry, boot_slot, plan_activation,
    rollback_bootloader_boot,
};
use airlift_format::partition::{
    self, ENTRY_LEN as ROW_LEN, PartitionEntry, PartitionType, TABLE_MAX_LEN, TABLE_OFFSET, Table,
    TableReader, check_md5,
};
use airlift_protocol::{
    CheckIn, CheckInAnswer, EnrollRequest, ErrorAnswer, EventBatch, EventBatchAck,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A fuzz target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `image::verify` and the streaming `ImageVerifier` over any chunking.
    Image,
    /// A binary partition table: `Table::parse`, the row-by-row
    /// `TableReader`, `check_md5`, and `build` of what parsed.
    PartitionTable,
    /// A partition table in CSV, to binary and back.
    PartitionCsv,
    /// The engine reading a partition table and opening a device from flash.
    EngineLayout,
    /// Two otadata entries and ESP-IDF's selection and activation rules.
    Otadata,
    /// A signed manifest: parse, canonical re-encoding, signature check.
    Manifest,
    /// Key files and base64.
    KeyFiles,
    /// Device protocol JSON as serde_json and serde-json-core read it.
    Protocol,
    /// Airlift's data partition: the engine's log of records, then boot,
    /// install and confirm over it.
    DataPartition,
    /// What the device page reads from a LAN client (the agent's page and
    /// the firmware's alike): the `Authorization` header, the manifest
    /// header of an upload, a pull's JSON, the route, and the throttle of
    /// wrong passwords over any sequence of clients and times.
    DevicePage,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 10] = [
        Target::Image,
        Target::PartitionTable,
        Target::PartitionCsv,
        Target::EngineLayout,
        Target::Otadata,
        Target::Manifest,
        Target::KeyFiles,
        Target::Protocol,
        Target::DataPartition,
        Target::DevicePage,
    ];

    /// Its name (corpus folder, command line, cargo-fuzz target).
    pub fn name(self) -> &'static str {
        match self {
            Target::Image => "image",
            Target::PartitionTable => "partition_table",
            Target::PartitionCsv => "partition_csv",
            Target::EngineLayout => "engine_layout",
            Target::Otadata => "otadata",
            Target::Manifest => "manifest",
            Target::KeyFiles => "key_files",
            Target::Protocol => "protocol",
            Target::DataPartition => "data_partition",
            Target::DevicePage => "device_page",
        }
    }

    /// The target of that name.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Runs the target on `data`; panics when a property fails.
    pub fn run(self, data: &[u8]) {
        match self {
            Target::Image => image_target(data),
            Target::PartitionTable => partition_table(data),
            Target::PartitionCsv => partition_csv(data),
            Target::EngineLayout => engine_layout(data),
            Target::Otadata => otadata_target(data),
            Target::Manifest => manifest_target(data),
            Target::KeyFiles => key_files(data),
            Target::Protocol => protocol(data),
            Target::DataPartition => data_partition(data),
            Target::DevicePage => device_page(data),
        }
    }
}

/// The first byte picks how an input is cut into chunks, the rest is the input.
fn split_control(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((c, rest)) => (*c, rest),
        None => (0, data),
    }
}

fn image_target(data: &[u8]) {
    let (control, bytes) = split_control(data);
    let whole = image::verify(bytes);
    // Chunk sizes from the control byte: 1, 2, 3, ... and a few larger ones.
    let sizes = [1usize, 2, 3, 7, 16, 64, 255, 4096];
    let mut verifier = ImageVerifier::new();
    let mut rest = bytes;
    let mut i = usize::from(control);
    let mut streamed = Ok(());
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        i = i.wrapping_mul(31).wrapping_add(7);
        let (chunk, tail) = rest.split_at(n);
        if let Err(e) = verifier.update(chunk) {
            streamed = Err(e);
            break;
        }
        rest = tail;
    }
    let chunked = streamed.and_then(|()| verifier.finish());
    assert_eq!(whole, chunked, "one-shot and chunked verification differ");
    if let Ok(info) = whole {
        assert_eq!(info.total_len, bytes.len() as u64);
        assert!(u64::from(info.image_len) <= info.total_len);
        assert!(info.segments().len() <= image::MAX_SEGMENTS);
        for s in info.segments() {
            assert!(s.data_offset() + s.length <= info.image_len, "{s:?}");
        }
        use sha2::Digest;
        let sha: [u8; 32] = sha2::Sha256::digest(bytes).into();
        assert_eq!(info.file_sha256, sha);
    }
}

fn partition_table(data: &[u8]) {
    let bytes = &data[..data.len().min(TABLE_MAX_LEN)];
    let parsed = Table::parse(bytes);
    let _ = check_md5(bytes);
    // The device reads the same rows one by one: it must never accept an
    // entry the tool would refuse, nor the other way round.
    let mut reader = TableReader::new();
    let mut streamed: Vec<PartitionEntry> = Vec::new();
    let mut reader_failed = false;
    for row in bytes.chunks_exact(ROW_LEN) {
        if reader.is_done() {
            break;
        }
        let mut r = [0u8; ROW_LEN];
        r.copy_from_slice(row);
        match reader.push(&r) {
            Ok(Some(e)) => streamed.push(e),
            Ok(None) => {}
            Err(_) => {
                reader_failed = true;
                break;
            }
        }
    }
    let Ok(table) = parsed else {
        return;
    };
    assert!(
        !reader_failed,
        "Table::parse accepted rows TableReader refuses"
    );
    let entries: Vec<PartitionEntry> = table.iter().collect();
    assert_eq!(entries, streamed, "Table::parse and TableReader disagree");
    let _ = table.ota_layout();
    let mut built = [0xFFu8; TABLE_MAX_LEN];
    partition::build(&entries, &mut built).expect("a parsed table builds");
    let again: Vec<PartitionEntry> = Table::parse(&built)
        .expect("a built table parses")
        .iter()
        .collect();
    assert_eq!(entries, again, "binary table does not round-trip");
}

fn partition_csv(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(entries) = partition::parse_csv(&text) else {
        return;
    };
    let mut built = [0xFFu8; TABLE_MAX_LEN];
    if partition::build(&entries, &mut built).is_err() {
        return;
    }
    let parsed: Vec<PartitionEntry> = Table::parse(&built)
        .expect("a table built from parsed CSV parses")
        .iter()
        .collect();
    assert_eq!(entries, parsed, "CSV -> binary -> entries differs");
}

/// A 64 KiB flash with `data` as the partition table at 0x8000.
fn flash_with_table(data: &[u8]) -> SimFlash {
    let mut flash = SimFlash::new(0x4_0000);
    flash.load(
        TABLE_OFFSET as usize,
        &data[..data.len().min(TABLE_MAX_LEN)],
    );
    flash
}

fn engine_layout(data: &[u8]) {
    let mut flash = flash_with_table(data);
    let layout = Layout::read(&mut flash, TABLE_OFFSET);
    if let Ok(layout) = &layout {
        for slot in (0..layout.app_count).map(AppSlot::Ota) {
            let region = layout.slot(slot).expect("every counted slot exists");
            assert!(region.size > 0);
        }
    }
    // Opening a device over it reads the data partition the table names.
    if let Ok(mut dev) = Device::open(&mut flash, Config::default()) {
        let _ = dev.status();
        let _ = dev.boot(None, 1);
    }
}

fn otadata_target(data: &[u8]) {
    let mut raw = [0xFFu8; 2 * ENTRY_LEN + 2];
    let n = data.len().min(raw.len());
    raw[..n].copy_from_slice(&data[..n]);
    let decode = |bytes: &[u8]| {
        let mut e = [0u8; ENTRY_LEN];
        e.copy_from_slice(bytes);
        OtaSelectEntry::decode(&e)
    };
    let mut entries = [
        decode(&raw[..ENTRY_LEN]),
        decode(&raw[ENTRY_LEN..2 * ENTRY_LEN]),
    ];
    for e in &entries {
        assert_eq!(OtaSelectEntry::decode(&e.encode()), *e, "entry round-trip");
    }
    let count = raw[2 * ENTRY_LEN] % 17;
    let slot = raw[2 * ENTRY_LEN + 1] % 18;
    let mut partition = vec![0xFFu8; otadata::SECTOR_SIZE as usize * 2];
    partition[..ENTRY_LEN].copy_from_slice(&raw[..ENTRY_LEN]);
    let second = otadata::SECTOR_SIZE as usize;
    partition[second..second + ENTRY_LEN].copy_from_slice(&raw[ENTRY_LEN..2 * ENTRY_LEN]);
    assert_eq!(otadata::decode_partition(&partition), Ok(entries));
    let active = active_entry(&entries);
    let _ = boot_slot(&entries, count);
    let mut after_boot = entries;
    let _ = rollback_bootloader_boot(&mut after_boot, count);
    if let Ok(plan) = plan_activation(&entries, slot, count, OtaState::Undefined) {
        // The planned write never touches the active copy, moves the
        // sequence forward, and makes the bootloader pick `slot`.
        assert!(slot < count);
        assert_ne!(Some(plan.copy), active, "would overwrite the active copy");
        if let Some(a) = active {
            assert!(plan.entry.seq > entries[a].seq);
        }
        entries[plan.copy] = plan.entry;
        assert_eq!(active_entry(&entries), Some(plan.copy));
        assert_eq!(boot_slot(&entries, count), otadata::BootTarget::Ota(slot));
    }
}

struct Keys {
    signing: SigningKey,
    public: [u8; 32],
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        signing: SigningKey::from_bytes(&crate::seeds::SEED),
        public: manifest::public_key_from_seed(&crate::seeds::SEED),
    })
}

fn manifest_target(data: &[u8]) {
    if let Ok((m, used)) = Manifest::decode(data) {
        // The encoding is canonical: what decodes re-encodes to the same bytes.
        let mut out = [0u8; manifest::MAX_ENCODED_LEN];
        let n = m.encode(&mut out).expect("a decoded manifest encodes");
        assert_eq!(
            &out[..n],
            &data[..used],
            "manifest encoding is not canonical"
        );
    }
    if let Ok(signed) = SignedManifest::parse(data) {
        let k = keys();
        if signed.verify(&[k.public]).is_ok() {
            // Only a signature made with the key verifies: signing the same
            // manifest again must give exactly these bytes (Ed25519 is
            // deterministic), or the fuzzer forged one.
            let again = manifest::sign(&signed.manifest, &k.signing).expect("it signs");
            assert_eq!(
                again.as_slice(),
                data,
                "a manifest verified that the key did not sign"
            );
        }
    }
}

fn key_files(data: &[u8]) {
    let mut out = [0u8; 512];
    if let Ok(n) = base64_decode(data, &mut out) {
        let text = base64_encode(&out[..n]);
        let mut back = [0u8; 512];
        let m = base64_decode(text.as_bytes(), &mut back).expect("own base64 decodes");
        assert_eq!(&back[..m], &out[..n], "base64 round-trip");
    }
    let text = String::from_utf8_lossy(data);
    if let Ok(key) = manifest::parse_public_key_file(&text) {
        let file = manifest::format_public_key_file(&key);
        assert_eq!(manifest::parse_public_key_file(&file), Ok(key));
    }
    if let Ok(seed) = manifest::parse_secret_key_file(&text) {
        let file = manifest::format_secret_key_file(&seed);
        assert_eq!(manifest::parse_secret_key_file(&file), Ok(seed));
    }
}

/// The server reads with serde_json and the firmware with serde-json-core:
/// neither may panic; what serde_json reads survives its own round trip;
/// where both read a value, it is the same value.
fn both_parsers<T>(data: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + core::fmt::Debug,
{
    let server: Result<T, _> = serde_json::from_slice(data);
    let mut scratch = [0u8; airlift_protocol::UNESCAPE_BUFFER_LEN];
    let device: Result<(T, usize), _> = serde_json_core::from_slice_escaped(data, &mut scratch);
    if let Ok(v) = &server {
        let text = serde_json::to_vec(v).expect("a parsed value serializes");
        let again: T = serde_json::from_slice(&text).expect("own JSON parses");
        assert_eq!(&again, v, "serde_json round-trip");
        let mut buf = [0u8; 4096];
        if let Ok(n) = serde_json_core::to_slice(v, &mut buf) {
            let mut scratch = [0u8; airlift_protocol::UNESCAPE_BUFFER_LEN];
            let (core, _) = serde_json_core::from_slice_escaped::<T>(&buf[..n], &mut scratch)
                .expect("serde-json-core reads what it wrote");
            assert_eq!(&core, v, "serde-json-core round-trip");
        }
    }
    if let (Ok(a), Ok((b, used))) = (&server, &device)
        && data[*used..].iter().all(u8::is_ascii_whitespace)
    {
        assert_eq!(a, b, "the server and the device read different values");
    }
}

fn protocol(data: &[u8]) {
    let (control, json) = split_control(data);
    match control % 6 {
        0 => both_parsers::<CheckIn>(json),
        1 => both_parsers::<CheckInAnswer>(json),
        2 => both_parsers::<EventBatch>(json),
        3 => both_parsers::<EventBatchAck>(json),
        4 => both_parsers::<EnrollRequest>(json),
        _ => both_parsers::<ErrorAnswer>(json),
    }
}

/// A provisioned device on a compact layout, made once.
struct Rig {
    flash: SimFlash,
    layout: Layout,
    blob: Vec<u8>,
    image: Vec<u8>,
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        let entry = |label, kind, subtype, offset, size| {
            PartitionEntry::new(label, kind, subtype, offset, size, 0).expect("valid entry")
        };
        let table = [
            entry("otadata", PartitionType::DATA, 0x00, 0xd000, 0x2000),
            entry("ota_0", PartitionType::APP, 0x10, 0x1_0000, 0x1_0000),
            entry("ota_1", PartitionType::APP, 0x11, 0x2_0000, 0x1_0000),
            entry(
                partition::AIRLIFT_DATA_LABEL,
                PartitionType::DATA,
                partition::AIRLIFT_DATA_SUBTYPE,
                0x3_0000,
                0x4000,
            ),
        ];
        let first = sim::test_image("1.0.0", 0, 3000);
        let image = sim::test_image("2.0.0", 1, 5000);
        let k = keys();
        let flash = sim::provision(&table, 0x4_0000, &first, &[k.public]).expect("provisions");
        let blob = sim::sign_image(&image, &k.signing, None, None).expect("signs");
        let layout = sim::layout_of(&table).expect("layout");
        Rig {
            flash,
            layout,
            blob,
            image,
        }
    })
}

fn data_partition(data: &[u8]) {
    let r = rig();
    let mut flash = r.flash.clone();
    let region = r.layout.data;
    let mut contents = vec![0xFFu8; region.size as usize];
    let n = data.len().min(contents.len());
    contents[..n].copy_from_slice(&data[..n]);
    flash.load(region.offset as usize, &contents);
    let config = Config {
        checkpoint_interval: 4096,
        ..Config::default()
    };
    for _ in 0..2 {
        let Ok(mut dev) = Device::open(&mut flash, config) else {
            return;
        };
        let _ = dev.status();
        let mut records = 0usize;
        let _ = dev.boot_log(|_| records += 1);
        assert!(
            records <= (region.size as usize / 64),
            "more boot records than slots"
        );
        if dev.boot(Some(AppSlot::Ota(0)), 7).is_err() {
            return;
        }
        if let Ok(mut install) = dev.begin(&r.blob) {
            let from = (install.resume_offset() as usize).min(r.image.len());
            let written = r.image[from..]
                .chunks(1000)
                .try_for_each(|c| install.write(c));
            if written.is_ok() {
                let _ = install.finish();
            }
        }
        let _ = dev.confirm();
        flash.power_cycle();
    }
}

/// The password the device page target's device has.
pub const PAGE_PASSWORD: &str = "s3cret";

fn device_page(data: &[u8]) {
    use airlift_client::page::{
        ManifestBuffer, PagePassword, PullRequest, Route, Tried, upload_manifest,
    };
    let (control, bytes) = split_control(data);
    match control % 5 {
        0 => {
            let Ok(header) = core::str::from_utf8(bytes) else {
                return;
            };
            let tried = Tried::of(Some(header));
            let checked = PagePassword::new(PAGE_PASSWORD).check(Some(header));
            match &checked {
                Ok(()) => assert_ne!(tried, Tried::Nothing, "let in without a password"),
                Err(e) => {
                    assert_eq!((e.status, e.code), (401, "unauthorized"));
                    assert!(e.challenge.is_some(), "a 401 without a challenge");
                    let none = e.message.as_str().starts_with("this device page needs");
                    assert_eq!(none, tried == Tried::Nothing, "{header:?}: {e:?}");
                }
            }
            // Only the password lets in, as Bearer or as Basic after the first colon.
            let bearer = header.strip_prefix("Bearer ").map(str::trim);
            let basic = header.strip_prefix("Basic ").and_then(|b| {
                let mut out = vec![0u8; b.len()];
                let n = base64_decode(b.trim().as_bytes(), &mut out).ok()?;
                let text = &out[..n];
                let colon = text.iter().position(|&c| c == b':')?;
                Some(text[colon + 1..].to_vec())
            });
            let right = bearer == Some(PAGE_PASSWORD)
                || (bearer.is_none() && basic.as_deref() == Some(PAGE_PASSWORD.as_bytes()));
            assert_eq!(checked.is_ok(), right, "{header:?}");
        }
        1 => {
            let Ok(header) = core::str::from_utf8(bytes) else {
                return;
            };
            let mut buf: ManifestBuffer = [0; _];
            match upload_manifest(Some(header), &mut buf) {
                Ok(m) => {
                    assert!(m.len() <= core::mem::size_of::<ManifestBuffer>());
                    let mut again = vec![0u8; header.len()];
                    let n = base64_decode(base64_encode(m).as_bytes(), &mut again)
                        .expect("what was decoded encodes and decodes again");
                    assert_eq!(&again[..n], m);
                }
                Err(e) => assert_eq!((e.status, e.code), (400, "signature")),
            }
        }
        2 => {
            let server = serde_json::from_slice::<PullRequest>(bytes);
            let mut scratch = [0u8; airlift_protocol::UNESCAPE_BUFFER_LEN];
            let device = serde_json_core::from_slice_escaped::<PullRequest>(bytes, &mut scratch);
            if let (Ok(a), Ok((b, used))) = (&server, &device)
                && bytes[*used..].iter().all(u8::is_ascii_whitespace)
            {
                assert_eq!(
                    a, b,
                    "the agent's page and the firmware's read different pulls"
                );
            }
        }
        3 => {
            let Ok(line) = core::str::from_utf8(bytes) else {
                return;
            };
            let (method, path) = line.split_once(' ').unwrap_or((line, "/"));
            let route = Route::of(method, path);
            if route == Route::Index {
                assert_eq!(path, "/");
            }
            // The API needs the password; the page and unknown paths do not
            // (a known path asked with a method it does not take is refused
            // behind the password too: it says nothing either way).
            let api = ["/api/status", "/api/upload", "/api/pull", "/api/reboot"].contains(&path);
            assert_eq!(
                route.needs_password(),
                api || route == Route::MethodNotAllowed,
                "{method} {path}"
            );
        }
        _ => gate(bytes),
    }
}

/// Wrong passwords from clients (each byte pair: a client and the time
/// since the last try, in tenths of a second), tried whenever the gate
/// says they may: over any window, no client and no password gets more
/// tries than its rule's burst and refill allow.
fn gate(bytes: &[u8]) {
    use airlift_client::page::{CLIENT_RULE, Gate, PASSWORD_RULE};
    use airlift_protocol::throttle::Rule;
    let mut gate = Gate::<256>::default();
    let mut now = 1u64;
    let mut tries: Vec<(u8, u64)> = Vec::new();
    for pair in bytes.chunks_exact(2).take(400) {
        let (client, dt) = (pair[0], u64::from(pair[1]) * 100);
        now += dt;
        let key = [client; 16];
        if gate.wait_ms(Some(&key), now) == 0 {
            gate.failed(Some(&key), now);
            tries.push((client, now));
        }
    }
    let within = |rule: Rule, times: &[u64]| {
        for i in 0..times.len() {
            for j in i..times.len() {
                let allowed = u64::from(rule.burst) + (times[j] - times[i]) / rule.interval_ms;
                assert!(
                    (j - i + 1) as u64 <= allowed,
                    "{} tries from {} ms to {} ms",
                    j - i + 1,
                    times[i],
                    times[j]
                );
            }
        }
    };
    let all: Vec<u64> = tries.iter().map(|t| t.1).collect();
    within(PASSWORD_RULE, &all);
    for client in 0..=255u8 {
        let mine: Vec<u64> = tries
            .iter()
            .filter(|t| t.0 == client)
            .map(|t| t.1)
            .collect();
        within(CLIENT_RULE, &mine);
    }
}
