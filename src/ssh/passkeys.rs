//! `ssh VENDOR@bastion passkey [list | add | remove ID]`: a vendor's passkeys, managed from a session that
//! passed both factors. Every change asks for a fresh TOTP code first ([`confirm`]). `add` then prints a
//! one-time link and waits until the browser registered the passkey behind it
//! (`identity::vendor_passkeys`, `chaperone_web_approval::vendor_link`); from then on the vendor may
//! press Enter at the code prompt and use it instead of a TOTP code. `remove` removes the one passkey
//! its id names.
//!
//! Entry point: [`run`], called by `home::run` for an exec that starts with `passkey`.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use chaperone_web_approval::passkey::MAX_PASSKEYS;
use chaperone_web_approval::vendor_link::{LinkOutcome, LinkPurpose};
use russh::server::Msg;
use russh::{Channel, ChannelMsg};
use serde_json::json;

use super::context::Context;
use crate::identity::signin::{self, Account, Attempt, Second, Verdict};
use crate::identity::vendor_passkeys::{self, Added, Named};
use crate::model::Vendor;

/// How long `passkey add` waits for the browser.
pub const REGISTER_WAIT: Duration = Duration::from_secs(300);

/// How long `passkey add` waits for the code that confirms it.
pub const CODE_WAIT: Duration = Duration::from_secs(120);

/// What a change to the vendor's passkeys (`command`) asks before it is made (stderr, like the
/// command's other messages).
fn code_prompt(command: &str) -> String {
    format!(
        "To confirm `{command}`, type a current code from your authenticator app (a newer one than you \
         signed in with: wait for it to change if need be), then Enter: "
    )
}

/// The most characters a confirming code's line is read to; a longer line is a wrong code.
const MAX_CODE_LINE: usize = 64;

/// Runs the `passkey` command in `rest`; returns the exit status.
pub async fn run(ctx: &Context, vendor: &Vendor, channel: &mut Channel<Msg>, rest: &str) -> u32 {
    let words: Vec<&str> = rest.split_whitespace().collect();
    let result = match words.as_slice() {
        [] | ["list"] => list(ctx, vendor, channel).await,
        ["add"] => add(ctx, vendor, channel).await,
        ["remove", id] => remove(ctx, vendor, channel, id).await,
        _ => Ok(usage(channel).await),
    };
    match result {
        Ok(status) => status,
        Err(e) => {
            tracing::error!(error = %e, "passkey command failed");
            say(
                channel,
                "chaperone: the bastion cannot change your passkeys right now; try again in a minute.\r\n",
            )
            .await;
            1
        }
    }
}

async fn usage(channel: &mut Channel<Msg>) -> u32 {
    say(
        channel,
        "chaperone: usage: passkey [list | add | remove ID]\r\n",
    )
    .await;
    2
}

/// Removes the passkey `id` names, once a fresh code confirmed it ([`confirm`]): someone at a vendor's
/// open session cannot take away the vendor's passkeys without their authenticator either.
async fn remove(
    ctx: &Context,
    vendor: &Vendor,
    channel: &mut Channel<Msg>,
    id: &str,
) -> Result<u32, crate::store::StoreError> {
    let app = &ctx.shared.app;
    let said = |named| match named {
        Named::One => None,
        Named::NoSuch => {
            Some("chaperone: no passkey's id starts with that; `passkey list` shows them.\r\n")
        }
        Named::Ambiguous => {
            Some("chaperone: several passkeys' ids start with that; give more of it.\r\n")
        }
    };
    // Named first, so a mistyped id costs no code; judged again when removed.
    if let Some(text) = said(vendor_passkeys::find(app, vendor.id, id).await?) {
        say(channel, text).await;
        return Ok(1);
    }
    if let Some(status) = confirm(ctx, vendor, channel, "passkey remove").await {
        return Ok(status);
    }
    let named = vendor_passkeys::remove(app, vendor, id).await?;
    say(
        channel,
        said(named).unwrap_or(&format!("chaperone: passkey {id}… removed.\r\n")),
    )
    .await;
    Ok(u32::from(named != Named::One))
}

async fn list(
    ctx: &Context,
    vendor: &Vendor,
    channel: &mut Channel<Msg>,
) -> Result<u32, crate::store::StoreError> {
    let app = &ctx.shared.app;
    let ids = vendor_passkeys::list(app, vendor.id).await?;
    let mut out = String::new();
    if ids.is_empty() {
        let _ = writeln!(out, "You have no passkeys.\r");
    } else {
        let _ = writeln!(out, "Your passkeys:\r");
        for (i, id) in ids.iter().enumerate() {
            let _ = writeln!(out, "  {}  {id}\r", i + 1);
        }
    }
    if vendor_passkeys::offered(app) {
        let _ = writeln!(
            out,
            "Add one with `passkey add`; remove one with `passkey remove ID` (its id as listed). At the code prompt, \
             press Enter to sign in with a passkey.\r"
        );
    }
    // The list is the command's output: stdout.
    let _ = tokio::time::timeout(
        super::home::WRITE_TIMEOUT,
        channel.data_bytes(Bytes::from(out)),
    )
    .await;
    Ok(0)
}

