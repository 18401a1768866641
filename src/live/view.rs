//! What a live view's watcher is sent: a live session's output and window changes as the playback
//! index's emulator gives them ([`Emulator::output_given`]), not as the device sent them. The page's
//! player runs its own terminal emulator, with no budget and upstream avt's quadratic reflow, and the
//! device's output is the vendor's to choose: screen fills and clears in a loop, or a wide screen
//! narrowed to one column and back, cost it seconds for a few bytes and froze the watcher's tab for as
//! long as the session went on. Held to the emulator's budget, a watcher's page does no more work than
//! the session's output and time pay for; the rule is the one a recording's segments are served by
//! ([`chaperone_recorder::playback::bounded_events`]).
//!
//! Entry point: [`Views::open`] (the node's views, in `LiveSessions`). Each view runs its emulator on a
//! thread of its own at background priority (the relay and the recorders come first; a view that falls
//! behind skips ahead to the screen as it is now), at most [`MAX_VIEWS`] on a node. The session never
//! waits for a view.

use chaperone_recorder::Utf8Stream;
use chaperone_recorder::emulator::{Carried, Emulator, redraw_pause};
use chaperone_web_approval::places::{Full, Place, Places};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::tap::{Start, Tap, TapEvent, WeakTap};

/// Live views open at once on a node, at most: each holds a thread and an emulator (up to ~16 MB for the
/// largest screen).
pub const MAX_VIEWS: usize = 16;
/// Live views one staff member may hold open at once on a node, so that one person's tabs (or a tab
/// stuck on a page) do not take every view from the others.
pub const MAX_VIEWS_EACH: usize = 4;

/// Events a view holds for a page that reads slowly; past them the view waits and, the session going
/// on, falls behind and skips ahead.
const QUEUE: usize = 64;

/// One thing a watcher is sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Shown {
    /// Start (or start again) from this screen: a terminal of `cols` x `rows` given `init`.
    Reset {
        cols: u16,
        rows: u16,
        time: f64,
        init: String,
    },
    /// Output at a time (seconds since the session started).
    Output(f64, String),
    /// The terminal as shown is now `cols` x `rows`.
    Resize(f64, u16, u16),
}

/// Why a view was not opened.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("{0} live views are open on this node: close one and try again")]
    TooMany(usize),
    #[error("you have {0} live views open on this node: close one and try again")]
    TooManyOfYours(usize),
    #[error("cannot start a live view's thread: {0}")]
    Thread(std::io::Error),
}

/// The live views open on a node, in all and by staff member (`chaperone_web_approval::places`).
#[derive(Debug, Clone)]
pub struct Views(Places);

impl Default for Views {
    fn default() -> Views {
        Views::new(MAX_VIEWS, MAX_VIEWS_EACH)
    }
}

impl From<Full> for ViewError {
    fn from(full: Full) -> ViewError {
        match full {
            Full::Yours(n) => ViewError::TooManyOfYours(n),
            Full::All(n) => ViewError::TooMany(n),
        }
    }
}

impl Views {
    /// At most `max` open at once, `each` of them one staff member's.
    pub fn new(max: usize, each: usize) -> Views {
        Views(Places::new(max, each))
    }

    /// Views open now.
    #[cfg(test)]
    fn open_now(&self) -> usize {
        self.0.taken()
    }

    /// Whether a view for `who` would be opened now (the page asks before it opens one: a refused
    /// stream of server-sent events can only show "loading"). Nothing is taken.
    pub fn room_for(&self, who: &str) -> Result<(), ViewError> {
        Ok(self.0.room_for(who)?)
    }

    fn take(&self, who: &str) -> Result<Place, ViewError> {
        Ok(self.0.take(who)?)
    }

    /// Opens a view of `tap`'s session for staff member `who`: the screen so far, then what follows,
    /// until the session ends (the channel closes) or the receiver is dropped (the view's thread then
    /// ends at once).
    pub fn open(&self, tap: &Tap, who: &str) -> Result<mpsc::Receiver<Shown>, ViewError> {
        let place = self.take(who)?;
        open_with(place, tap)
    }
}

