//! Errors as an operator reads them: one line with every cause (`connecting to 127.0.0.1:9: Connection
//! refused (os error 111)`), for the log, the audit detail of a failed delivery, and `ldap check`.
//! Error types here never repeat their cause in their own text, so nothing is said twice.

/// `error` and its chain of sources, joined by `: `.
pub fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
