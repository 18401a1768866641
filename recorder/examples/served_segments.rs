//! Writes a recording the way a session page serves it to asciinema-player ("segmented" format):
//! `OUT/play.json` and `OUT/seg-N.json`, each segment as `chaperone_recorder::playback::bounded_events`
//! gives it when the index says the recording must be bounded, else as recorded (`raw` gives every
//! segment as recorded, as builds before the budget did). No idle time limit. For bench/player.sh.
//!
//!     cargo run --release -p chaperone-recorder --example served_segments -- CAST OUT [raw]

use chaperone_recorder::playback::{Format, bounded_events, index_recording, segment_events};
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(cast), Some(out)) = (args.get(1), args.get(2)) else {
        return Err("usage: served_segments CAST OUT [raw]".into());
    };
    let raw = args.get(3).is_some_and(|a| a == "raw");
    std::fs::create_dir_all(out)?;
    let file = std::fs::read(cast)?;
    let (index, _) = index_recording(Format::Asciicast, &file[..], |_, _, _| {})?;
    let header = &file[..usize::try_from(index.header_len)?];
    let mut segments = Vec::new();
    let last = index.segments.len().saturating_sub(1);
    for (n, seg) in index.segments.iter().enumerate() {
        let body = &file[usize::try_from(seg.offset)?..usize::try_from(seg.offset + seg.len)?];
        let events = segment_events(Format::Asciicast, header, body, seg.start)?;
        let events = if !raw && index.bounded() {
            bounded_events(events, seg)
        } else {
            events
        };
        let mut events: Vec<_> = events
            .into_iter()
            .map(|e| json!([e.time, e.code.to_string(), e.data]))
            .collect();
        if n == last {
            events.push(json!([index.duration, "o", ""]));
        }
        let snapshot = json!({"cols": seg.cols, "rows": seg.rows, "init": seg.init});
        std::fs::write(
            format!("{out}/seg-{n}.json"),
            json!({"snapshot": snapshot, "events": events}).to_string(),
        )?;
        segments.push(json!({"start": seg.start, "url": format!("seg-{n}.json")}));
    }
    let play = json!({"version": 1, "term": {"cols": index.cols, "rows": index.rows},
                      "duration": index.duration, "markers": [], "segments": segments});
    std::fs::write(format!("{out}/play.json"), play.to_string())?;
    println!(
        "{} segments, refused {}, resizes delayed {}, bounded {}",
        index.segments.len(),
        index.refused,
        index.resizes_delayed,
        index.bounded()
    );
    Ok(())
}