fn open_with(place: Place, tap: &Tap) -> Result<mpsc::Receiver<Shown>, ViewError> {
    let (start, rx) = tap.watch();
    let weak = tap.downgrade();
    let (tx, out) = mpsc::channel(QUEUE);
    std::thread::Builder::new()
        .name("live-view".into())
        .spawn(move || {
            let _place = place;
            crate::search_index::background_priority();
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            else {
                tracing::warn!("a live view cannot start its event loop");
                return;
            };
            rt.block_on(run(start, rx, weak, tx));
        })
        .map_err(ViewError::Thread)?;
    Ok(out)
}

/// A view's emulator and the state of its stream.
struct View {
    emulator: Emulator,
    utf8: Utf8Stream,
}

impl View {
    /// A view from `start`: its recent output, from a line when older output was let go (so a sequence
    /// or a character is not cut in two), given through a fresh emulator, which holds the budgets the
    /// view's emulator had (`carried`: a view that falls behind over and over is not given full
    /// budgets each time) less the page's redraw of its whole terminal.
    fn reset(start: &Start, carried: Option<Carried>) -> (View, Shown) {
        let from = if start.cut {
            start
                .recent
                .iter()
                .position(|&b| b == b'\n')
                .map_or(0, |i| i + 1)
        } else {
            0
        };
        let (cols, rows) = (usize::from(start.cols), usize::from(start.rows));
        let carried = carried.map(|c| Carried { pending: None, ..c });
        let mut emulator = Emulator::showing(cols, rows, "", carried.as_ref());
        emulator.pay_redraw(cols, rows);
        let init =
            emulator.output_given(start.time, &String::from_utf8_lossy(&start.recent[from..]));
        let (cols, rows) = size(&emulator);
        (
            View {
                emulator,
                utf8: Utf8Stream::default(),
            },
            Shown::Reset {
                cols,
                rows,
                time: start.time,
                init,
            },
        )
    }

    /// What the watcher is sent for `event`: a resize where the emulator made one (one that waited for
    /// the budget may be made at an output), then the output as given.
    fn step(&mut self, event: TapEvent, shown: &mut Vec<Shown>) {
        // The alternate screen's text, read for the search index, is not a view's: dropped, so a long
        // session does not pile it up.
        self.emulator.take_lines().for_each(drop);
        let before = size(&self.emulator);
        let time = match event {
            TapEvent::Output(time, data) => {
                let text = self.utf8.decode(&data);
                let given = self.emulator.output_given(time, &text);
                self.resized(time, before, shown);
                shown.push(Shown::Output(time, given));
                return;
            }
            TapEvent::Resize(time, cols, rows) => {
                self.emulator
                    .resize(time, usize::from(cols), usize::from(rows));
                time
            }
        };
        self.resized(time, before, shown);
    }

    fn resized(&self, time: f64, before: (u16, u16), shown: &mut Vec<Shown>) {
        let now = size(&self.emulator);
        if now != before {
            shown.push(Shown::Resize(time, now.0, now.1));
        }
    }
}

/// The emulated terminal's size (within a recording's bounds, as the tap's sizes are).
fn size(e: &Emulator) -> (u16, u16) {
    let (c, r) = e.size();
    (
        u16::try_from(c).unwrap_or(u16::MAX),
        u16::try_from(r).unwrap_or(u16::MAX),
    )
}

