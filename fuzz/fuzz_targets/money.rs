#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| withholding_fuzz::money::check(data));
