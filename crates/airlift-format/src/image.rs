//! ESP-IDF application image: header, segments, checksum, appended SHA-256, app descriptor.
