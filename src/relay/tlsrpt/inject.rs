//! Where a mailed report (RFC 8460 §5.3) is handed over for delivery. The
//! reports are defined here and the relay's queue implements it, so the
//! report sender does not depend on the queue, which delivers through
//! [`crate::relay::deliver`], which counts into the reports.

use std::future::Future;
use std::pin::Pin;

/// The queue id of the queued report, or why it could not be queued.
pub type Queued<'a> = Pin<Box<dyn Future<Output = Result<String, String>> + Send + 'a>>;

/// Takes a report message into delivery.
pub trait ReportInjector: Send + Sync {
    /// Queues `text` for `to` from the null reverse-path, so a report that
    /// cannot be delivered is dropped, never bounced. It is delivered as if
    /// it carried an honoured `TLS-Required: No` (RFC 8460 §5.3: a report
    /// about TLS failures must get through them). `client` says where it
    /// came from (logs, the queue listing). Durable once it returns.
    fn inject_report<'a>(&'a self, to: &'a str, client: String, text: Vec<u8>) -> Queued<'a>;
}
