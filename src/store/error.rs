//! Why the policy store failed, by what the caller must do about it. Every
//! kind prints as before (`policy store: …`): the variants add meaning for
//! the code, not for the log.

/// A failed store operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the store (a running daemon): use another
    /// store or go through that process. Waiting does not help.
    #[error("policy store: {0}")]
    InUse(String),
    /// The store cannot be read or written now (an I/O error, the back-off
    /// after one, a store task that died): retry later; policies in memory
    /// still answer.
    #[error("policy store: {0}")]
    Unavailable(String),
    /// The store cannot be used as it is set up (its directory cannot be
    /// made, an unsound file cannot be set aside, a policy cannot be
    /// encoded): an operator must act, retrying changes nothing.
    #[error("policy store: {0}")]
    Unusable(String),
}
