//! Where things are on flash: OTA slots, otadata and Airlift's data partition.

use core::fmt;

use airlift_format::otadata::BootTarget;

/// Most OTA app slots ESP-IDF supports (`ota_0` ..= `ota_15`).
pub const MAX_OTA_SLOTS: usize = 16;

/// Bytes at the end of Airlift's data partition that hold the device
/// client's records (`airlift-client`: its notes and provisioned settings,
/// two sectors each), when the partition is large enough for them and the
/// engine's log: four 4 KiB sectors.
pub const CLIENT_RECORDS_LEN: u32 = 4 * 4096;
/// The smallest Airlift data partition that holds the client's records
/// beside the engine's log (which needs two sectors): 24 KiB.
pub const MIN_DATA_WITH_RECORDS: u32 = CLIENT_RECORDS_LEN + 2 * 4096;

/// A region of flash: absolute offset and size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Region {
    /// Absolute flash offset.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

impl Region {
    /// A region at `offset` of `size` bytes.
    pub const fn new(offset: u32, size: u32) -> Region {
        Region { offset, size }
    }

    /// One past the last byte.
    pub const fn end(&self) -> u32 {
        self.offset + self.size
    }
}

/// An application partition the bootloader can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AppSlot {
    /// The factory app partition.
    Factory,
    /// OTA app slot `ota_N`.
    Ota(u8),
}

impl AppSlot {
    /// One-byte code used in Airlift's records: the OTA index, or 0xFE for factory.
    pub(crate) const fn code(self) -> u8 {
        match self {
            AppSlot::Factory => 0xFE,
            AppSlot::Ota(n) => n,
        }
    }

    /// Inverse of [`AppSlot::code`].
    pub(crate) const fn from_code(code: u8) -> AppSlot {
        match code {
            0xFE => AppSlot::Factory,
            n => AppSlot::Ota(n),
        }
    }
}

impl fmt::Display for AppSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppSlot::Factory => f.write_str("factory"),
            AppSlot::Ota(n) => write!(f, "ota_{n}"),
        }
    }
}

/// The partitions the engine works with, read from the partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// The otadata partition (two 4 KiB sectors).
    pub otadata: Region,
    /// OTA app slots `ota_0 .. ota_{app_count-1}`.
    pub slots: [Region; MAX_OTA_SLOTS],
    /// Number of OTA app slots.
    pub app_count: u8,
    /// The factory app partition, when the table has one.
    pub factory: Option<Region>,
    /// The engine's log in Airlift's data partition (label `airlift`, type
    /// data, subtype 0x40): the whole partition, or all of it but the
    /// client's records at its end.
    pub data: Region,
    /// The device client's records: the last [`CLIENT_RECORDS_LEN`] bytes
    /// of Airlift's data partition, when it is at least
    /// [`MIN_DATA_WITH_RECORDS`] long. Airlift keeps everything of its own
    /// in its one partition, so an app's `nvs` stays the app's.
    pub records: Option<Region>,
}

impl Layout {
    /// The region of an app slot, when it exists.
    pub fn slot(&self, slot: AppSlot) -> Option<Region> {
        match slot {
            AppSlot::Factory => self.factory,
            AppSlot::Ota(n) if n < self.app_count => Some(self.slots[usize::from(n)]),
            AppSlot::Ota(_) => None,
        }
    }

    /// The app slot that holds flash `offset`: how firmware names the slot
    /// it runs from, given the flash address the bootloader mapped its code
    /// from (as ESP-IDF's `esp_ota_get_running_partition` does). `None` for
    /// an offset outside every app slot.
    pub fn slot_at(&self, offset: u32) -> Option<AppSlot> {
        let holds = |r: &Region| r.size > 0 && offset >= r.offset && offset < r.end();
        if self.factory.as_ref().is_some_and(holds) {
            return Some(AppSlot::Factory);
        }
        (0..self.app_count)
            .find(|&n| holds(&self.slots[usize::from(n)]))
            .map(AppSlot::Ota)
    }

    /// What an ESP-IDF bootloader starts from for a [`BootTarget`]: the OTA
    /// slot, or for a fallback the factory app when present, else `ota_0`.
    pub fn resolve(&self, target: BootTarget) -> AppSlot {
        match target {
            BootTarget::Ota(n) => AppSlot::Ota(n),
            BootTarget::Fallback if self.factory.is_some() => AppSlot::Factory,
            BootTarget::Fallback => AppSlot::Ota(0),
        }
    }

