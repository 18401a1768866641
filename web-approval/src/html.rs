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

/// A whole page: `title`, the active nav entry, and `main` (already escaped HTML).
pub fn page(title: &str, active: &str, viewer: Option<&Viewer<'_>>, main: &str) -> String {
    let mut nav = String::new();
    if let Some(v) = viewer {
        let _ = write!(nav, "<nav aria-label=\"Main\"><ul>");
        for (href, label) in [
            ("/requests", "Requests"),
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
        if viewer.is_some() {
            " data-live=\"1\""
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_in_text_render_inert() {
        assert_eq!(
            esc("<script>alert(1)</script> & \"x\" 'y'"),
            "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;x&quot; &#39;y&#39;"
        );
    }
}
