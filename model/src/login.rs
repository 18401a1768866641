//! SSH user names: `VENDOR` (the vendor's home: who am I, grants, how to connect) or `VENDOR+ASSET`
//! (a session on that asset's ssh service).

use crate::model::check_name;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub vendor: String,
    pub asset: Option<String>,
}

impl Login {
    /// Parses a user name; `None` for anything that is not a well-formed name (hostile input ends here).
    pub fn parse(user: &str) -> Option<Login> {
        let (vendor, asset) = match user.split_once('+') {
            Some((v, a)) => (v, Some(a)),
            None => (user, None),
        };
        check_name("vendor", vendor).ok()?;
        if let Some(a) = asset {
            check_name("asset", a).ok()?;
        }
        Some(Login {
            vendor: vendor.to_owned(),
            asset: asset.map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vendor_and_asset() {
        assert_eq!(
            Login::parse("alice"),
            Some(Login {
                vendor: "alice".into(),
                asset: None
            })
        );
        assert_eq!(
            Login::parse("alice+mri-01"),
            Some(Login {
                vendor: "alice".into(),
                asset: Some("mri-01".into())
            })
        );
        for bad in [
            "",
            "+mri",
            "alice+",
            "a+b+c",
            "Alice",
            "al ice",
            "alice+mri\n",
            &"a".repeat(300),
        ] {
            assert_eq!(Login::parse(bad), None, "{bad:?}");
        }
    }
}