    /// The slots an ESP-IDF bootloader tries, in order, when otadata selects
    /// `selected` (`bootloader_utility_load_boot_image`): the selected slot,
    /// then lower OTA slots down to the factory app, then higher OTA slots.
    /// It starts the first that holds a valid image. Slots the table does
    /// not have are left out.
    pub fn boot_order(&self, selected: AppSlot) -> impl Iterator<Item = AppSlot> + '_ {
        let start: i32 = match selected {
            AppSlot::Factory => -1,
            AppSlot::Ota(n) => i32::from(n),
        };
        (-1..=start)
            .rev()
            .chain(start + 1..i32::from(self.app_count))
            .map(|i| match u8::try_from(i) {
                Ok(n) => AppSlot::Ota(n),
                Err(_) => AppSlot::Factory,
            })
            .filter(|&slot| self.slot(slot).is_some())
    }

    /// The slot an update goes to when running from `running`, as
    /// `esp_ota_get_next_update_partition` picks it: the OTA slot after the
    /// running one, `ota_0` when running the factory app.
    pub fn next_update_slot(&self, running: AppSlot) -> u8 {
        match running {
            AppSlot::Factory => 0,
            AppSlot::Ota(n) => {
                if self.app_count == 0 {
                    0
                } else {
                    (n + 1) % self.app_count
                }
            }
        }
    }
}

impl Layout {
    /// Reads the partition table at `table_offset` (0x8000 on ESP32) one
    /// 32-byte row at a time: the table is never held in RAM as a whole.
    pub fn read<F: embedded_storage::nor_flash::ReadNorFlash>(
        flash: &mut F,
        table_offset: u32,
    ) -> Result<Layout, crate::Error> {
        let mut rows = PartitionRows::new(flash, table_offset);
        let layout = airlift_format::partition::OtaLayout::from_entries(&mut rows);
        if let Some(e) = rows.failure {
            return Err(e);
        }
        Layout::from_ota_layout(&layout.map_err(crate::Error::PartitionTable)?)
    }

    /// Converts the format crate's view of a table into the engine's.
    pub fn from_ota_layout(
        l: &airlift_format::partition::OtaLayout,
    ) -> Result<Layout, crate::Error> {
        let region = |(offset, size): (u32, u32)| Region::new(offset, size);
        let otadata = l.otadata.map(region).ok_or(crate::Error::NoOtadata)?;
        let partition = l
            .airlift_data
            .map(region)
            .ok_or(crate::Error::NoDataPartition)?;
        let (data, records) = split_data_partition(partition);
        if l.app_count == 0 {
            return Err(crate::Error::NoOtaSlots);
        }
        let mut slots = [Region::default(); MAX_OTA_SLOTS];
        for (out, slot) in slots.iter_mut().zip(l.slots.iter()) {
            if let Some(s) = slot {
                *out = region(*s);
            }
        }
        Ok(Layout {
            otadata,
            slots,
            app_count: l.app_count,
            factory: l.factory.map(region),
            data,
            records,
        })
    }
}

/// Airlift's data partition as the engine's log and, when it is large
/// enough, the client's records at its end.
fn split_data_partition(partition: Region) -> (Region, Option<Region>) {
    if partition.size < MIN_DATA_WITH_RECORDS {
        return (partition, None);
    }
    let log = Region::new(partition.offset, partition.size - CLIENT_RECORDS_LEN);
    (log, Some(Region::new(log.end(), CLIENT_RECORDS_LEN)))
}

/// The partition table's entries read from flash one 32-byte row at a
/// time, in table order (the table is never held in RAM as a whole). The
/// rows end at the table's end or at the first problem, which is then in
/// [`PartitionRows::failure`].
pub struct PartitionRows<'f, F> {
    flash: &'f mut F,
    at: u32,
    reader: airlift_format::partition::TableReader,
    /// Why the rows ended early: a flash error or a malformed table.
    pub failure: Option<crate::Error>,
}

