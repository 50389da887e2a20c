//! The file store's record decoder on any bytes: never panics, and whatever it decodes
//! encodes again to bytes that decode to the same entry.

#![no_main]

use cnerium_store_file::format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // As a whole frame: magic, length and checksum first, so random bytes rarely pass;
    // the payload decoder below is reached directly.
    if let Ok(entry) = format::decode_frame(bytes) {
        let frame = format::encode_frame(&entry).expect("a decoded entry encodes");
        assert_eq!(format::decode_frame(&frame), Ok(entry));
    }
    let _ = format::check_frame(bytes);
    let _ = format::segment_version(bytes);

    if let Ok(entry) = format::decode_payload(bytes) {
        let payload = format::encode_payload(&entry).expect("a decoded entry encodes");
        assert_eq!(
            format::decode_payload(&payload).as_ref(),
            Ok(&entry),
            "decode, encode, decode gives the same entry"
        );
        assert_eq!(format::decode_frame(&format::frame(&payload)), Ok(entry));
    }
});
