//! ESP-IDF otadata: `esp_ota_select_entry_t` and the bootloader's slot choice.
