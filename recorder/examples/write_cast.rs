//! Writes a short demo recording to the path given as the first argument and prints its digest: output with
//! colours and non-ASCII text split across chunks, input, a resize and a marker. Used to check that stock
//! players accept what [`CastWriter`] produces:
//!
//! ```text
//! cargo run -p chaperone-recorder --example write_cast -- /tmp/demo.cast
//! asciinema cat /tmp/demo.cast </dev/null
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use chaperone_recorder::{CastHeader, CastWriter, parse_cast, sha256_file};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args_os()
        .nth(1)
        .ok_or("usage: write_cast FILE (the file must not exist)")?;
    let header = CastHeader {
        width: 80,
        height: 24,
        timestamp: 1_763_900_000,
        title: Some("mri-01 — démo".into()),
        command: None,
        env: BTreeMap::from([
            ("SHELL".into(), "/bin/bash".into()),
            ("TERM".into(), "xterm-256color".into()),
        ]),
        markers_attributed: false,
    };
    let ms = Duration::from_millis;
    let mut cast = CastWriter::create(&path, header)?;
    cast.output(ms(0), b"\x1b[1;32mvendor@mri-01\x1b[0m:~$ ")?;
    cast.input(ms(800), b"cat status\r")?;
    cast.output(ms(820), b"cat status\r\n")?;
    let status = "Gerät: Magnetresonanz ✓ — température 21 °C 😀\r\n".as_bytes();
    let (a, b) = status.split_at(6); // inside "ä"
    cast.output(ms(900), a)?;
    cast.output(ms(901), b)?;
    cast.resize(ms(1200), 120, 40)?;
    cast.marker(ms(1300), "grant g-42 expires in 5 min")?;
    cast.output(
        ms(1400),
        b"broken byte: \xff\r\n\x1b[1;32mvendor@mri-01\x1b[0m:~$ ",
    )?;
    let finished = cast.finish()?;

    assert_eq!(sha256_file(&finished.path)?, finished.sha256_hex);
    let parsed = parse_cast(std::fs::File::open(&finished.path)?)?;
    println!(
        "{} {} bytes, {} events, sha256 {}",
        finished.path.display(),
        finished.bytes,
        parsed.events.len(),
        finished.sha256_hex
    );
    Ok(())
}
