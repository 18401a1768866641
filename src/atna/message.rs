//! The DICOM PS3.15 A.5 `AuditMessage`: a plain tree and its XML.
//!
//! Entry point: [`AuditMessage::to_xml`]. The element order and the attribute names are PS3.15 A.5.1's
//! schema (coded values as `csd-code`, `codeSystemName`, `originalText`): `EventIdentification`,
//! one or more `ActiveParticipant`, one `AuditSourceIdentification`, then any
//! `ParticipantObjectIdentification`. Every text that came from outside (names, addresses, reasons) is
//! escaped, and characters XML 1.0 cannot carry at all (most C0 controls) become U+FFFD, so no audit
//! event can break the document or smuggle markup into the repository.

use std::fmt::Write as _;

/// A coded value (PS3.15 `CodedValueType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub system: &'static str,
    /// The code meaning (`originalText`, which the schema requires).
    pub meaning: &'static str,
}

/// A DICOM code (code system `DCM`, PS3.16).
pub const fn dcm(code: &'static str, meaning: &'static str) -> Code {
    Code {
        code,
        system: "DCM",
        meaning,
    }
}

/// `EventActionCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionCode {
    Create,
    Read,
    Update,
    Delete,
    Execute,
}

impl ActionCode {
    fn as_str(self) -> &'static str {
        match self {
            ActionCode::Create => "C",
            ActionCode::Read => "R",
            ActionCode::Update => "U",
            ActionCode::Delete => "D",
            ActionCode::Execute => "E",
        }
    }
}

/// `EventOutcomeIndicator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Success,
    MinorFailure,
    SeriousFailure,
    MajorFailure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::MinorFailure => "4",
            Outcome::SeriousFailure => "8",
            Outcome::MajorFailure => "12",
        }
    }
}

/// `NetworkAccessPointTypeCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessPoint {
    MachineName,
    IpAddress,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveParticipant {
    pub user_id: String,
    pub alternative_user_id: Option<String>,
    pub user_name: Option<String>,
    pub is_requestor: bool,
    pub access_point: Option<(String, AccessPoint)>,
    pub roles: Vec<Code>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParticipantObject {
    pub id: String,
    /// `ParticipantObjectTypeCode`: 1 person, 2 system object, 3 organisation, 4 other.
    pub type_code: u8,
    /// `ParticipantObjectTypeCodeRole` (1–26).
    pub role: u8,
    pub id_type: Code,
    pub name: String,
    /// `ParticipantObjectDetail` pairs; the value is base64-encoded in the XML, as the schema wants.
    pub details: Vec<(&'static str, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditMessage {
    pub event_id: Code,
    pub event_types: Vec<Code>,
    pub action: ActionCode,
    /// RFC 3339 / `xsd:dateTime`, UTC.
    pub date_time: String,
    pub outcome: Outcome,
    pub outcome_description: Option<String>,
    pub participants: Vec<ActiveParticipant>,
    pub source_id: String,
    pub enterprise_site_id: Option<String>,
    /// `AuditSourceTypeCode` (PS3.15 A.5.1.2.1: 6 is a security server).
    pub source_type: &'static str,
    pub objects: Vec<ParticipantObject>,
}

/// Text as XML may carry it: markup characters escaped (also in attributes, so `"` and `'` too), and
/// characters XML 1.0 forbids replaced with U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Kept as references so an attribute's whitespace survives normalisation.
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

fn code_attributes(out: &mut String, c: &Code) {
    let _ = write!(
        out,
        " csd-code=\"{}\" codeSystemName=\"{}\" originalText=\"{}\"",
        escape(c.code),
        escape(c.system),
        escape(c.meaning)
    );
}

fn coded(out: &mut String, element: &str, c: &Code) {
    let _ = write!(out, "<{element}");
    code_attributes(out, c);
    out.push_str("/>");
}

impl AuditMessage {
    /// The message as one line of XML (no declaration: a syslog collector stores it as it is).
    pub fn to_xml(&self) -> String {
        use base64::Engine as _;
        let mut out = String::with_capacity(1024);
        out.push_str("<AuditMessage>");
        let _ = write!(
            out,
            "<EventIdentification EventActionCode=\"{}\" EventDateTime=\"{}\" EventOutcomeIndicator=\"{}\">",
            self.action.as_str(),
            escape(&self.date_time),
            self.outcome.as_str()
        );
        coded(&mut out, "EventID", &self.event_id);
        for t in &self.event_types {
            coded(&mut out, "EventTypeCode", t);
        }
        if let Some(d) = &self.outcome_description {
            let _ = write!(
                out,
                "<EventOutcomeDescription>{}</EventOutcomeDescription>",
                escape(d)
            );
        }
        out.push_str("</EventIdentification>");
        for p in &self.participants {
            let _ = write!(
                out,
                "<ActiveParticipant UserID=\"{}\" UserIsRequestor=\"{}\"",
                escape(&p.user_id),
                p.is_requestor
            );
            if let Some(alt) = &p.alternative_user_id {
                let _ = write!(out, " AlternativeUserID=\"{}\"", escape(alt));
            }
            if let Some(name) = &p.user_name {
                let _ = write!(out, " UserName=\"{}\"", escape(name));
            }
            if let Some((id, kind)) = &p.access_point {
                let _ = write!(
                    out,
                    " NetworkAccessPointID=\"{}\" NetworkAccessPointTypeCode=\"{}\"",
                    escape(id),
                    match kind {
                        AccessPoint::MachineName => "1",
                        AccessPoint::IpAddress => "2",
                    }
                );
            }
            if p.roles.is_empty() {
                out.push_str("/>");
            } else {
                out.push('>');
                for r in &p.roles {
                    coded(&mut out, "RoleIDCode", r);
                }
                out.push_str("</ActiveParticipant>");
            }
        }
        let _ = write!(
            out,
            "<AuditSourceIdentification AuditSourceID=\"{}\"",
            escape(&self.source_id)
        );
        if let Some(site) = &self.enterprise_site_id {
            let _ = write!(out, " AuditEnterpriseSiteID=\"{}\"", escape(site));
        }
        let _ = write!(
            out,
            "><AuditSourceTypeCode csd-code=\"{}\"/></AuditSourceIdentification>",
            escape(self.source_type)
        );
        for o in &self.objects {
            let _ = write!(
                out,
                "<ParticipantObjectIdentification ParticipantObjectID=\"{}\" ParticipantObjectTypeCode=\"{}\" ParticipantObjectTypeCodeRole=\"{}\">",
                escape(&o.id),
                o.type_code,
                o.role
            );
            coded(&mut out, "ParticipantObjectIDTypeCode", &o.id_type);
            let _ = write!(
                out,
                "<ParticipantObjectName>{}</ParticipantObjectName>",
                escape(&o.name)
            );
            for (kind, value) in &o.details {
                let _ = write!(
                    out,
                    "<ParticipantObjectDetail type=\"{}\" value=\"{}\"/>",
                    escape(kind),
                    base64::engine::general_purpose::STANDARD.encode(value.as_bytes())
                );
            }
            out.push_str("</ParticipantObjectIdentification>");
        }
        out.push_str("</AuditMessage>");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_cannot_break_the_document() {
        assert_eq!(
            escape("a\"<b>&'\u{1b}[31m\n\u{0}"),
            "a&quot;&lt;b&gt;&amp;&apos;\u{FFFD}[31m&#10;\u{FFFD}"
        );
    }
}
