//! The MIME multipart writer (RFC 2046 §5.1) both reports the relay
//! writes share: the bounces (`multipart/report; report-type=delivery-status`,
//! RFC 6522) and the mailed TLS-RPT reports (`report-type="tlsrpt"`,
//! RFC 8460 §5.3).
//!
//! Pure: bytes in, bytes out. The one rule that matters for safety lives
//! here: the boundary is chosen after every part exists and is checked
//! against all of them, so content from outside (an original message, a
//! remote reply) can never plant a delimiter that ends a part early.

use std::fmt::Write as _;

/// One body part: its header fields, each ending in CRLF, and its body.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    pub headers: &'a str,
    pub body: &'a [u8],
}

/// A multipart body whose boundary occurs in none of its parts.
#[derive(Debug)]
pub struct Multipart<'a> {
    boundary: String,
    preamble: &'a str,
    parts: &'a [Part<'a>],
}

impl<'a> Multipart<'a> {
    /// Chooses the boundary: `base` itself, else `base_1`, `base_2`, … the
    /// first that occurs in no part, not in the preamble and not in any of
    /// `also` (content that is not attached but could be, such as the whole
    /// original of a bounce). RFC 2046 §5.1.1 allows 70 characters: a base
    /// of at most 60 keeps every numbered variant a real mail can need
    /// within that.
    #[must_use]
    pub fn new(base: &str, preamble: &'a str, parts: &'a [Part<'a>], also: &[&[u8]]) -> Self {
        let taken = |cand: &str| {
            let needle = cand.as_bytes();
            contains(preamble.as_bytes(), needle)
                || also.iter().any(|hay| contains(hay, needle))
                || parts
                    .iter()
                    .any(|p| contains(p.headers.as_bytes(), needle) || contains(p.body, needle))
        };
        Multipart {
            boundary: pick_boundary(base, taken),
            preamble,
            parts,
        }
    }

    /// The boundary chosen.
    #[must_use]
    pub fn boundary(&self) -> &str {
        &self.boundary
    }

    /// The `Content-Type` field of a `multipart/report` (RFC 6522 §3: the
    /// `report-type` parameter is mandatory), folded before the boundary,
    /// CRLF included. `report_type` is written as given: a token, or a
    /// quoted-string. The boundary is always quoted: it may hold `=`, a
    /// tspecial (RFC 2045 §5.1).
    #[must_use]
    pub fn report_content_type(&self, report_type: &str) -> String {
        let mut field = String::with_capacity(80 + self.boundary.len());
        let _ = write!(
            field,
            "Content-Type: multipart/report; report-type={report_type};\r\n\tboundary=\"{}\"\r\n",
            self.boundary
        );
        field
    }

    /// The body, after the blank line that ends the message's header
    /// section: the preamble line, every part, the close delimiter.
    pub fn write_body(&self, out: &mut Vec<u8>) {
        // The preamble is for readers without MIME support (RFC 2046 §5.1.1).
        out.extend_from_slice(self.preamble.as_bytes());
        out.extend_from_slice(b"\r\n");
        for part in self.parts {
            // RFC 2046 §5.1.1: the CRLF before "--" belongs to the
            // delimiter, so each body's own final CRLF survives.
            out.extend_from_slice(b"\r\n--");
            out.extend_from_slice(self.boundary.as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(part.headers.as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(part.body);
        }
        out.extend_from_slice(b"\r\n--");
        out.extend_from_slice(self.boundary.as_bytes());
        out.extend_from_slice(b"--\r\n");
    }
}

/// True when `needle` occurs in `hay` (an empty needle always does).
#[must_use]
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

// Tries the base and then numbered variants until `taken` rejects none.
// It terminates: the checked content is finite, and each occurrence can block
// only the handful of variants whose suffix digits follow it.
fn pick_boundary(base: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(base) {
        return base.to_string();
    }
    let mut n: u64 = 1;
    loop {
        let cand = format!("{base}_{n}");
        if !taken(&cand) {
            return cand;
        }
        n = n.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_rfc_2046() {
        let parts = [
            Part {
                headers: "Content-Type: text/plain\r\n",
                body: b"hello\r\n",
            },
            Part {
                headers: "Content-Type: text/x\r\n",
                body: b"x",
            },
        ];
        let m = Multipart::new("=_b", "Preamble.", &parts, &[]);
        assert_eq!(m.boundary(), "=_b");
        assert_eq!(
            m.report_content_type("\"tlsrpt\""),
            "Content-Type: multipart/report; report-type=\"tlsrpt\";\r\n\tboundary=\"=_b\"\r\n"
        );
        let mut out = Vec::new();
        m.write_body(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Preamble.\r\n\
             \r\n--=_b\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
             \r\n--=_b\r\nContent-Type: text/x\r\n\r\nx\
             \r\n--=_b--\r\n"
        );
    }

    #[test]
    fn boundary_avoids_every_part_and_the_extra_content() {
        let body = b"--=_b and =_b_1 too";
        let parts = [Part {
            headers: "X-Trap: =_b_2\r\n",
            body,
        }];
        assert_eq!(Multipart::new("=_b", "", &parts, &[]).boundary(), "=_b_3");
        let parts = [Part {
            headers: "",
            body: b"",
        }];
        let also: &[u8] = b"=_b";
        assert_eq!(
            Multipart::new("=_b", "", &parts, &[also]).boundary(),
            "=_b_1"
        );
        assert_eq!(
            Multipart::new("=_b", "=_b", &parts, &[]).boundary(),
            "=_b_1"
        );
    }

    #[test]
    fn contains_finds_anywhere() {
        assert!(contains(b"abc", b"bc"));
        assert!(contains(b"abc", b""));
        assert!(!contains(b"ab", b"abc"));
    }
}
