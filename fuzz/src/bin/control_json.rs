//! The control socket's JSON lines (`src/control.rs`): a request read by the
//! daemon, and a response read by the `mta-sts-agent policy|queue` CLI.
//! The first byte picks which side parses the rest.
use mta_sts_agent::control::{Request, Response};

fn round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let text = serde_json::to_string(value).expect("serialises");
    // One line on the wire: a serialised value never holds a raw newline.
    assert!(!text.contains('\n'), "{text:?}");
    let back: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert_eq!(&back, value);
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&side, rest)) = data.split_first() else {
            return;
        };
        // The daemon reads a line as text and trims its end, as serve_one does.
        let Ok(line) = std::str::from_utf8(rest) else {
            return;
        };
        let line = line.trim_end();
        if side & 1 == 0 {
            if let Ok(req) = serde_json::from_str::<Request>(line) {
                round_trip(&req);
            }
        } else if let Ok(resp) = serde_json::from_str::<Response>(line) {
            round_trip(&resp);
        }
    });
}
