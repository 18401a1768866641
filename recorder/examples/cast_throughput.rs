//! How fast [`CastWriter`] (or, with `exec`, [`ExecWriter`]) records bulk output: writes MB megabytes of one
//! kind of output in 32 KiB chunks (the size of an SSH data packet) and prints input MB/s and the size of the
//! recording. `bench/ssh.sh` measures the whole path; this isolates the recorder:
//!
//! ```text
//! cargo run --release -p chaperone-recorder --example cast_throughput -- [zeros|text|binary|utf8] [MB] [DIR] [cast|exec]
//! ```
//!
//! `zeros` is what `head -c N /dev/zero` sends (every byte a NUL, `\u0000` in JSON); `text` is printable ASCII
//! with line breaks; `binary` is pseudo-random bytes (mostly invalid UTF-8); `utf8` is accented text and
//! emoji split across chunks. The file is written under DIR (default: the temp dir) and removed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chaperone_recorder::{CastHeader, CastWriter, ExecHeader, ExecWriter, Finished};

const CHUNK: usize = 32 * 1024;

fn chunk(kind: &str) -> Result<Vec<u8>, String> {
    Ok(match kind {
        "zeros" => vec![0; CHUNK],
        "text" => b"drwxr-xr-x 2 service service 4096 Nov 23 10:00 logs\r\n"
            .iter()
            .copied()
            .cycle()
            .take(CHUNK)
            .collect(),
        "binary" => {
            let mut state = 0x2545_f491_4f6c_dd1du64;
            (0..CHUNK)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 32) as u8
                })
                .collect()
        }
        "utf8" => "Température: 37 °C — ok ✓ 😀\r\n"
            .bytes()
            .cycle()
            .take(CHUNK)
            .collect(),
        other => return Err(format!("unknown kind {other} (zeros, text, binary, utf8)")),
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let kind = args.next().unwrap_or_else(|| "zeros".into());
    let mb: usize = args.next().map_or(Ok(200), |s| s.parse())?;
    let dir = args.next().map_or_else(std::env::temp_dir, Into::into);
    let data = chunk(&kind)?;
    let format = args.next().unwrap_or_else(|| "cast".into());
    let path = dir.join(format!("cast-throughput-{}.{format}", std::process::id()));
    let command = Some(format!("head -c {mb}M {kind}"));
    let chunks = mb * 1_000_000 / CHUNK;
    let at = |i: usize| Duration::from_micros(i as u64 * 100);
    let start;
    let done: Finished = match format.as_str() {
        "cast" => {
            let header = CastHeader {
                width: 80,
                height: 24,
                timestamp: 0,
                title: None,
                command,
                env: BTreeMap::new(),
                markers_attributed: true,
            };
            let mut writer = CastWriter::create(&path, header)?;
            start = Instant::now();
            for i in 0..chunks {
                writer.output(at(i), &data)?;
            }
            writer.finish()?
        }
        "exec" => {
            let header = ExecHeader {
                timestamp: 0,
                title: None,
                command,
                env: BTreeMap::new(),
            };
            let mut writer = ExecWriter::create(&path, &header)?;
            start = Instant::now();
            for i in 0..chunks {
                writer.stdout(at(i), &data)?;
            }
            writer.finish()?
        }
        other => return Err(format!("unknown format {other} (cast, exec)").into()),
    };
    let secs = start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    let input = (chunks * CHUNK) as f64;
    println!(
        "{kind} as {format}: {:.0} MB in {secs:.3} s = {:.0} MB/s of output recorded; file {:.0} MB ({:.2} bytes per byte)",
        input / 1e6,
        input / 1e6 / secs,
        done.bytes as f64 / 1e6,
        done.bytes as f64 / input
    );
    Ok(())
}
