#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| llmux_fuzz::check_rewrite(data));
