//! HTML building: [`esc`] for every piece of user-supplied text, and [`page`] for the common layout
//! (navigation, the live-update script, labelled landmarks). Pages are plain strings built with
//! `format!`: every `{}` that holds data goes through `esc`.

use std::fmt::Write as _;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // A bidirectional override or a line separator (stored before free text refused them, or
            // from the directory) would reorder what the page shows around it.
            c if chaperone_model::model::reorders_text(c) => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// Who is signed in, for the header (None on the sign-in and enrollment pages).
pub struct Viewer<'a> {
    pub name: &'a str,
    pub role: &'a str,
    pub csrf: &'a str,
}

/// A whole page: `title`, the active nav entry, and `main` (already escaped HTML). A signed-in page
/// refreshes itself live (see `static/app.js`).
pub fn page(title: &str, active: &str, viewer: Option<&Viewer<'_>>, main: &str) -> String {
    page_with(title, active, viewer, main, viewer.is_some())
}

/// [`page`], with the live refresh chosen: a page that answers a POST (a confirmation) has no
/// address to read again.
pub fn page_with(
    title: &str,
    active: &str,
    viewer: Option<&Viewer<'_>>,
    main: &str,
    live: bool,
) -> String {
    let mut nav = String::new();
    if let Some(v) = viewer {
        let _ = write!(nav, "<nav aria-label=\"Main\"><ul>");
        for (href, label) in [
            ("/requests", "Requests"),
            ("/decisions", "Decisions"),
            ("/grants", "Active grants"),
            ("/sessions", "Live sessions"),
            ("/history", "Session history"),
        ] {
            let current = if label == active {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(nav, "<li><a href=\"{href}\"{current}>{label}</a></li>");
        }
        let _ = write!(
            nav,
            "</ul><form method=\"post\" action=\"/logout\" class=\"who\"><a href=\"/account\">{} ({})</a>\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form></nav>",
            esc(v.name),
            esc(v.role),
            esc(v.csrf)
        );
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · chaperone</title><link rel=\"stylesheet\" href=\"/static/app.css\">\
         <script src=\"/static/app.js\" defer></script></head>\
         <body{}><header><p class=\"brand\">chaperone</p>{nav}</header>\
         <main id=\"main\" aria-live=\"polite\">{main}</main></body></html>\n",
        esc(title),
        if live { " data-live=\"1\"" } else { "" }
    )
}

/// A span of time for people, to the two largest units: `45s`, `12m`, `1h 5m`, `3d 2h`.
pub fn span(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// A byte count for people: `512 B`, `3.4 KiB`, `12.0 MiB`.
pub fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        n if n < 1024.0 => format!("{n} B"),
        n if n < 1024.0 * 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n if n < 1024.0 * 1024.0 * 1024.0 => format!("{:.1} MiB", n / 1024.0 / 1024.0),
        n => format!("{:.1} GiB", n / 1024.0 / 1024.0 / 1024.0),
    }
}

/// A countdown to `secs` from now that the page's script keeps going (`data-left`, read once when
/// the page or its refresh arrives); without JavaScript it says what it said when the page was made.
pub fn countdown(secs: i64) -> String {
    format!(
        "<span class=\"left\" data-left=\"{}\">{}</span>",
        secs.max(0),
        span(secs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_bytes_read_as_people_say_them() {
        assert_eq!(span(-5), "0s");
        assert_eq!(span(45), "45s");
        assert_eq!(span(12 * 60 + 5), "12m");
        assert_eq!(span(3600), "1h");
        assert_eq!(span(3900), "1h 5m");
        assert_eq!(span(3 * 86_400 + 7200 + 60), "3d 2h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3500), "3.4 KiB");
        assert_eq!(bytes(12 * 1024 * 1024), "12.0 MiB");
    }

    #[test]
    fn scripts_in_text_render_inert() {
        assert_eq!(
            esc("<script>alert(1)</script> & \"x\" 'y'"),
            "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot; &#39;y&#39;"
        );
        // Text that would reorder what is around it shows as the replacement character.
        assert_eq!(esc("ok \u{202e}kcehc\u{202c}"), "ok \u{fffd}kcehc\u{fffd}");
        assert_eq!(esc("Prüfung"), "Prüfung");
    }
}
