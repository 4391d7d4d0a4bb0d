//! ESP-IDF partition table: binary and CSV forms.
