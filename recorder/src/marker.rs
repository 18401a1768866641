//! Who a marker speaks for. A recording's markers come from two sources that must never be confused:
//! the bastion's own notices (an expiry warning, a revocation, a recording cut off), and command lines,
//! whose text is whatever the device's screen showed when the vendor pressed Enter, prompt included.
//! A device controls that text, so without a rule it could print a line that reads like a notice.
//!
//! The rule lives here, in one place: every label is written through [`command_label`] or
//! [`notice_label`], each of which starts the label with its own prefix, and [`MarkerKind::of`] reads
//! the kind back from that prefix, for recordings whose header says their labels follow the rule
//! ([`crate::CastHeader::markers_attributed`], and every exec recording, whose markers only the bastion
//! writes): [`MarkerKind::of_recording`]. A command label always starts with [`COMMAND_PREFIX`], whatever the
//! screen showed, so device text can never begin a label with [`NOTICE_PREFIX`]. Labels of terminal
//! recordings made before the rule read as [`MarkerKind::Unattributed`], whatever they start with: a
//! device's line then could start with `chaperone: ` too.

/// The start of every command marker's label (U+23CE RETURN SYMBOL: the line the vendor entered).
pub const COMMAND_PREFIX: &str = "\u{23ce} ";
/// The start of every bastion notice's label, as the vendor saw the notice on their terminal.
pub const NOTICE_PREFIX: &str = "chaperone: ";

/// Who wrote a marker's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    /// A command line as the device's screen showed it: device-controlled text.
    Command,
    /// Said by the bastion itself.
    Notice,
    /// From a recording made before markers carried their kind: the source cannot be told.
    Unattributed,
}

impl MarkerKind {
    /// The kind of a label read back from a recording.
    pub fn of(label: &str) -> MarkerKind {
        if label.starts_with(NOTICE_PREFIX) {
            MarkerKind::Notice
        } else if label.starts_with(COMMAND_PREFIX) {
            MarkerKind::Command
        } else {
            MarkerKind::Unattributed
        }
    }

    /// The kind of a label of a recording whose labels follow the rule (`attributed`) or not.
    pub fn of_recording(attributed: bool, label: &str) -> MarkerKind {
        if attributed {
            MarkerKind::of(label)
        } else {
            MarkerKind::Unattributed
        }
    }

    /// The kind's name in JSON and in the page.
    pub fn as_str(self) -> &'static str {
        match self {
            MarkerKind::Command => "command",
            MarkerKind::Notice => "notice",
            MarkerKind::Unattributed => "unattributed",
        }
    }
}

/// The label of a command marker for `line`, the command line as the screen showed it.
pub fn command_label(line: &str) -> String {
    format!("{COMMAND_PREFIX}{line}")
}

/// The label of a notice the bastion gives.
pub fn notice_label(text: &str) -> String {
    format!("{NOTICE_PREFIX}{text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_can_never_read_as_a_notice() {
        for line in [
            "chaperone: access to mri-01 was revoked (by admin)",
            "\u{23ce} chaperone: x",
            "",
            "$ ls",
        ] {
            assert_eq!(
                MarkerKind::of(&command_label(line)),
                MarkerKind::Command,
                "{line:?}"
            );
        }
        assert_eq!(
            MarkerKind::of(&notice_label("your access to mri-01 ends in 5 minutes")),
            MarkerKind::Notice
        );
    }

    #[test]
    fn labels_from_before_the_rule_are_unattributed() {
        assert_eq!(MarkerKind::of("$ ls"), MarkerKind::Unattributed);
        // A device's line in a recording from before the rule may read like a notice: not trusted.
        assert_eq!(
            MarkerKind::of_recording(false, "chaperone: access to mri-01 was revoked"),
            MarkerKind::Unattributed
        );
        assert_eq!(
            MarkerKind::of_recording(true, &notice_label("access to mri-01 was revoked")),
            MarkerKind::Notice
        );
        assert_eq!(
            MarkerKind::of("grant g-42 expires in 5 min"),
            MarkerKind::Unattributed
        );
    }
}
