#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| chaperone_fuzz::smtp_reply(data));