async fn add(
    ctx: &Context,
    vendor: &Vendor,
    channel: &mut Channel<Msg>,
) -> Result<u32, crate::store::StoreError> {
    let app = &ctx.shared.app;
    if !vendor_passkeys::offered(app) {
        say(
            channel,
            "chaperone: passkeys are not available on this bastion (its web address has no DNS name); \
             keep using your authenticator app.\r\n",
        )
        .await;
        return Ok(1);
    }
    if vendor_passkeys::count(app, vendor.id).await? >= MAX_PASSKEYS {
        say(
            channel,
            &format!("chaperone: you already have {MAX_PASSKEYS} passkeys; remove one first.\r\n"),
        )
        .await;
        return Ok(1);
    }
    if let Some(status) = confirm(ctx, vendor, channel, "passkey add").await {
        return Ok(status);
    }
    // Taken before the link is stored: the wait never outlives the link.
    let until = tokio::time::Instant::now() + REGISTER_WAIT;
    let link =
        vendor_passkeys::open(app, &vendor.name, LinkPurpose::Register, REGISTER_WAIT).await?;
    say(
        channel,
        &format!(
            "Open this link in a browser within {} minutes to add a passkey. It works once.\r\n\r\n{}\r\n\r\n\
             Waiting (Ctrl-C stops)…\r\n",
            REGISTER_WAIT.as_secs() / 60,
            link.url
        ),
    )
    .await;
    // Stopping drops the wait, and with it the link, which voids it.
    let ended = tokio::select! {
        ended = vendor_passkeys::wait(app, link, until) => ended,
        () = stopped(ctx, channel) => return Ok(130),
    };
    // The page verified the new passkey; it is stored here, by the one who took the link, so it is
    // stored once, and only while the vendor still waited for it.
    let (text, status) = match ended.and_then(|l| l.outcome) {
        Some(LinkOutcome::Registered { passkey }) => {
            match vendor_passkeys::add(app, vendor, passkey, MAX_PASSKEYS).await? {
                Added::Added => (
                    "chaperone: passkey added. At your next login, press Enter at the code prompt to use it.\r\n".to_owned(),
                    0,
                ),
                Added::Full => (
                    format!("chaperone: you already have {MAX_PASSKEYS} passkeys; remove one first.\r\n"),
                    1,
                ),
                Added::Duplicate => (
                    "chaperone: that passkey is registered already.\r\n".to_owned(),
                    1,
                ),
                Added::Disabled => (
                    "chaperone: your account is disabled; the passkey was not added.\r\n".to_owned(),
                    1,
                ),
            }
        }
        Some(LinkOutcome::Passed | LinkOutcome::Refused { .. }) => (
            "chaperone: the passkey was not registered; run `passkey add` again.\r\n".to_owned(),
            1,
        ),
        None => (
            "chaperone: the link was not used in time; run `passkey add` again.\r\n".to_owned(),
            1,
        ),
    };
    say(channel, &text).await;
    Ok(status)
}

