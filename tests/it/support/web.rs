//! The approvers' side in tests: staff users enrolled through the real web page (HTTPS, curl) and
//! signed in to the JSON API with password + TOTP.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use super::bastion::Bastion;

/// A staff member signed in to the JSON API: curl with a cookie jar and the CSRF token.
pub struct Approver {
    pub name: String,
    secret: String,
    last_step: Mutex<i64>,
    jar: PathBuf,
    pub csrf: String,
    base: String,
}

/// An HTTP answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// `chaperone user add NAME --role ROLE`: the token of the one-time enrollment link it prints.
pub fn enrollment_token(b: &Bastion, name: &str, role: &str) -> String {
    let run = b.data.run(&["user", "add", name, "--role", role, "--json"]);
    let url = run.ok().json()["enroll_url"].as_str().unwrap().to_owned();
    url.rsplit('/').next().unwrap().to_owned()
}

/// A JSON POST to `url` with a cookie jar (the passkey ceremonies' requests).
pub fn post_json(jar: &PathBuf, url: &str, body: &serde_json::Value) -> Answer {
    curl(
        Some(jar),
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body.to_string(),
            url,
        ],
    )
}

pub fn base(b: &Bastion) -> String {
    format!("https://127.0.0.1:{}", b.web_port)
}

/// `curl -k` (the bastion's certificate is self-signed) with a cookie jar; returns status and body.
pub fn curl(jar: Option<&PathBuf>, args: &[&str]) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-o", "-", "-w", "\n%{http_code}"]);
    if let Some(jar) = jar {
        cmd.arg("-b").arg(jar).arg("-c").arg(jar);
    }
    let out = cmd.args(args).output().expect("curl must be installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    Answer {
        status: status.trim().parse().unwrap_or(0),
        body: body.to_owned(),
    }
}

impl Approver {
    /// `chaperone user add NAME --role ROLE`, enrollment through the page, then sign-in to the API.
    pub fn enroll(b: &Bastion, name: &str, role: &str) -> Approver {
        let token = enrollment_token(b, name, role);
        let base = base(b);
        let page = curl(None, &[&format!("{base}/enroll/{token}")]);
        assert_eq!(page.status, 200, "{}", page.body);
        let secret = page
            .body
            .split("id=\"totp-secret\">")
            .nth(1)
            .and_then(|s| s.split('<').next())
            .unwrap_or_else(|| panic!("no secret in {}", page.body))
            .to_owned();
        let mut a = Approver {
            name: name.to_owned(),
            secret,
            last_step: Mutex::new(0),
            jar: b.data.path().join(format!("jar-{name}")),
            csrf: String::new(),
            base,
        };
        let code = a.next_code();
        let done = curl(
            None,
            &[
                "--data-urlencode",
                "password=correct horse battery staple",
                "--data-urlencode",
                "password2=correct horse battery staple",
                "--data-urlencode",
                &format!("code={code}"),
                &format!("{}/enroll/{token}", a.base),
            ],
        );
        assert_eq!(done.status, 200, "{}", done.body);
        assert!(done.body.contains("You are enrolled"), "{}", done.body);
        a.login();
        a
    }

    /// Signs in to the JSON API; keeps the cookie and CSRF token.
    pub fn login(&mut self) {
        let body = serde_json::json!({
            "name": self.name,
            "password": "correct horse battery staple",
            "code": self.next_code(),
        })
        .to_string();
        let answer = curl(
            Some(&self.jar),
            &[
                "-H",
                "Content-Type: application/json",
                "--data",
                &body,
                &format!("{}/api/login", self.base),
            ],
        );
        assert_eq!(answer.status, 200, "{}", answer.body);
        self.csrf = answer.json()["csrf"].as_str().unwrap().to_owned();
    }

    /// Sends the next requests to node `b`, with the same cookie jar: what a load balancer without
    /// sticky sessions does.
    pub fn via(&mut self, b: &Bastion) {
        self.base = base(b);
    }

    /// A TOTP code for a step after the last one used (the server refuses replays).
    pub fn next_code(&self) -> String {
        super::bastion::next_totp_code(&self.secret, &self.last_step)
    }

    pub fn get(&self, path: &str) -> Answer {
        curl(Some(&self.jar), &[&format!("{}{path}", self.base)])
    }

    /// A JSON POST with the CSRF header.
    pub fn post(&self, path: &str, body: serde_json::Value) -> Answer {
        self.post_with(path, body, Some(&self.csrf))
    }

    pub fn post_with(&self, path: &str, body: serde_json::Value, csrf: Option<&str>) -> Answer {
        let mut args = vec![
            "-H".to_owned(),
            "Content-Type: application/json".to_owned(),
            "--data".to_owned(),
            body.to_string(),
        ];
        if let Some(token) = csrf {
            args.push("-H".into());
            args.push(format!("X-CSRF-Token: {token}"));
        }
        args.push(format!("{}{path}", self.base));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(Some(&self.jar), &args)
    }

    /// A form POST (the page's forms), fields as given.
    pub fn form(&self, path: &str, fields: &[(&str, &str)]) -> Answer {
        let mut args = Vec::new();
        for (k, v) in fields {
            args.push("--data-urlencode".to_owned());
            args.push(format!("{k}={v}"));
        }
        args.push(format!("{}{path}", self.base));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        curl(Some(&self.jar), &args)
    }

    pub fn approve(&self, id: i64) -> Answer {
        self.post(
            &format!("/api/requests/{id}/decision"),
            serde_json::json!({"decision": "approve"}),
        )
    }
}
