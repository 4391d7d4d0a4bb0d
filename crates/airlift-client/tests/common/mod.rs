//! A device on the simulated flash for the client's tests: Airlift's
//! default layout (the end of its `airlift` partition holds the notes), 1.0.0 in ota_0,
//! one trusted key; power-ons as the agent and the firmware do them.
#![allow(dead_code, clippy::unwrap_used)]

use airlift_client::notes::NoteStore;
use airlift_client::{BootStep, Client, Clock, Config, Journal};
use airlift_engine::sim::bootloader::{self, BootloaderKind};
use airlift_engine::sim::{FLASH_SIZE, SimFlash, provision, sign_image, test_image};
use airlift_engine::{Device, Layout, Region};
use airlift_format::manifest::{SigningKey, base64_encode, public_key_from_seed};
use airlift_format::partition::AIRLIFT_DEFAULT;
use airlift_protocol::Update;

pub const SEED: [u8; 32] = [7; 32];
pub const NVS: Region = airlift_client::sim::REGION;

/// Collects the client's narration.
#[derive(Default)]
pub struct Lines(pub Vec<String>);

impl Journal for Lines {
    fn log(&mut self, line: std::fmt::Arguments<'_>) {
        self.0.push(line.to_string());
    }
}

pub struct Rig {
    pub flash: SimFlash,
    pub layout: Layout,
    pub config: Config,
    pub clock: Clock,
}

pub fn config() -> Config {
    Config {
        max_attempts: 3,
        has_server: true,
        poll_ms: None,
        retry_delay_ms: 500,
        jitter: false,
        long_poll_seconds: 0,
    }
}

pub fn image(version: &str) -> Vec<u8> {
    test_image(version, 0, 20_000 + version.len() * 100)
}

pub fn signed(image: &[u8]) -> Vec<u8> {
    sign_image(image, &SigningKey::from_bytes(&SEED), None, None).unwrap()
}

pub fn sha(image: &[u8]) -> [u8; 32] {
    airlift_format::image::verify(image).unwrap().file_sha256
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The server's offer of `image` in `deployment`.
pub fn update(deployment: u64, image: &[u8]) -> Update {
    let version = airlift_format::image::verify(image)
        .unwrap()
        .app_desc
        .unwrap()
        .version()
        .to_owned();
    Update {
        deployment,
        manifest: base64_encode(&signed(image)).as_str().try_into().unwrap(),
        url: "/api/v1/device/artifacts/x".try_into().unwrap(),
        size: image.len() as u32,
        sha256: hex(&sha(image)).as_str().try_into().unwrap(),
        version: version.as_str().try_into().unwrap(),
    }
}

impl Rig {
    pub fn new() -> Rig {
        let flash = provision(
            &AIRLIFT_DEFAULT,
            FLASH_SIZE,
            &image("1.0.0"),
            &[public_key_from_seed(&SEED)],
        )
        .unwrap();
        let layout = airlift_engine::sim::layout_of(&AIRLIFT_DEFAULT).unwrap();
        Rig {
            flash,
            layout,
            config: config(),
            clock: Clock {
                now_ms: 1_000,
                unix_secs: 1_700_000_000,
            },
        }
    }

    pub fn dev(&mut self) -> Device<'static, &mut SimFlash> {
        let config = airlift_engine::Config {
            max_attempts: self.config.max_attempts,
            checkpoint_interval: 4096,
            ..airlift_engine::Config::default()
        };
        Device::with_layout(&mut self.flash, self.layout, config).unwrap()
    }

    /// A power-on: the bootloader, then a fresh client's boot.
    pub fn power_on(&mut self, lines: &mut Lines) -> (Client, BootStep) {
        self.flash.power_cycle();
        self.clock.unix_secs += 10;
        let boot = bootloader::boot(&mut self.flash, &self.layout, BootloaderKind::Plain).unwrap();
        let (slot, info) = boot.booted.unwrap();
        let mut client = Client::new(self.config, NoteStore::new(NVS).unwrap());
        let clock = self.clock;
        let step = client
            .boot(&mut self.dev(), boot.selected, slot, &info, clock, lines)
            .unwrap();
        (client, step)
    }

    /// Installs what `update` offers from bytes at hand, through the client.
    pub fn install(&mut self, client: &mut Client, update: &Update, image: &[u8]) {
        let clock = self.clock;
        let mut dev = self.dev();
        let attempt = client
            .begin_assigned(&mut dev, update, clock, &mut ())
            .unwrap()
            .unwrap();
        let mut session = client
            .start(&mut dev, &attempt, clock.now_ms, &mut ())
            .unwrap();
        session.write_all(image).unwrap();
        let done = client
            .finish_install(&mut session, &attempt, clock.now_ms, &mut ())
            .unwrap();
        assert!(done.is_some());
    }
}
