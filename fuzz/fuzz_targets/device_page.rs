#![no_main]
use airlift_fuzz::Target;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| Target::DevicePage.run(data));
