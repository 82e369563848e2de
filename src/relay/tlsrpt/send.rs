//! Delivery of a report to one `rua=` URI: HTTPS POST (RFC 8460 §5.4) or a
//! message through the relay's own queue (§5.3).

use std::net::IpAddr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::destination::{filter, PublicOnly};
use super::inject::ReportInjector;
use super::record::day_name;
use super::report::day_bounds;
use crate::config::FetchConfig;
use crate::dns::Dns;
use crate::relay::dkim::DkimSigner;
use crate::smtp::mime::{Multipart, Part};

/// An HTTPS client built like the policy fetcher's: same trust anchors,
/// our DNS (minus non-public addresses unless `allow_private`, see
/// [`destination`](super::destination)), no redirects (a report is not
/// re-sent somewhere the record did not name), one deadline for the whole
/// exchange, no proxy.
pub fn https_client(
    fetch: &FetchConfig,
    dns: &Dns,
    timeout: Duration,
    allow_private: bool,
) -> Result<reqwest::Client, String> {
    crate::fetch::init_crypto();
    let (roots, _) = crate::fetch::trust_roots(fetch)?;
    let resolver = PublicOnly {
        dns: dns.clone(),
        allow_private,
    };
    crate::fetch::https_client_builder(roots, resolver, timeout)
        // An HTTP(S)_PROXY from the environment would pick the address
        // itself, past the resolver's check: reports go direct.
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot build the TLS-RPT HTTPS client: {e}"))
}

/// POSTs the gzipped report; Ok on a 2xx answer. The answer's body is not
/// read; the client's deadline bounds everything. An address literal in
/// `uri` never reaches the client's resolver, so it is checked here.
pub async fn post(
    client: &reqwest::Client,
    uri: &str,
    gz: &[u8],
    allow_private: bool,
) -> Result<u16, String> {
    let url = reqwest::Url::parse(uri).map_err(|e| format!("{uri}: {e}"))?;
    let literal = url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .and_then(|h| h.parse::<IpAddr>().ok());
    if let Some(ip) = literal {
        filter(&ip.to_string(), vec![ip], allow_private)?;
    }
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/tlsrpt+gzip")
        .body(gz.to_vec())
        .send()
        .await
        .map_err(|e| {
            let mut text = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(s) = cur {
                text.push_str(": ");
                text.push_str(&s.to_string());
                cur = s.source();
            }
            text
        })?;
    let status = response.status().as_u16();
    if response.status().is_success() {
        Ok(status)
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// What a mailed report needs.
pub struct Mail<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub domain: &'a str,
    /// Our host name (`TLS-Report-Submitter`).
    pub submitter: &'a str,
    pub report_id: &'a str,
    pub day: u64,
    pub now: u64,
    pub gz: &'a [u8],
    /// Signs the message (RFC 8460 §5.3) when set.
    pub dkim: Option<&'a DkimSigner>,
}

/// True for an address safe to put in an envelope and a header: one
/// `local@domain` word, no controls, spaces or angle brackets.
pub fn plain_address(a: &str) -> bool {
    a.len() <= 512
        && a.contains('@')
        && !a
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | '"' | ','))
}

/// The RFC 8460 §5.3 message: `multipart/report; report-type="tlsrpt"`
/// with a text/plain part and the base64 `application/tlsrpt+gzip` report
/// named `<submitter>!<policy-domain>!<begin>!<end>!<unique-id>.json.gz`.
pub fn message(m: &Mail<'_>) -> Vec<u8> {
    let (begin, end) = day_bounds(m.day);
    let date = day_name(m.day);
    let unique: String = date.chars().filter(|c| c.is_ascii_digit()).collect();
    let filename = format!(
        "{}!{}!{begin}!{end}!{unique}.json.gz",
        m.submitter, m.domain
    );
    let mut b64 = String::new();
    let encoded = STANDARD.encode(m.gz);
    for chunk in encoded.as_bytes().chunks(76) {
        b64.push_str(&String::from_utf8_lossy(chunk));
        b64.push_str("\r\n");
    }
    let text = format!(
        "This is an aggregate TLS report (RFC 8460) from {} about mail sent\r\n\
         to {} on {date} (UTC). The report is attached.\r\n",
        m.submitter, m.domain
    );
    let report_head = format!(
        "Content-Type: application/tlsrpt+gzip\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment;\r\n\tfilename=\"{filename}\"\r\n"
    );
    let parts = [
        Part {
            headers: "Content-Type: text/plain; charset=\"us-ascii\"\r\n\
                      Content-Transfer-Encoding: 7bit\r\n",
            body: text.as_bytes(),
        },
        Part {
            headers: &report_head,
            body: b64.as_bytes(),
        },
    ];
    // The names in the parts come from configuration and DNS: the boundary
    // is checked against them like every other part's content.
    let multipart = Multipart::new(
        &format!("----=_tlsrpt_{unique}_{}", m.now),
        "This is a multipart message in MIME format.",
        &parts,
        &[],
    );
    let mut out = String::with_capacity(b64.len() + 2048);
    out.push_str(&format!("From: <{}>\r\n", m.from));
    out.push_str(&format!("To: <{}>\r\n", m.to));
    out.push_str(&format!("Date: {}\r\n", crate::smtp::date::rfc5322(m.now)));
    out.push_str(&format!(
        "Message-ID: <tlsrpt.{unique}.{}.{}@{}>\r\n",
        m.domain, m.now, m.submitter
    ));
    // RFC 8460 §5.3: Subject and the two TLS-Report-* fields.
    out.push_str(&format!(
        "Subject: Report Domain: {}\r\n Submitter: {}\r\n Report-ID: <{}>\r\n",
        m.domain, m.submitter, m.report_id
    ));
    out.push_str(&format!("TLS-Report-Domain: {}\r\n", m.domain));
    out.push_str(&format!("TLS-Report-Submitter: {}\r\n", m.submitter));
    // RFC 8460 §5.3 and RFC 8689 §4.2.2: a report must get through exactly
    // when the domain's TLS is broken, so its policy is not enforced.
    out.push_str("TLS-Required: No\r\n");
    // RFC 3834 §5: no auto-responder should answer a report.
    out.push_str("Auto-Submitted: auto-generated\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&multipart.report_content_type("\"tlsrpt\""));
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    multipart.write_body(&mut out);
    out
}

/// Queues a mailed report to `to`, with the null reverse-path: a report
/// that cannot be delivered is dropped (logged), never bounced to an
/// address nobody reads. DKIM-signed when `m.dkim` is set. Durable once
/// this returns.
pub async fn queue_mail(queue: &dyn ReportInjector, m: &Mail<'_>) -> Result<String, String> {
    let mut text = message(m);
    if let Some(signer) = m.dkim {
        let field = signer
            .sign(&text, m.now)
            .map_err(|e| format!("cannot DKIM-sign the report: {e}"))?;
        let mut signed = field.into_bytes();
        signed.extend_from_slice(&text);
        text = signed;
    }
    queue
        .inject_report(m.to, format!("TLS-RPT report {}", m.report_id), text)
        .await
}
