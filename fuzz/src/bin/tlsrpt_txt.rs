//! The `_smtp._tls.<domain>` TXT records (`src/policy/tlsrpt.rs`, RFC 8460
//! §3): they decide where the agent sends reports, so a forged one must
//! never name something the parser did not check. One record per line.
use mta_sts_agent::policy::normalize_domain;
use mta_sts_agent::policy::tlsrpt::{
    discover_tlsrpt, is_tlsrpt_record, parse_rua_uri, parse_tlsrpt_record, RuaUri, TlsRptDiscovery,
    TlsRptRecord,
};

fn render(r: &TlsRptRecord) -> String {
    let uris: Vec<&str> = r
        .rua
        .iter()
        .map(RuaUri::as_str)
        .chain(r.invalid_rua.iter().map(|(u, _)| u.as_str()))
        .collect();
    let mut out = format!("v=TLSRPTv1; rua={}", uris.join(","));
    for (k, v) in &r.extensions {
        out.push_str(&format!("; {k}={v}"));
    }
    out
}

fn check_uri(u: &RuaUri) {
    assert_eq!(parse_rua_uri(u.as_str()).as_ref(), Ok(u));
    match u {
        RuaUri::Mailto { address, .. } => {
            let (local, domain) = address.rsplit_once('@').expect("mailto has '@'");
            assert!(!local.is_empty());
            assert!(normalize_domain(domain).is_ok() && domain.contains('.'));
        }
        RuaUri::Https { uri, host } => {
            assert!(uri
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://")));
            assert!(!host.is_empty() && !host.contains(['@', '/', '?', '#']));
        }
    }
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let records: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        let ours = records
            .iter()
            .filter(|r| std::str::from_utf8(r).is_ok_and(is_tlsrpt_record))
            .count();
        match discover_tlsrpt(&records) {
            TlsRptDiscovery::Found(r) => {
                assert_eq!(ours, 1);
                r.rua.iter().for_each(check_uri);
                for (uri, _) in &r.invalid_rua {
                    assert!(parse_rua_uri(uri).is_err());
                }
                // Written out again (valid URIs first), the record keeps
                // its usable destinations.
                let text = render(&r);
                let back = parse_tlsrpt_record(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
                assert_eq!(back.rua, r.rua);
                assert_eq!(back.extensions, r.extensions);
                assert_eq!(back.invalid_rua.len(), r.invalid_rua.len());
            }
            TlsRptDiscovery::Multiple(n) => assert!(n >= 2 && n == ours),
            TlsRptDiscovery::NoRecord => assert_eq!(ours, 0),
            TlsRptDiscovery::Invalid(_) => assert_eq!(ours, 1),
        }
    });
}