async fn run(
    start: Start,
    mut rx: tokio::sync::broadcast::Receiver<TapEvent>,
    weak: WeakTap,
    tx: mpsc::Sender<Shown>,
) {
    let (mut view, first) = View::reset(&start, None);
    let mut last_start = tokio::time::Instant::now();
    if tx.send(first).await.is_err() {
        return;
    }
    let mut shown = Vec::new();
    loop {
        let event = tokio::select! {
            event = rx.recv() => event,
            () = tx.closed() => return,
        };
        match event {
            Ok(event) => view.step(event, &mut shown),
            // Too slow: skip ahead to the screen as it is now. Each fresh start is a redraw of the
            // page's whole terminal, so a session whose output outruns the view (a flood at the
            // largest screen) does not make the page redraw without pause: fresh starts are paced
            // as a recording's resizes are (a tenth of the time).
            Err(RecvError::Lagged(_)) => {
                let (cols, rows) = view.emulator.size();
                let ready = last_start + redraw_pause(cols, rows);
                tokio::select! {
                    () = tokio::time::sleep_until(ready) => {}
                    () = tx.closed() => return,
                }
                let Some(tap) = weak.upgrade() else { return };
                let (start, again) = tap.watch();
                drop(tap);
                rx = again;
                let first;
                let carried = view.emulator.carried();
                (view, first) = View::reset(&start, Some(carried));
                last_start = tokio::time::Instant::now();
                shown.push(first);
            }
            Err(RecvError::Closed) => return,
        }
        for s in shown.drain(..) {
            if tx.send(s).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "in a test, a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn next(out: &mut mpsc::Receiver<Shown>) -> Shown {
        out.blocking_recv().unwrap()
    }

    /// A watcher sees the screen so far, then output and window changes as they come; the view ends
    /// when the session does.
    #[test]
    fn a_view_shows_what_the_session_shows() {
        let tap = Tap::new(80, 24);
        tap.output(&Bytes::from_static(b"$ uptime\r\n"));
        let mut out = Views::default().open(&tap, "audrey").unwrap();
        assert!(
            matches!(next(&mut out), Shown::Reset { cols: 80, rows: 24, init, .. }
            if init == "$ uptime\r\n")
        );
        tap.output(&Bytes::from_static(b"up 3 days\r\n"));
        tap.resize(100, 30);
        assert!(matches!(next(&mut out), Shown::Output(_, s) if s == "up 3 days\r\n"));
        assert!(matches!(next(&mut out), Shown::Resize(_, 100, 30)));
        drop(tap);
        assert!(out.blocking_recv().is_none());
    }

    /// The device fills the largest screen over and over, and the vendor's client narrows it to one
    /// column and back: the watcher's page is given the fills the budget pays for (the rest cancelled)
    /// and never the narrowest window.
    #[test]
    fn a_view_is_held_to_what_the_session_pays_for() {
        let tap = Tap::new(1000, 500);
        let mut out = Views::default().open(&tap, "audrey").unwrap();
        assert!(matches!(next(&mut out), Shown::Reset { .. }));
        let fills = "\x1b#8".repeat(20_000);
        tap.output(&Bytes::from(fills));
        let line = Bytes::from("x".repeat(1000 * 499));
        for _ in 0..5 {
            tap.resize(1000, 500);
            tap.output(&line);
            tap.resize(999, 500);
            tap.resize(1, 500);
        }
        tap.output(&Bytes::from_static(b"done"));
        drop(tap);
        let mut given = Vec::new();
        while let Some(s) = out.blocking_recv() {
            given.push(s);
        }
        let output: String = given
            .iter()
            .filter_map(|s| match s {
                Shown::Output(_, o) => Some(o.as_str()),
                _ => None,
            })
            .collect();
        let filled = output.matches("\x1b#8").count();
        assert!(filled < 1000, "{filled} fills given");
        assert_eq!(output.matches("\x1b#\x18").count() + filled, 20_000);
        assert!(output.ends_with("done"));
        assert!(!given.iter().any(|s| matches!(s, Shown::Resize(_, 1, 500))));
    }

    /// A watcher who arrives late is given the screen so far through the same budget.
    #[test]
    fn a_late_watcher_is_given_the_recent_output_held_to_the_budget() {
        let tap = Tap::new(1000, 500);
        tap.output(&Bytes::from("\x1b#8".repeat(20_000)));
        let mut out = Views::default().open(&tap, "audrey").unwrap();
        let Shown::Reset { init, .. } = next(&mut out) else {
            panic!("no reset first")
        };
        assert!(init.matches("\x1b#8").count() < 1000);
    }

    /// A watcher who arrives after older output was let go starts at a line: the oldest chunk kept may
    /// start within one (or within a sequence or a character).
    #[test]
    fn a_late_watcher_starts_at_a_line() {
        let tap = Tap::new(400, 24);
        let stream = format!("{}\n", "x".repeat(299)).repeat(400);
        for chunk in stream.as_bytes().chunks(1000) {
            tap.output(&Bytes::copy_from_slice(chunk));
        }
        let mut out = Views::default().open(&tap, "audrey").unwrap();
        let Shown::Reset { init, .. } = next(&mut out) else {
            panic!("no reset first")
        };
        assert_eq!(init.split('\n').next().map(str::len), Some(299));
    }

    /// A view that starts again keeps the budgets it had: a session whose output makes its view fall
    /// behind over and over does not get full budgets for the page at each fresh start.
    #[test]
    fn a_fresh_start_keeps_the_budgets() {
        let start = Start {
            cols: 1000,
            rows: 500,
            time: 10.0,
            recent: "\x1b#8".repeat(1000).into_bytes(),
            cut: false,
        };
        let fills = |shown: &Shown| match shown {
            Shown::Reset { init, .. } => init.matches("\x1b#8").count(),
            _ => usize::MAX,
        };
        let drained = Carried {
            budget: 0,
            redraw: 0,
            paid_until: 10.0,
            pending: None,
        };
        assert_eq!(fills(&View::reset(&start, Some(drained)).1), 0);
        assert!(fills(&View::reset(&start, None).1) > 10);
    }

    /// A page that reads slowly never holds the session: its view falls behind and starts again from
    /// the screen as it is now (a second reset), then goes on.
    #[test]
    fn a_slow_page_skips_ahead() {
        let tap = Tap::new(80, 24);
        let mut out = Views::default().open(&tap, "audrey").unwrap();
        let chunk = Bytes::from_static(b"line\r\n");
        for _ in 0..super::super::tap::CAPACITY * 3 {
            tap.output(&chunk);
        }
        tap.output(&Bytes::from_static(b"last\r\n"));
        let mut resets = 0;
        loop {
            match next(&mut out) {
                Shown::Reset { init, .. } => {
                    resets += 1;
                    if init.contains("last") {
                        break;
                    }
                }
                Shown::Output(_, o) if o.contains("last") => break,
                _ => {}
            }
        }
        assert!(resets >= 2, "{resets} resets");
    }

    /// A session whose output outruns its view makes the page start again (a redraw of its whole
    /// terminal) no more often than a recording's resizes are made: at 400 x 120, 0.72 s apart.
    #[test]
    fn fresh_starts_are_paced() {
        let tap = Tap::new(400, 120);
        let opened = std::time::Instant::now();
        let mut out = Views::default().open(&tap, "audrey").unwrap();
        let chunk = Bytes::from_static(b"line\r\n");
        for _ in 0..super::super::tap::CAPACITY * 3 {
            tap.output(&chunk);
        }
        tap.output(&Bytes::from_static(b"last\r\n"));
        let mut resets = Vec::new();
        loop {
            match next(&mut out) {
                Shown::Reset { init, .. } => {
                    resets.push(opened.elapsed());
                    if init.contains("last") {
                        break;
                    }
                }
                Shown::Output(_, o) if o.contains("last") => break,
                _ => {}
            }
        }
        assert!(resets.len() >= 2, "{resets:?}");
        let pause = redraw_pause(400, 120);
        assert!(resets[1] >= pause, "{resets:?}, {pause:?}");
    }

    /// Views are bounded per node; one whose page went away ends at once, its session idle, and gives
    /// its place back.
    #[test]
    fn views_are_bounded_and_a_view_nobody_reads_gives_its_place_back() {
        let tap = Tap::new(80, 24);
        let views = Views::new(3, 2);
        let mut open: Vec<_> = (0..2)
            .map(|_| views.open(&tap, "audrey").unwrap())
            .collect();
        assert!(matches!(
            views.open(&tap, "audrey"),
            Err(ViewError::TooManyOfYours(2))
        ));
        open.push(views.open(&tap, "carol").unwrap());
        assert!(matches!(
            views.open(&tap, "dave"),
            Err(ViewError::TooMany(3))
        ));
        drop(open);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while views.open_now() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(views.open_now(), 0);
        let mut again = views.open(&tap, "audrey").unwrap();
        assert!(matches!(next(&mut again), Shown::Reset { .. }));
    }
}