impl<'f, F: embedded_storage::nor_flash::ReadNorFlash> PartitionRows<'f, F> {
    /// The table at `table_offset` (0x8000 on ESP32).
    pub fn new(flash: &'f mut F, table_offset: u32) -> Self {
        PartitionRows {
            flash,
            at: table_offset,
            reader: airlift_format::partition::TableReader::new(),
            failure: None,
        }
    }
}

impl<F: embedded_storage::nor_flash::ReadNorFlash> Iterator for PartitionRows<'_, F> {
    type Item = airlift_format::partition::PartitionEntry;

    fn next(&mut self) -> Option<Self::Item> {
        use airlift_format::partition::ENTRY_LEN;
        while self.failure.is_none() && !self.reader.is_done() {
            let mut row = [0u8; ENTRY_LEN];
            if let Err(e) = self.flash.read(self.at, &mut row) {
                self.failure = Some(crate::error::flash_err(e));
                return None;
            }
            self.at += ENTRY_LEN as u32;
            match self.reader.push(&row) {
                Ok(Some(entry)) => return Some(entry),
                Ok(None) => {}
                Err(e) => self.failure = Some(crate::Error::PartitionTable(e)),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(app_count: u8, factory: bool) -> Layout {
        let mut slots = [Region::default(); MAX_OTA_SLOTS];
        for (i, slot) in slots.iter_mut().take(usize::from(app_count)).enumerate() {
            *slot = Region::new(0x20_0000 + i as u32 * 0x10_0000, 0x10_0000);
        }
        Layout {
            otadata: Region::new(0xD000, 0x2000),
            slots,
            app_count,
            factory: factory.then_some(Region::new(0x1_0000, 0x10_0000)),
            data: Region::new(0xF000, 0x1000),
            records: None,
        }
    }

    #[test]
    fn the_clients_records_take_the_last_four_sectors_of_a_large_enough_data_partition() {
        let cases = [
            // (partition size, engine log size, records)
            (0x2000, 0x2000, None),
            (0x5000, 0x5000, None),
            (0x6000, 0x2000, Some(Region::new(0x31_2000, 0x4000))),
            (0x1_0000, 0xC000, Some(Region::new(0x31_C000, 0x4000))),
        ];
        for (size, log, records) in cases {
            let (data, got) = split_data_partition(Region::new(0x31_0000, size));
            assert_eq!(
                (data, got),
                (Region::new(0x31_0000, log), records),
                "{size:#x}"
            );
        }
    }

    fn check<const N: usize>(l: &Layout, selected: AppSlot, expected: [AppSlot; N]) {
        let mut got = [AppSlot::Factory; MAX_OTA_SLOTS + 1];
        let mut n = 0;
        for slot in l.boot_order(selected) {
            got[n] = slot;
            n += 1;
        }
        assert_eq!(&got[..n], &expected[..], "selected {selected}");
    }

    #[test]
    fn the_slot_at_a_flash_offset_is_the_app_partition_that_holds_it() {
        use AppSlot::{Factory, Ota};
        let l = layout(3, true);
        let cases = [
            (0x1_0000, Some(Factory)),
            (0x10_FFFF, Some(Factory)),
            (0x20_0000, Some(Ota(0))),
            (0x28_0000, Some(Ota(0))),
            (0x30_0000, Some(Ota(1))),
            (0x4F_FFFF, Some(Ota(2))),
            (0x50_0000, None),
            (0xD000, None),
            (0x0, None),
        ];
        for (offset, expected) in cases {
            assert_eq!(l.slot_at(offset), expected, "offset {offset:#x}");
        }
        assert_eq!(layout(2, false).slot_at(0x1_0000), None, "no factory app");
    }

    #[test]
    fn the_bootloader_tries_the_selected_slot_then_lower_ones_then_higher_ones() {
        use AppSlot::{Factory, Ota};
        let with_factory = layout(3, true);
        check(&with_factory, Ota(1), [Ota(1), Ota(0), Factory, Ota(2)]);
        check(&with_factory, Factory, [Factory, Ota(0), Ota(1), Ota(2)]);
        check(&with_factory, Ota(2), [Ota(2), Ota(1), Ota(0), Factory]);
        // No factory app: it is skipped, not tried.
        let two_ota = layout(2, false);
        check(&two_ota, Ota(1), [Ota(1), Ota(0)]);
        check(&two_ota, Ota(0), [Ota(0), Ota(1)]);
    }
}