/// Asks for a fresh TOTP code and has `identity::signin` judge it (`Second::Confirm`: lockout, the
/// code's step taken, failures counted, audited). A passkey is a second factor for every later login,
/// so adding one takes the second factor again, not only the session's: someone at a vendor's open
/// session (an unlocked laptop, a reachable ControlMaster socket) cannot make it a lasting login of their
/// own without the vendor's authenticator, nor take the vendor's passkeys away. `command` is the change
/// asked for, as the vendor typed it (`passkey add`, `passkey remove`). `None` when confirmed; else the
/// exit status, said why.
async fn confirm(
    ctx: &Context,
    vendor: &Vendor,
    channel: &mut Channel<Msg>,
    command: &str,
) -> Option<u32> {
    let app = &ctx.shared.app;
    let Some(state) = totp_state(ctx, vendor, channel).await else {
        return Some(1);
    };
    if !state.enrolled {
        // Reset since this session signed in: no code can match, and none is asked (or counted).
        say(
            channel,
            &format!(
                "chaperone: your authenticator app was reset; sign in again to set it up, then run \
                 `{command}` again.\r\n"
            ),
        )
        .await;
        return Some(1);
    }
    say(channel, &code_prompt(command)).await;
    let code = match tokio::time::timeout(CODE_WAIT, typed_line(ctx, channel)).await {
        Ok(Typed::Line(code)) => code,
        Ok(Typed::Stopped) => return Some(130),
        Ok(Typed::Ended) => {
            say(
                channel,
                &format!(
                    "\r\nchaperone: input ended before a code was typed; run `{command}` where you can \
                     type (not with `ssh -n` or input from a file).\r\n"
                ),
            )
            .await;
            return Some(1);
        }
        Err(_) => {
            say(
                channel,
                &format!("\r\nchaperone: no code was typed in time; run `{command}` again.\r\n"),
            )
            .await;
            return Some(1);
        }
    };
    // Read again: the seed the code is judged against is the one stored now, not the one before the
    // prompt (a reset and a new enrollment meanwhile).
    let Some(state) = totp_state(ctx, vendor, channel).await else {
        return Some(1);
    };
    let attempt = Attempt {
        account: Account::Vendor {
            id: vendor.id,
            name: vendor.name.clone(),
        },
        source: ctx.peer.to_string(),
        first_factor: true,
        second: Second::Confirm {
            // A vendor reset meanwhile has no seed anyone knows: no code matches.
            sealed: state.enrolled.then_some(state.sealed.as_slice()),
            code: code.trim(),
        },
        key: None,
        detail: json!({"for": command}),
    };
    match signin::judge(app, attempt, app.clock.now()).await {
        Ok(Verdict::Accepted) => {
            say(channel, "\r\n").await;
            None
        }
        Ok(Verdict::Refused) => {
            say(
                channel,
                &format!(
                    "\r\nchaperone: that code was not accepted (a wrong code, or one already used); \
                     run `{command}` again with the next one.\r\n"
                ),
            )
            .await;
            Some(1)
        }
        Err(e) => {
            tracing::error!(vendor = %vendor.name, error = %e, "cannot judge a confirming code");
            say(channel, "\r\nchaperone: the bastion cannot check codes right now; try again in a minute.\r\n").await;
            Some(1)
        }
    }
}

/// The vendor's TOTP state as stored now; `None` (the vendor told, the error logged) when the store
/// cannot say.
async fn totp_state(
    ctx: &Context,
    vendor: &Vendor,
    channel: &mut Channel<Msg>,
) -> Option<crate::store::VendorTotp> {
    match ctx.shared.app.store.vendor_second_factor(vendor.id).await {
        Ok(state) => Some(state),
        Err(e) => {
            tracing::error!(vendor = %vendor.name, error = %e, "cannot read the vendor's TOTP state");
            say(
                channel,
                "\r\nchaperone: the bastion cannot check codes right now; try again in a minute.\r\n",
            )
            .await;
            None
        }
    }
}

/// What [`typed_line`] read.
enum Typed {
    Line(String),
    /// Ctrl-C, a signal, the channel or the session closing.
    Stopped,
    /// The input ended (EOF) before Enter: nothing was typed, and nothing is judged.
    Ended,
}

/// One line the vendor types, up to Enter (`\r` from a terminal, `\n` from a pipe), with backspace
/// applied. A line longer than [`MAX_CODE_LINE`] is cut there: it is no code anyway.
async fn typed_line(ctx: &Context, channel: &mut Channel<Msg>) -> Typed {
    let mut line = Vec::new();
    loop {
        let msg = tokio::select! {
            () = ctx.stop.cancelled() => return Typed::Stopped,
            msg = channel.wait() => msg,
        };
        match msg {
            None | Some(ChannelMsg::Close | ChannelMsg::Signal { .. }) => return Typed::Stopped,
            Some(ChannelMsg::Eof) => return Typed::Ended,
            Some(ChannelMsg::Data { data }) => {
                for &byte in data.iter() {
                    match byte {
                        3 => return Typed::Stopped,
                        b'\r' | b'\n' => {
                            return Typed::Line(String::from_utf8_lossy(&line).into_owned());
                        }
                        0x7f | 0x08 => {
                            line.pop();
                        }
                        _ if line.len() < MAX_CODE_LINE => line.push(byte),
                        _ => {}
                    }
                }
            }
            Some(_) => {}
        }
    }
}

/// Completes when the vendor stops waiting: Ctrl-C, a signal, the channel closing, or the session
/// being ended.
async fn stopped(ctx: &Context, channel: &mut Channel<Msg>) {
    loop {
        tokio::select! {
            () = ctx.stop.cancelled() => return,
            msg = channel.wait() => match msg {
                None | Some(ChannelMsg::Close | ChannelMsg::Signal { .. }) => return,
                Some(ChannelMsg::Data { data }) if data.contains(&3) => return,
                Some(_) => {}
            },
        }
    }
}

/// Text on stderr (the command's messages), skipped if the client is not reading.
async fn say(channel: &mut Channel<Msg>, text: &str) {
    let _ = tokio::time::timeout(
        super::home::WRITE_TIMEOUT,
        channel.extended_data_bytes(1, Bytes::from(text.to_owned())),
    )
    .await;
}
